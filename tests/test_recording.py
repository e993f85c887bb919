"""gradscope.record: per-step gradients against an unrolled retain_grad reference, and hook hygiene."""

from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest
import torch
from conftest import CELLS, TOL, initial_state, weighted_loss
from reference import unrolled
from torch import nn

import gradscope
from gradscope import native
from gradscope import trace as trace_module
from gradscope.trace import FRAME_COLUMNS, gates_stats

F64 = TOL[torch.float64]

CASES = [
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu", "num_layers": 2}),
    ("gru", {"num_layers": 2, "bidirectional": True}),
    ("gru", {"reset": "before", "bidirectional": True, "batch_first": True}),
    ("lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("lstm", {"cell_activation": "relu", "hidden_activation": "softsign", "num_layers": 2}),
    ("lstm", {"bias": False, "bidirectional": True}),
]
OPTION_NAMES = ("nonlinearity", "reset", "cell_activation", "hidden_activation")


def _case_id(case):
    kind, options = case
    return kind + "-" + ",".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_trace_matches_unrolled_reference(case, input_requires_grad):
    kind, options = case
    layer = CELLS[kind][0](3, 4, dtype=torch.float64, **options)
    B, T = 3, 6
    x_tm = torch.randn(T, B, 3, dtype=torch.float64)  # time-major
    hx = initial_state(layer, B, torch.float64)

    # reference: plain unrolled loop with retain_grad on every state
    opts = {k: v for k, v in options.items() if k in OPTION_NAMES}
    h0, c0 = hx if kind == "lstm" else (hx, None)
    ref_out, ref_hn, ref_cn, steps = unrolled(kind, layer, x_tm, h0, c0, opts)
    ref_final = (ref_hn, ref_cn) if kind == "lstm" else ref_hn
    weighted_loss(ref_out, ref_final).backward()
    layer.zero_grad()

    x = x_tm.transpose(0, 1).clone() if layer.batch_first else x_tm.clone()
    x.requires_grad_(input_requires_grad)
    with gradscope.record(layer) as rec:
        out, final = layer(x, hx)
        weighted_loss(out if not layer.batch_first else out.transpose(0, 1), final).backward()

    directions = ("forward", "backward") if layer.bidirectional else ("forward",)
    assert rec.trace.keys() == [("", k, d) for k in range(layer.num_layers) for d in directions]
    for (k, direction), ref in steps.items():
        lt = rec.trace.layer(layer=k, direction=direction)
        assert (lt.cell, lt.module, lt.layer, lt.direction) == (kind, "", k, direction)
        assert lt.h.shape == (B, T, 4) and lt.x.shape == (
            B,
            T,
            layer.input_size if k == 0 else 4 * len(directions),
        )
        stack = lambda seq: torch.stack(seq, dim=1)  # noqa: E731  [B, T, M]
        torch.testing.assert_close(lt.x, ref.x.detach().transpose(0, 1), **F64)
        torch.testing.assert_close(lt.h, stack([h.detach() for h in ref.h]), **F64)
        torch.testing.assert_close(lt.grad_h, stack([h.grad for h in ref.h]), **F64)
        torch.testing.assert_close(lt.grad_x, ref.x.grad.transpose(0, 1), **F64)
        if kind == "lstm":
            torch.testing.assert_close(lt.c, stack([c.detach() for c in ref.c]), **F64)
            torch.testing.assert_close(lt.grad_c, stack([c.grad for c in ref.c]), **F64)
        else:
            assert lt.c is None and lt.grad_c is None
        assert set(lt.gates) == set(ref.gates)
        for name, values in ref.gates.items():
            torch.testing.assert_close(lt.gates[name], stack([v.detach() for v in values]), **F64)
        keep = {"rnn": None, "gru": "update", "lstm": "forget"}[kind]
        if keep is None:
            assert lt.keep is None
        else:
            torch.testing.assert_close(lt.keep, lt.gates[keep], rtol=0, atol=0)


def test_bidirectional_grad_x_parts_sum_to_the_input_gradient():
    layer = gradscope.LSTM(3, 4, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    with gradscope.record(layer) as rec:
        out, _ = layer(x)
        out[:, 2].pow(2).sum().backward()
    fwd, bwd = rec.trace.layer(direction="forward"), rec.trace.layer(direction="backward")
    torch.testing.assert_close(fwd.grad_x + bwd.grad_x, x.grad, **F64)
    # the forward direction's output at t=2 depends on x_0..x_2 only, the backward one's on x_2..x_4
    assert torch.all(fwd.grad_x[:, 3:] == 0) and torch.all(bwd.grad_x[:, :2] == 0)
    assert fwd.grad_x[:, :3].abs().sum() > 0 and bwd.grad_x[:, 2:].abs().sum() > 0


def test_grad_h_is_the_total_derivative_not_only_the_output_gradient():
    # loss on the last output only: the output gradient at t < T-1 is zero, the total is not
    layer = gradscope.RNN(2, 3, dtype=torch.float64)
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    with gradscope.record(layer) as rec:
        out, _ = layer(x)
        out[-1].sum().backward()
    grad_h = rec.trace.layer().grad_h[0]  # [T, M]
    assert torch.all(grad_h.norm(dim=-1) > 0)
    torch.testing.assert_close(grad_h[-1], torch.ones(3, dtype=torch.float64))
    # one step back through the recurrence: dL/dh_{T-2} = W_hh^T diag(1 - h_{T-1}^2) dL/dh_{T-1}
    h_last = rec.trace.layer().h[0, -1]
    expected = layer.weight_hh_l0.detach().t() @ ((1 - h_last**2) * grad_h[-1])
    torch.testing.assert_close(grad_h[-2], expected, **F64)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("source", ["torch", "gradscope"])
@pytest.mark.parametrize("path", ["auto", "unrolled"])
def test_recording_changes_no_value_and_no_user_gradient(kind, source, path):
    torch.manual_seed(0)
    model = nn.Sequential()
    cls = CELLS[kind][1 if source == "torch" else 0]
    model.rnn = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    if source == "gradscope":
        model.rnn.path = path
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)

    def run():
        out, _ = model.rnn(x)
        out.pow(2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
        model.zero_grad()
        x.grad = None
        return out.detach(), grads

    plain_out, plain_grads = run()
    with gradscope.record(model, path=path):
        rec_out, rec_grads = run()
    # the same loop with zero probes added is bit for bit the same; the fused kernel on the probed input
    # (and torch's unrecorded kernel against the loop) round otherwise
    exact = source == "gradscope" and path == "unrolled"
    tol = dict(rtol=0, atol=0) if exact else F64
    torch.testing.assert_close(rec_out, plain_out, **tol)
    for a, b in zip(rec_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_grad_x_is_recorded_when_the_input_does_not_require_grad():
    layer = gradscope.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with gradscope.record(layer) as rec:
        layer(x)[0].sum().backward()
    assert not x.requires_grad and x.grad is None
    assert rec.trace.layer().grad_x is not None and rec.trace.layer().grad_x.abs().sum() > 0


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("path", ["auto", "unrolled"])
def test_grad_x_is_what_the_layer_alone_sends_back_to_an_input_used_elsewhere(kind, path):
    torch.manual_seed(0)
    layer = CELLS[kind][0](3, 4, dtype=torch.float64)
    layer.path = path
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    (alone,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x)
    with gradscope.record(layer) as rec:
        (layer(x)[0].pow(2).sum() + 3 * x.sum()).backward()
    torch.testing.assert_close(x.grad, alone + 3, **F64)
    torch.testing.assert_close(rec.trace.layer().grad_x, alone.transpose(0, 1), **F64)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("path", ["auto", "unrolled"])
def test_recorded_grad_x_is_not_the_memory_of_an_inputs_grad(kind, path):
    # the layer alone uses the input: autograd may hand the gradient the recording saw on to x.grad
    layer = CELLS[kind][0](3, 4, dtype=torch.float64)
    layer.path = path
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    with gradscope.record(layer) as rec:
        layer(x)[0].pow(2).sum().backward()
    recorded = rec.trace.layer().grad_x.clone()
    torch.testing.assert_close(recorded, x.grad.transpose(0, 1), rtol=0, atol=0)
    x.grad.zero_()
    torch.testing.assert_close(rec.trace.layer().grad_x, recorded, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_torchs_cpu_loop_runs_a_deeper_layer_on_its_input_not_a_copy(kind):
    """torch's loop saves each layer's input for backward. Recorded through it (path "fused"), what the second
    layer saved is the first layer's output itself, as with torch.nn: no [T, B, M] copy of it is made."""
    torch.manual_seed(0)
    layer = CELLS[kind][0](3, 16, num_layers=2)
    x = torch.randn(50, 4, 3)
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def large_saved() -> list[int]:
        """Bytes of each saved storage of at least [T, B, 4] values (the first layer's probe also makes the
        graph save W_ih, to compute dL/dx)."""
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            layer(x)[0].sum().backward()
        return sorted(size for size in saved.values() if size >= 50 * 4 * 4 * 4)

    plain = large_saved()
    with gradscope.record(layer, path="fused") as rec:
        recorded = large_saved()
    assert rec.trace.layer(layer=0).h.untyped_storage().data_ptr() in saved
    assert recorded == plain
    assert rec.trace.layer(layer=1).grad_x.abs().sum() > 0


def test_forward_without_backward_gives_values_without_gradients():
    layer = gradscope.LSTM(3, 4)
    with gradscope.record(layer) as rec:
        layer(torch.randn(5, 2, 3))
    lt = rec.trace.layer()
    assert lt.h.shape == (2, 5, 4) and lt.c.shape == (2, 5, 4)
    assert lt.grad_h is None and lt.grad_c is None and lt.grad_x is None
    frame = lt.to_frame()
    assert set(frame["quantity"]) == {"x", "h", "c", "input", "forget", "cell", "output", "keep"}


def test_no_grad_forward_records_values():
    layer = gradscope.GRU(3, 4)
    with gradscope.record(layer) as rec, torch.no_grad():
        out, _ = layer(torch.randn(5, 2, 3))
    assert not out.requires_grad
    torch.testing.assert_close(rec.trace.layer().h, out.transpose(0, 1))
    assert rec.trace.layer().grad_h is None


def test_several_passes_are_kept_in_order():
    layer = gradscope.RNN(2, 3)
    xs = [torch.randn(4, 1, 2) * (i + 1) for i in range(3)]
    with gradscope.record(layer) as rec:
        for x in xs:
            layer(x)[0].sum().backward()
    assert len(rec.traces) == 3 and rec.trace is rec.traces[-1]
    for x, trace in zip(xs, rec.traces, strict=True):
        torch.testing.assert_close(trace.layer().x, x.transpose(0, 1))
        assert trace.layer().grad_h is not None
    frame = rec.to_frame()
    assert list(frame.columns) == ["pass", *FRAME_COLUMNS]
    assert sorted(frame["pass"].unique()) == [0, 1, 2]


def test_a_model_with_two_recurrent_modules_makes_one_trace_per_forward():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.GRU(3, 4, batch_first=True)
            self.second = nn.LSTM(4, 5, batch_first=True)

        def forward(self, x):
            return self.second(self.first(x)[0])[0]

    model = Encoder()
    with gradscope.record(model) as rec:
        for _ in range(2):
            model(torch.randn(2, 6, 3)).sum().backward()
    assert len(rec.traces) == 2
    assert rec.trace.names == ["first", "second"]
    with pytest.raises(ValueError, match=r"several modules \['first', 'second'\]: pass name="):
        rec.trace.layer()
    assert rec.trace.layer("second").cell == "lstm"
    # what reaches the second module's input is the first one's output gradient: at the last step that is
    # all of dL/dh_t; earlier, grad_h also holds the path through the first module's recurrence
    into_second, first = rec.trace.layer("second").grad_x, rec.trace.layer("first").grad_h
    torch.testing.assert_close(into_second[:, -1], first[:, -1])
    assert not torch.allclose(into_second[:, :-1], first[:, :-1])
    with pytest.raises(KeyError, match=r"no trace for module 'first', layer 1"):
        rec.trace.layer("first", layer=1)


def test_repeated_backward_accumulates_full_gradients_like_grad():
    layer = gradscope.RNN(2, 3, dtype=torch.float64)
    with gradscope.record(layer) as rec:
        loss = layer(torch.randn(4, 1, 2, dtype=torch.float64))[0].sum()
        loss.backward(retain_graph=True)
        once = rec.trace.layer().grad_h.clone()
        loss.backward()
    torch.testing.assert_close(rec.trace.layer().grad_h, 2 * once)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_summary_detail_equals_the_reductions_of_the_full_trace(dtype):
    """On the CPU, summary detail takes the compiled LSTM's own statistics, computed as it ran."""
    layer = gradscope.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    x = torch.randn(7, 5, 3, dtype=dtype)
    frames = {}
    for detail in ("full", "summary"):
        with gradscope.record(layer, detail=detail) as rec:
            out, (h_n, _) = layer(x)
            (out.pow(2).sum() + h_n.sum()).backward()
        frames[detail] = rec.trace.to_frame()
        if detail == "summary":
            summary = rec.trace.layer(layer=1, direction="backward")
    assert isinstance(summary, gradscope.LayerSummary)
    assert summary.batch_size == 5 and summary.seq_len == 7
    assert all(table.shape == (7, 5) for table in summary.stats.values())
    pd.testing.assert_frame_equal(
        frames["full"], frames["summary"], rtol={torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    )


def test_summary_statistics_are_what_they_claim():
    layer = gradscope.GRU(2, 3, dtype=torch.float64)
    x = torch.randn(4, 50, 2, dtype=torch.float64)
    with gradscope.record(layer) as rec:
        layer(x)[0].sum().backward()
    lt = rec.trace.layer()
    frame = lt.to_frame().set_index(["quantity", "t"])
    norms = lt.grad_h.norm(dim=-1)  # [B, T]
    for t in (0, 3):
        row = frame.loc[("grad_h", t)]
        assert row["kind"] == "norm" and pd.isna(row["saturated"])
        assert row["mean"] == pytest.approx(norms[:, t].mean().item())
        assert row[["q10", "q50", "q90"]].tolist() == pytest.approx(
            torch.quantile(norms[:, t], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        )
        update = lt.gates["update"][:, t]
        row = frame.loc[("update", t)]
        assert row["kind"] == "gate" and row["mean"] == pytest.approx(update.mean().item())
        unit_means = update.mean(0)  # quantiles across units of the batch-mean value
        assert row[["q10", "q50", "q90"]].tolist() == pytest.approx(
            torch.quantile(unit_means, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        )
        assert row["saturated"] == pytest.approx(((update < 0.1) | (update > 0.9)).double().mean().item())
        assert frame.loc[("candidate", t), "saturated"] == pytest.approx(
            (lt.gates["candidate"][:, t].abs() > 0.8).double().mean().item()
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # bfloat16: torch's sort
def test_gates_statistics_equal_torch_quantile_and_a_direct_count(dtype):
    # [T, B, G, M] seen as [G, T, B, M], as the kernels hand them over; values on and near the thresholds
    values = torch.rand(6, 5, 3, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values[:, :, 1] = values[:, :, 1] * 2 - 1
    values[0, :, 0, :4] = torch.tensor([0.1, 0.9, 0.0999, 0.9001], dtype=torch.float64)
    values[0, :, 1, :4] = torch.tensor([-0.8, 0.8, -0.8001, 0.8001], dtype=torch.float64)
    gates = values.to(dtype).permute(2, 0, 1, 3)
    stats = gates_stats(gates, [(0.0, 1.0), (-1.0, 1.0), None]).double()
    exact = gates.double()
    unit_means = exact.mean(2)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    assert stats[..., 0] == pytest.approx(unit_means.mean(-1), abs=tol)
    quantiles = torch.quantile(unit_means, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=-1)
    assert stats[..., 1:4] == pytest.approx(quantiles.permute(1, 2, 0), abs=tol)
    sigmoid_like, tanh_like = exact[0], exact[1]

    def threshold(value: float) -> float:  # as the gates' dtype has it
        return torch.tensor(value, dtype=dtype).item()

    fraction = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]  # bfloat16: of 45 values
    beyond = (sigmoid_like < threshold(0.1)) | (sigmoid_like > threshold(0.9))
    assert stats[0, :, 4] == pytest.approx(beyond.double().mean((1, 2)), rel=fraction)
    assert stats[1, :, 4] == pytest.approx((tanh_like.abs() > threshold(0.8)).double().mean((1, 2)), rel=fraction)
    assert stats[2, :, 4].isnan().all()


def _odd_values(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random values with NaN, ±inf, ties and exact zeros among them."""
    values = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)), dtype=torch.float64).to(dtype)
    flat = values.view(-1)
    flat[1::7] = flat[::7][: flat[1::7].numel()]  # ties
    flat[3::11] = 0.0
    flat[5::13] = float("nan")
    flat[2::17] = float("inf")
    flat[4::19] = -float("inf")
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 2, 7, 8, 9, 33])
def test_compiled_summary_statistics_equal_torch_s(dtype, batch, monkeypatch):
    """The compiled statistics (:mod:`gradscope.native`) against the same in torch's operations: norms of rows of
    several widths (contiguous and a transposed view) and given norms, and gates of several unit counts in the
    kernels' layout; with NaN, ±inf, ties and zeros; over more steps than the compiled sort takes at once."""
    if native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    tol = TOL[dtype] | {"equal_nan": True}

    def both(function, *args):
        compiled = function(*args)
        with monkeypatch.context() as patch:
            patch.setattr(trace_module, "native_ops", lambda values: None)
            return compiled, function(*args)

    for width in (1, 3, 16, 37):
        values = _odd_values((19, batch, width), dtype)
        torch.testing.assert_close(*both(trace_module.norm_stats, values), **tol)
        torch.testing.assert_close(*both(trace_module.norm_stats, values.transpose(0, 1)[:, :5]), **tol)
    norms = _odd_values((19, batch), dtype).abs()
    torch.testing.assert_close(*both(trace_module.stats_of_norms, norms), **tol)
    nan_counts = torch.arange(batch + 1)[:, None]
    norms = torch.where(torch.arange(batch) < nan_counts, float("nan"), norms.new_ones(()))  # step t: t of them NaN
    torch.testing.assert_close(*both(trace_module.stats_of_norms, norms), **tol)
    for units in (1, 5, 8, 64, 130):
        gates = _odd_values((19, batch, 3, units), dtype).sigmoid()
        gates[:, :, 1] = gates[:, :, 1] * 2 - 1
        ranges = [(0.0, 1.0), (-1.0, 1.0), None]
        compiled, reference = both(trace_module.gates_stats, gates.permute(2, 0, 1, 3), ranges)
        torch.testing.assert_close(compiled, reference, **tol)
        assert compiled[:2, :, 4].isfinite().all() and compiled[2, :, 4].isnan().all()


@pytest.mark.parametrize("path", ["compiled", "numpy", "torch"])
def test_an_exploding_gradient_s_norm_quantiles_are_inf_not_nan(path, monkeypatch):
    """A quantile between two ranks holding +inf is +inf (torch.quantile's lerp gives NaN, inf - inf), and between
    a finite value and +inf too; finite ones as torch.quantile's. In the compiled statistics, numpy's (float32 on
    the CPU) and torch's (bfloat16)."""
    dtype = torch.bfloat16 if path == "torch" else torch.float32
    if path == "compiled" and native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    if path == "numpy":
        monkeypatch.setattr(trace_module, "native_ops", lambda values: None)
    inf = float("inf")
    # 11 rows: the quantiles lie on ranks 1, 5 and 9 exactly; 12: between ranks 1-2, 5-6 and 9-10
    exact = torch.tensor([[*range(9), inf, inf], [inf] * 11], dtype=dtype)
    between = torch.tensor([[*range(10), inf, inf]], dtype=dtype)
    got = [trace_module.stats_of_norms(norms)[:, 1:4].double() for norms in (exact, between)]
    expected = [torch.tensor([[1, 5, inf], [inf, inf, inf]]), torch.tensor([[1.1, 5.5, inf]])]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e.double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    finite = torch.quantile(between[0].double(), torch.tensor([0.1, 0.5]).double())  # q90: NaN in torch's
    torch.testing.assert_close(got[1][0, :2], finite, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


@pytest.mark.parametrize("detail", ["full", "summary"])
def test_unbounded_gate_activations_have_no_saturation(detail):
    layer = gradscope.LSTM(2, 3, cell_activation="relu")
    with gradscope.record(layer, detail=detail) as rec:
        layer(torch.randn(4, 2, 2))
    frame = rec.trace.to_frame()
    assert frame.loc[frame["quantity"] == "cell", "saturated"].isna().all()
    assert frame.loc[frame["quantity"] == "forget", "saturated"].notna().all()


def test_summary_memory_does_not_grow_with_batch_size():
    layer = gradscope.RNN(2, 3)
    sizes = []
    for batch in (2, 64):
        with gradscope.record(layer, detail="summary") as rec:
            layer(torch.randn(5, batch, 2))[0].sum().backward()
        stats = rec.trace.layer().stats
        sizes.append(sum(t.numel() for t in stats.values()))
    assert sizes[0] == sizes[1] == 4 * 5 * 5  # x, h, grad_x, grad_h: [T, 5] each


# ---- hygiene: nothing left hooked, swapped or changed ----


class UserModel(nn.Module):
    """A user's model with torch.nn recurrent layers nested inside other modules."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.encoder = nn.Sequential(nn.Tanh())
        self.encoder.add_module("lstm", nn.LSTM(4, 5, batch_first=True, num_layers=2))
        self.blocks = nn.ModuleList([nn.ModuleDict({"gru": nn.GRU(5, 5, batch_first=True)})])
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        h = self.encoder[0](self.embed(x))
        h, _ = self.encoder.lstm(h)
        h, _ = self.blocks[0]["gru"](h)
        return self.head(h[:, -1])


def _snapshot(model: nn.Module):
    modules = [(name, id(m), type(m), sorted(vars(m))) for name, m in model.named_modules()]
    state = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    return modules, state


def _assert_no_hooks(model: nn.Module):
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks"):  # fmt: skip
            assert not getattr(module, attr), f"{name!r} keeps {attr}"
        assert "_gradscope_sink" not in vars(module)
    for name, p in model.named_parameters():
        assert not p._backward_hooks, f"parameter {name} keeps a hook"
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_backward_hooks


def _assert_restored(model, before):
    after = _snapshot(model)
    assert after[0] == before[0]  # same objects, same types, same attributes
    assert list(after[1]) == list(before[1])
    for key, (value, ptr) in before[1].items():
        assert after[1][key][1] == ptr
        torch.testing.assert_close(after[1][key][0], value, rtol=0, atol=0)
    _assert_no_hooks(model)


def test_record_restores_a_nested_user_model_after_a_normal_exit():
    model = UserModel()
    before = _snapshot(model)
    x = torch.randn(2, 6, 3)
    with gradscope.record(model) as rec:
        assert type(model.encoder.lstm) is gradscope.LSTM and type(model.blocks[0]["gru"]) is gradscope.GRU
        model(x).sum().backward()
    assert rec.trace.names == ["encoder.lstm", "blocks.0.gru"]
    assert rec.trace.layer("encoder.lstm", layer=1).grad_h.shape == (2, 6, 5)
    assert type(model.encoder.lstm) is nn.LSTM and type(model.blocks[0]["gru"]) is nn.GRU
    model.zero_grad(set_to_none=True)
    _assert_restored(model, before)


def test_record_restores_a_nested_user_model_after_an_exception():
    model = UserModel()
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), gradscope.record(model):
        model(torch.randn(2, 6, 3)).sum().backward()
        raise RuntimeError("boom")
    model.zero_grad(set_to_none=True)
    _assert_restored(model, before)
    # and the model still works as torch.nn
    assert model(torch.randn(1, 4, 3)).shape == (1, 1)


def test_record_restores_after_an_error_inside_the_recorded_forward():
    model = UserModel()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="input_size=4"), gradscope.record(model):
        model.encoder.lstm(torch.randn(2, 6, 9))
    _assert_restored(model, before)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_recording_an_empty_batch_is_a_named_error_and_records_nothing(kind):
    layer = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](3, 4, batch_first=True)
    with gradscope.record(layer) as rec:
        with pytest.raises(
            ValueError, match=re.escape("a batch of at least one sequence, got input of shape (0, 6, 3)")
        ):
            layer(torch.randn(0, 6, 3))
        layer(torch.randn(2, 6, 3))[0].sum().backward()
    assert len(rec.trace) == 1 and rec.trace.layer().grad_h.shape == (2, 6, 4)
    assert layer(torch.randn(0, 6, 3))[0].shape == (0, 6, 4)  # unrecorded, as torch.nn


def test_recording_the_root_torch_module_and_training_it():
    lstm = nn.LSTM(3, 4)
    optimizer = torch.optim.SGD(lstm.parameters(), lr=0.5)
    weight = lstm.weight_hh_l0
    before = weight.detach().clone()
    with gradscope.record(lstm) as rec:
        assert isinstance(lstm, gradscope.LSTM)
        lstm(torch.randn(5, 2, 3))[0].sum().backward()
        optimizer.step()
    assert type(lstm) is nn.LSTM and lstm.weight_hh_l0 is weight
    assert not torch.equal(weight.detach(), before)
    assert rec.trace.names == [""]
    _assert_no_hooks(lstm)


def test_gradscope_layers_inside_a_model_are_recorded_as_they_are():
    model = nn.Sequential()
    model.rnn = gradscope.GRU(3, 4, reset="before")
    with gradscope.record(model) as rec:
        model.rnn(torch.randn(4, 2, 3))[0].sum().backward()
    assert type(model.rnn) is gradscope.GRU and model.rnn.reset == "before"
    assert rec.trace.layer("rnn").grad_h is not None
    _assert_no_hooks(model)


def test_instrument_makes_the_swap_permanent():
    model = UserModel()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 6, 3)
    expected = model(x)
    lstm = model.encoder.lstm
    assert gradscope.instrument(model) is model
    assert model.encoder.lstm is lstm and type(lstm) is gradscope.LSTM
    assert type(model.blocks[0]["gru"]) is gradscope.GRU
    torch.testing.assert_close(model(x), expected)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with gradscope.record(model) as rec:
        model(x).sum().backward()
    assert rec.trace.names == ["encoder.lstm", "blocks.0.gru"]
    assert type(model.encoder.lstm) is gradscope.LSTM


def test_record_errors_are_named_and_change_nothing():
    with pytest.raises(ValueError, match="Linear contains no recurrent layer"):
        with gradscope.record(nn.Linear(2, 3)):
            pass
    with pytest.raises(ValueError, match=r"detail must be one of \('full', 'summary'\), got: 'all'"):
        with gradscope.record(nn.GRU(2, 3), detail="all"):
            pass
    with pytest.raises(TypeError, match="record\\(\\) expects an nn.Module, got: function"):
        with gradscope.record(lambda x: x):
            pass
    model = nn.Sequential(nn.GRU(2, 3), nn.LSTM(3, 4, proj_size=2))
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"module '1' is an nn.LSTM with proj_size=2"):
        with gradscope.record(model):
            pass
    _assert_restored(model, before)
    layer = gradscope.RNN(2, 3)
    with gradscope.record(layer), pytest.raises(RuntimeError, match="already being recorded"):
        with gradscope.record(layer):
            pass
    _assert_no_hooks(layer)
    with gradscope.record(layer) as rec, pytest.raises(RuntimeError, match="nothing was recorded yet"):
        rec.trace  # noqa: B018


def test_a_torch_subclass_with_its_own_forward_is_left_alone_with_a_warning():
    class MyLSTM(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    model = nn.Sequential()
    model.mine = MyLSTM(2, 3)
    model.plain = nn.GRU(2, 3)
    with pytest.warns(UserWarning, match=r"'mine' is a subclass of LSTM \(MyLSTM\).*not recorded"):
        with gradscope.record(model) as rec:
            model.mine(torch.randn(3, 1, 2))
            model.plain(torch.randn(3, 1, 2))
    assert type(model.mine) is MyLSTM and rec.trace.names == ["plain"]


def test_to_frame_columns_and_values():
    layer = gradscope.LSTM(2, 3, bidirectional=True)
    with gradscope.record(layer) as rec, warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(4, 2, 2))[0].sum().backward()
    frame = rec.trace.to_frame()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert set(frame["direction"]) == {"forward", "backward"}
    assert set(frame["kind"]) == {"norm", "gate"}
    assert len(frame) == 2 * 11 * 4  # directions x (6 norms, 4 gates, keep) x steps
    keep = frame[frame["quantity"] == "keep"]
    assert keep["mean"].between(0, 1).all()


def test_trace_tensors_are_detached_and_hold_no_graph():
    layer = gradscope.LSTM(3, 4, num_layers=2)
    with gradscope.record(layer) as rec:
        layer(torch.randn(5, 2, 3, requires_grad=True))[0].sum().backward()
    lt = rec.trace.layer(layer=1)
    tensors = [lt.x, lt.h, lt.c, lt.grad_x, lt.grad_h, lt.grad_c, *lt.gates.values()]
    assert all(t is not None and t.grad_fn is None and not t.requires_grad for t in tensors)


def test_unbatched_input_is_recorded_with_a_batch_of_one():
    layer = gradscope.GRU(3, 4, batch_first=True)
    x = torch.randn(6, 3)
    with gradscope.record(layer) as rec:
        out, _ = layer(x)
        out.sum().backward()
    lt = rec.trace.layer()
    assert lt.h.shape == (1, 6, 4) and lt.grad_x.shape == (1, 6, 3)
    torch.testing.assert_close(lt.h[0], out.detach())
