"""The fast paths (torch's op, hooked per step or probed; gradscope's own ops) against the unrolled path: the
same trace."""

from __future__ import annotations

import gc
import os

import pandas as pd
import pytest
import torch
from conftest import CELLS, TOL, initial_state, weighted_loss

import gradscope
from gradscope import layers, recording
from gradscope.cells import GATE_NAMES
from gradscope.layers import RecurrentLayer
from gradscope.recording import _FusedGradients, _LayerRecord, _ProjectionGradients, _StepGradients

ELIGIBLE = [
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu"}),
    ("gru", {}),
    ("lstm", {}),
]
SHAPES = [
    {},
    {"num_layers": 2},
    {"bidirectional": True, "batch_first": True},
    {"num_layers": 2, "bidirectional": True, "bias": False},
]
QUANTITIES = ("x", "h", "c", "grad_x", "grad_h", "grad_c")
# where the paths' parity tests run: the CPU in CI; GRADSCOPE_TEST_DEVICE=cuda on a GPU machine (torch's cuDNN
# kernels against the unrolled loop there, with TF32 off: tolerances are float32's)
DEVICE = torch.device(os.environ.get("GRADSCOPE_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
# besides the unrolled loop: torch's op ("fused") and, recorded on the CPU, gradscope's own ops ("auto")
_FAST_PATHS = ("fused", "auto")


def _record(layer, x, hx, path, detail="full", loss=weighted_loss):
    layer.zero_grad(set_to_none=True)
    with gradscope.record(layer, detail=detail, path=path) as rec:
        out, final = layer(x, hx)
        loss(out, final).backward()
    return rec.trace, [p.grad for p in layer.parameters()], out.detach()


def _assert_same_traces(a, b, tol):
    assert a.keys() == b.keys()
    for key in a.keys():
        la, lb = a.layer(*key), b.layer(*key)
        for quantity in QUANTITIES:
            va, vb = getattr(la, quantity), getattr(lb, quantity)
            assert (va is None) == (vb is None), quantity
            if va is not None:
                torch.testing.assert_close(va, vb, **tol, msg=lambda m, q=quantity, k=key: f"{k} {q}: {m}")
        assert set(la.gates) == set(lb.gates)
        for name in la.gates:
            torch.testing.assert_close(la.gates[name], lb.gates[name], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "one-layer")
@pytest.mark.parametrize("case", ELIGIBLE, ids=lambda c: c[0] + "".join(f"-{v}" for v in c[1].values()))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
def test_fused_and_unrolled_paths_record_the_same_trace(case, shape, dtype, with_state):
    kind, options = case
    layer = CELLS[kind][0](3, 5, dtype=dtype, **options, **shape).to(DEVICE)
    x = torch.randn(4, 9, 3, dtype=dtype)
    hx = initial_state(layer, 4, dtype, device=DEVICE) if with_state else None
    if not layer.batch_first:
        x = x.transpose(0, 1).contiguous()
    x = x.to(DEVICE)
    unrolled = _record(layer, x, hx, "unrolled")
    for path in _FAST_PATHS:
        fast = _record(layer, x, hx, path)
        _assert_same_traces(fast[0], unrolled[0], TOL[dtype])
        torch.testing.assert_close(fast[2], unrolled[2], **TOL[dtype])
        for a, b in zip(fast[1], unrolled[1], strict=True):  # the user's parameter gradients too
            torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("reaches", ["output", "final_state", "last_output"])
def test_paths_agree_whichever_outputs_the_loss_reaches(kind, reaches):
    """Gradients may arrive at the output sequence, at the final state(s), or at one step only."""

    def loss(out, final):
        finals = final if isinstance(final, tuple) else (final,)
        if reaches == "output":
            return out.pow(2).sum()
        if reaches == "final_state":
            return sum(f.pow(2).sum() for f in finals)
        return out[-1].sum()

    layer = CELLS[kind][0](2, 4, num_layers=2, bidirectional=True, dtype=torch.float64).to(DEVICE)
    x = torch.randn(7, 3, 2, dtype=torch.float64, device=DEVICE)
    unrolled = _record(layer, x, None, "unrolled", loss=loss)
    for path in _FAST_PATHS:
        fast = _record(layer, x, None, path, loss=loss)
        _assert_same_traces(fast[0], unrolled[0], TOL[torch.float64])
        assert fast[0].layer(layer=0).grad_h.abs().sum() > 0


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("block_steps", [None, 1, 3], ids=["one-block", "1-step-blocks", "3-step-blocks"])
def test_paths_agree_in_summary_detail_and_with_the_full_trace(monkeypatch, kind, block_steps):
    """Summary detail recomputes gates in blocks of steps (the scans carry across blocks) and reduces them."""
    layer = CELLS[kind][0](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64).to(DEVICE)
    x = torch.randn(11, 5, 3, dtype=torch.float64, device=DEVICE)
    full = _record(layer, x, None, "unrolled")[0].to_frame()
    if block_steps is not None:
        values = block_steps * 5 * 4 * max(1, len(GATE_NAMES[kind]))  # B * M * gates per step
        monkeypatch.setitem(recording._BLOCK_VALUES, "summary", values)  # also the gradients' blocks of norms
        monkeypatch.setattr(recording, "_PRODUCT_BLOCK_VALUES", values)
    for path in (*_FAST_PATHS, "unrolled"):
        summary = _record(layer, x, None, path, detail="summary")[0].to_frame()
        assert len(summary) == len(full) > 0
        pd.testing.assert_frame_equal(summary, full, rtol=1e-10)


def test_a_single_step_sequence_and_unbatched_input():
    for kind in CELLS:
        layer = CELLS[kind][0](3, 4, dtype=torch.float64)
        for x in (torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)):
            unrolled = _record(layer, x, None, "unrolled")
            for path in _FAST_PATHS:
                _assert_same_traces(_record(layer, x, None, path)[0], unrolled[0], TOL[torch.float64])


def _spy_paths(monkeypatch):
    calls = []
    for name in ("_run_fused", "_run_direction"):
        original = getattr(RecurrentLayer, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(RecurrentLayer, name, spy)
    return calls


@pytest.mark.parametrize(
    "kind,options,expected",
    [
        ("lstm", {}, "_run_fused"),
        ("rnn", {"nonlinearity": "relu"}, "_run_fused"),
        ("gru", {}, "_run_fused"),
        ("gru", {"reset": "before"}, "_run_direction"),
        ("lstm", {"cell_activation": "relu"}, "_run_direction"),
        ("lstm", {"hidden_activation": "softsign"}, "_run_direction"),
    ],
)
def test_auto_takes_the_fused_path_where_torch_has_an_op(monkeypatch, kind, options, expected):
    calls = _spy_paths(monkeypatch)
    layer = CELLS[kind][0](2, 3, num_layers=2, **options)
    with gradscope.record(layer):
        layer(torch.randn(4, 2, 2))[0].sum().backward()
    assert calls == [expected, expected]
    for path, forced in (("unrolled", "_run_direction"), ("fused", "_run_fused")):
        calls.clear()
        if forced == "_run_fused" and layer.fused_op()[0] is None:
            continue  # no torch kernel for these options: an error, tested below
        with gradscope.record(layer, path=path):
            layer(torch.randn(4, 2, 2))
        assert calls == [forced] * 2


@pytest.mark.parametrize("kind", list(CELLS))
def test_auto_records_on_the_cpu_through_gradscope_s_own_ops(monkeypatch, kind):
    """Recorded with autograd on, path auto: :func:`run_sequence` once per layer and direction; forced to
    "fused", or under no_grad, or unrecorded: torch's op."""
    runs = []
    original = layers.run_sequence
    monkeypatch.setattr(layers, "run_sequence", lambda *a: runs.append(a[0]) or original(*a))
    layer = CELLS[kind][0](2, 3, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 2)
    with gradscope.record(layer):
        layer(x)[0].sum().backward()
    assert runs == [kind] * 4
    with gradscope.record(layer, path="fused"):
        layer(x)[0].sum().backward()
    with torch.no_grad(), gradscope.record(layer):
        layer(x)
    layer(x)[0].sum().backward()
    assert runs == [kind] * 4


def test_auto_records_through_torch_s_op_under_autocast(monkeypatch):
    """gradscope's ops compute in the input's dtype: under autocast, auto records as "fused" does."""
    runs = []
    original = layers.run_sequence
    monkeypatch.setattr(layers, "run_sequence", lambda *a: runs.append(a[0]) or original(*a))
    layer = gradscope.GRU(2, 3)
    x = torch.randn(4, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.nn.GRU.forward(layer, x)[0]
        with gradscope.record(layer) as rec:
            out = layer(x)[0]
            out.float().sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert rec.trace.layer().grad_h.abs().sum() > 0
    assert runs == []


_AUTOCAST_CASES = [
    *[
        (kind, options, path)
        for kind, options in [("rnn", {}), ("gru", {}), ("gru", {"reset": "before"})]
        for path in ("auto", "unrolled")
    ],
    ("lstm", {}, "unrolled"),  # oneDNN's LSTM does not run under CPU autocast, with or without gradscope
]


@pytest.mark.parametrize(("kind", "options", "path"), _AUTOCAST_CASES)
def test_recording_under_cpu_autocast_is_close_to_float32(kind, options, path):
    torch.manual_seed(0)
    layer = {"rnn": gradscope.RNN, "gru": gradscope.GRU, "lstm": gradscope.LSTM}[kind](2, 3, **options)
    x = torch.randn(4, 6, 2)
    results = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), gradscope.record(layer, path=path) as rec:
            out = layer(x)[0]
            out.float().square().sum().backward()
        results.append((out.float(), rec.trace.layer().grad_h.float(), rec.trace.layer().grad_x.float()))
    for exact, lower in zip(*results, strict=True):
        torch.testing.assert_close(lower, exact, rtol=0.05, atol=0.05)
    assert results[1][1].abs().sum() > 0


def test_an_unrecorded_layer_runs_torch_s_own_forward_unless_told_otherwise(monkeypatch):
    calls = _spy_paths(monkeypatch)
    layer = gradscope.LSTM(2, 3)
    layer(torch.randn(4, 2, 2))
    assert calls == []  # torch.nn.LSTM.forward, in one call
    layer.path = "unrolled"
    layer(torch.randn(4, 2, 2))
    assert calls == ["_run_direction"]
    custom = gradscope.LSTM(2, 3, cell_activation="identity")
    custom(torch.randn(4, 2, 2))
    assert calls == ["_run_direction"] * 2


def test_the_record_path_overrides_the_layer_s_own():
    layer = gradscope.GRU(2, 3)
    layer.path = "unrolled"
    x = torch.randn(4, 2, 2, dtype=torch.float32)
    with gradscope.record(layer, path="fused") as rec:
        layer(x)[0].sum().backward()
    assert rec.trace.layer().grad_h is not None and layer.path == "unrolled"


def test_forcing_the_fused_path_where_torch_has_no_kernel_is_an_error_naming_why():
    layer = gradscope.GRU(2, 3, reset="before")
    with pytest.raises(ValueError, match="reset='before'"), gradscope.record(layer, path="fused"):
        layer(torch.randn(4, 2, 2))
    layer = gradscope.LSTM(2, 3, hidden_activation="relu")
    layer.path = "fused"
    with pytest.raises(ValueError, match="hidden_activation='relu'"):
        layer(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match=r"path must be one of \('auto', 'fused', 'unrolled'\) or None, got: 'fast'"):
        with gradscope.record(layer, path="fast"):
            pass
    layer.path = "cudnn"
    with pytest.raises(ValueError, match="path must be one of .* got: 'cudnn'"):
        layer(torch.randn(4, 2, 2))


def test_eval_mode_and_no_grad_on_the_fused_path():
    layer = gradscope.LSTM(2, 3, num_layers=2, dropout=0.5).double().eval()
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    fused = _record(layer, x, None, "fused")
    unrolled = _record(layer, x, None, "unrolled")
    _assert_same_traces(fused[0], unrolled[0], TOL[torch.float64])
    with torch.no_grad(), gradscope.record(layer, path="fused") as rec:
        out, _ = layer(x)
    lt = rec.trace.layer(layer=1)
    torch.testing.assert_close(lt.h, out.transpose(0, 1), rtol=0, atol=0)
    assert lt.grad_h is None and lt.gates["forget"].shape == (2, 6, 3)


@pytest.mark.parametrize(
    "kind,path,summary_keeps",
    [("lstm", "fused", "first"), ("gru", "fused", "latest"), ("rnn", "fused", "latest")]
    + [(kind, "auto", "latest") for kind in CELLS],
)
def test_repeated_backward_on_the_fast_paths(kind, path, summary_keeps):
    """Full detail accumulates like .grad. Summary detail keeps the first backward through a fused kernel (its
    scan inputs are freed), the latest through torch's hooked CPU loop and gradscope's ops (as on the unrolled
    path)."""
    layer = CELLS[kind][0](2, 3, dtype=torch.float64)
    for detail in ("full", "summary"):
        with gradscope.record(layer, detail=detail, path=path) as rec:
            loss = layer(torch.randn(5, 2, 2, dtype=torch.float64))[0].pow(2).sum()
            loss.backward(retain_graph=True)
            once = rec.trace.layer().to_frame().set_index(["quantity", "t"])
            if detail == "full":
                loss.backward()
                again = rec.trace.layer().to_frame().set_index(["quantity", "t"])
                pd.testing.assert_series_equal(again.loc["grad_h", "mean"], 2 * once.loc["grad_h", "mean"])
            else:
                with pytest.warns(UserWarning, match=f"{summary_keeps} backward only"):
                    loss.backward()
                pd.testing.assert_frame_equal(rec.trace.layer().to_frame().set_index(["quantity", "t"]), once)


def _alive(kind=_FusedGradients):
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is kind]


@pytest.mark.parametrize("detail", ["full", "summary"])
def test_the_fused_path_keeps_nothing_alive_after_backward(detail):
    """What turns the probe's gradient into the trace lives on the autograd graph, and goes with it."""
    layer = gradscope.LSTM(2, 3, num_layers=2, bidirectional=True)
    with gradscope.record(layer, detail=detail, path="fused") as rec:
        out, final = layer(torch.randn(5, 4, 2))
        assert len(_alive()) == 4
        assert all((o.coefficients is not None) == (detail == "summary") for o in _alive())
        out.sum().backward()
        assert all(o.coefficients is None for o in _alive())  # even while the outputs are kept
        del out, final
    assert _alive() == []
    frame = rec.trace.layer(layer=1, direction="backward").to_frame()
    assert {"grad_h", "grad_c"} <= set(frame["quantity"])


@pytest.mark.parametrize(
    "kind,path,hooks",
    [("gru", "fused", _StepGradients), ("gru", "unrolled", _StepGradients), ("rnn", "fused", _ProjectionGradients)],
)
def test_step_hooks_keep_nothing_alive_after_backward(kind, path, hooks):
    """The hooks on torch's CPU loop and on the unrolled loop live on the autograd graph, and go with it."""
    layer = CELLS[kind][0](2, 3, num_layers=2, bidirectional=True)
    with gradscope.record(layer, path=path) as rec:
        out, final = layer(torch.randn(5, 4, 2))
        assert len(_alive(hooks)) == 4
        out.sum().backward()
        del out, final
    assert _alive(hooks) == []
    assert rec.trace.layer(layer=1, direction="backward").grad_h.abs().sum() > 0


@pytest.mark.parametrize("kind,products", [("rnn", True), ("rnn", False), ("gru", False)])
def test_torch_s_cpu_loop_is_hooked_step_by_step_and_else_probed(monkeypatch, kind, products):
    """On the CPU, torch's RNN and GRU record through hooks on each step's node (a small RNN: on the split
    of its input projection), without the probe input's extra width; where the graph is not the expected
    loop, the probe input gives the same trace."""
    layer = CELLS[kind][0](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x, hx = torch.randn(6, 2, 3, dtype=torch.float64), initial_state(layer, 2, torch.float64)
    if not products:
        monkeypatch.setattr(recording, "_PRODUCTS_PER_STEP", 0)
    probed, split = [], []
    original = _LayerRecord.probe_input
    monkeypatch.setattr(_LayerRecord, "probe_input", lambda self, *a: probed.append(1) or original(self, *a))
    on_split = _ProjectionGradients.on_split
    monkeypatch.setattr(_ProjectionGradients, "on_split", lambda self, g: split.append(1) or on_split(self, g))
    hooked = _record(layer, x, hx, "fused")
    assert probed == []
    assert len(split) == (4 if products else 0)
    monkeypatch.setattr(_LayerRecord, "watch_steps", lambda self, *a: False)
    fallback = _record(layer, x, hx, "fused")
    assert len(probed) == 4
    reference = _record(layer, x, hx, "unrolled")
    for trace in (hooked, fallback):
        _assert_same_traces(trace[0], reference[0], TOL[torch.float64])
        for a, b in zip(trace[1], reference[1], strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("detail", ["full", "summary"])
def test_torch_s_cpu_gru_gates_are_read_from_its_graph_and_else_recomputed(monkeypatch, detail):
    """torch's CPU GRU step saves r, z and n for its backward: the recording copies them out of the graph in
    forward instead of recomputing them; where the graph is not the expected one, it recomputes them."""
    layer = gradscope.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x, hx = torch.randn(6, 2, 3, dtype=torch.float64), initial_state(layer, 2, torch.float64)
    projections = []
    original = recording.input_projection
    monkeypatch.setattr(recording, "input_projection", lambda *a: projections.append(1) or original(*a))

    def frame(trace):
        return pd.concat(trace.layer(*key).to_frame() for key in trace.keys()).reset_index(drop=True)

    reference = _record(layer, x, hx, "unrolled", detail)[0]
    expected = frame(reference)  # reading it derives the reference's gates now
    for recomputes in (False, True):
        if recomputes:
            monkeypatch.setattr(recording, "_saved_gru_gates", lambda *a: None)
        projections.clear()
        layer.zero_grad(set_to_none=True)
        with gradscope.record(layer, detail=detail, path="fused") as rec:
            out, final = layer(x, hx)
            assert all(o._saved_gates is None for o in _alive(_LayerRecord))  # no reference into the graph
            weighted_loss(out, final).backward()
        if detail == "full":
            _assert_same_traces(rec.trace, reference, TOL[torch.float64])
        else:
            pd.testing.assert_frame_equal(frame(rec.trace), expected, **TOL[torch.float64], check_exact=False)
        assert bool(projections) == recomputes


@pytest.mark.parametrize("doubling", [False, True], ids=["step_by_step", "doubling"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_linear_scan_solves_its_recurrence(reverse, doubling):
    """x_t = b_t + a_t x_{t-1} (reverse: x_{t+1}) against a plain loop, for lengths around powers of two."""
    for steps in (1, 2, 3, 4, 5, 7, 8, 9, 16, 33):
        b, a = torch.randn(steps, 2, 3, dtype=torch.float64), torch.rand(steps - 1, 2, 3, dtype=torch.float64)
        expected = b.clone()
        order = range(steps - 2, -1, -1) if reverse else range(1, steps)
        for t in order:
            expected[t] = b[t] + a[t if reverse else t - 1] * expected[t + 1 if reverse else t - 1]
        got = recording._linear_scan(b.clone(), a, reverse, doubling)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("detail", ["full", "summary"])
def test_the_lstm_s_scans_by_doubling_as_on_a_gpu_give_the_same_trace(monkeypatch, detail):
    """On a GPU the fused path's ∂L/∂c_t and the recomputed c_t are scanned by recursive doubling: forced here on
    the CPU, the trace is the unrolled path's (both directions, two layers, summary blocks of 3 steps)."""
    scan = recording._linear_scan
    monkeypatch.setattr(recording, "_linear_scan", lambda b, a, reverse: scan(b, a, reverse, doubling=True))
    monkeypatch.setitem(recording._BLOCK_VALUES, "summary", 3 * 5 * 4 * 4)
    layer = CELLS["lstm"][0](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(11, 5, 3, dtype=torch.float64)
    unrolled = _record(layer, x, None, "unrolled", detail=detail)[0]
    fused = _record(layer, x, None, "fused", detail=detail)[0]
    if detail == "full":
        _assert_same_traces(fused, unrolled, TOL[torch.float64])
    else:
        pd.testing.assert_frame_equal(fused.to_frame(), unrolled.to_frame(), rtol=1e-10)
