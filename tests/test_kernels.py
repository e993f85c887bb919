"""gradscope's own sequence ops against torch.nn and the independent unrolled reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TOL
from reference import unrolled
from torch.utils import cpp_extension

from gradscope import kernels, native, trace
from gradscope.cells import GATE_NAMES
from gradscope.kernels import GATE_ORDER, run_sequence

# (cell, torch.nn options[, "torch-ops" | "onednn"]); the LSTM three times: on its compiled loop (where that builds),
# marked "torch-ops" on its loop in torch's operations, marked "onednn" on its compiled loop with each step's product
# through oneDNN whatever the width (in float32: float64's stay with BLAS)
CASES = [
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu"}),
    ("gru", {}),
    ("lstm", {}),
    ("lstm", {}, "torch-ops"),
    ("lstm", {}, "onednn"),
]


@pytest.fixture(autouse=True)
def _lstm_path(request, monkeypatch):
    """A case marked "torch-ops" runs the LSTM's loop in torch's operations, not the compiled kernel; one marked
    "onednn" takes the compiled kernel's step products through oneDNN at any width (by default from M = 512)."""
    callspec = getattr(request.node, "callspec", None)
    marks = callspec.params.get("case", ())[2:] if callspec is not None else ()
    if "torch-ops" in marks:
        monkeypatch.setattr(kernels, "native_ops", lambda x: None)
    if "onednn" in marks:
        if native.ops(torch.zeros(1)) is None or not native.onednn(torch.zeros(1)):
            pytest.skip("the compiled loops or torch's oneDNN are not on this machine")
        monkeypatch.setattr(kernels, "_ONEDNN_WIDTH", 1)


def _id(case):
    return case[0] + "".join(f"-{v}" for v in (*case[1].values(), *case[2:]))


class _Sink:
    """Keeps what the op hands over."""

    def __init__(self, norms_only: bool = False) -> None:
        self.norms_only = norms_only
        self.values: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        self.grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

        self.stats: dict[str, torch.Tensor] = {}

    def on_kernel_values(self, gates, c, stats=None):
        self.values.append(tuple(None if v is None else v.clone() for v in (gates, c)))
        self.stats.update(stats or {})

    def on_kernel_grads(self, grad_x, grad_h, grad_c, stats=None):
        self.grads.append(tuple(None if v is None else v.clone() for v in (grad_x, grad_h, grad_c)))
        self.stats.update(stats or {})


def _module(case, dtype=torch.float64, **options):
    kind, extra = case[:2]
    torch.manual_seed(0)
    return {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](
        3, 5, dtype=dtype, **extra, **options
    )


def _run(module, x, h0, c0, reverse=False, sink=None, suffix=""):
    """The op on ``module``'s first layer (``suffix`` "_reverse": its backward direction): (out, h_n, c_n)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    weights = tuple(getattr(module, f"{n}_l0{suffix}", None) if module.bias or n[0] == "w" else None for n in names)
    cell = type(module).__name__.lower()
    relu = getattr(module, "nonlinearity", "tanh") == "relu"
    return run_sequence(cell, x, h0, c0, weights, reverse, sink or _Sink(), relu)


def _loss(*outputs):
    g = torch.Generator().manual_seed(3)
    present = [v for v in outputs if v is not None]
    return sum((v.sin() * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in present)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "x_plain"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_outputs_and_every_gradient_are_torch_s(case, dtype, bias, reverse, x_grad):
    module = _module(case, dtype, bias=bias)
    lstm = case[0] == "lstm"
    x = torch.randn(7, 4, 3, dtype=dtype, requires_grad=x_grad)
    h0, c0 = (torch.randn(4, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    leaves = [x, h0] * x_grad or [h0]
    leaves += [c0, *module.parameters()] if lstm else list(module.parameters())

    out, final = module(x.flip(0) if reverse else x, (h0[None], c0[None]) if lstm else h0[None])
    h_n, c_n = final if lstm else (final, None)
    expected = [out.flip(0) if reverse else out, h_n[0], None if c_n is None else c_n[0]]
    expected_grads = torch.autograd.grad(_loss(*expected), leaves)
    got = _run(module, x, h0, c0 if lstm else None, reverse)
    got_grads = torch.autograd.grad(_loss(*got), leaves)
    assert (got[2] is None) == (not lstm)
    for a, b in zip(got[:2] + got_grads, expected[:2] + list(expected_grads), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    if lstm:
        torch.testing.assert_close(got[2], expected[2], **TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_the_sink_gets_each_step_s_gates_and_total_gradients(case, reverse):
    """Against the plain unrolled loop with retain_grad on every state: gates (and c), and the total
    ∂L/∂h_t (∂L/∂c_t) and ∂L/∂x_t, in time order."""
    kind, options = case[:2]
    module = _module(case, bidirectional=reverse)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 2, 5, dtype=torch.float64), torch.randn(2, 2, 5, dtype=torch.float64)
    c0 = c0 if kind == "lstm" else None
    k = int(reverse)
    ref_out, ref_h, ref_c, steps = unrolled(kind, module, x, h0[: k + 1], None if c0 is None else c0[: k + 1], options)
    ref = steps[(0, "backward" if reverse else "forward")]
    _loss(ref_out[..., 5 * k : 5 * (k + 1)], ref_h[k], None if ref_c is None else ref_c[k]).backward()

    sink = _Sink()
    got = _run(module, x, h0[k], None if c0 is None else c0[k], reverse, sink, "_reverse" if reverse else "")
    _loss(*got).backward()

    (gates, c), ((grad_x, grad_h, grad_c),) = sink.values[0], sink.grads
    tol = TOL[torch.float64]
    names = GATE_NAMES[kind]
    assert (gates is None) == (not names) and (c is None) == (grad_c is None) == (kind != "lstm")
    for name, index in zip(names, GATE_ORDER[kind], strict=True):
        torch.testing.assert_close(gates[:, :, index], torch.stack(ref.gates[name]).detach(), **tol)
    torch.testing.assert_close(grad_h, torch.stack([h.grad for h in ref.h]), **tol)
    torch.testing.assert_close(grad_x, ref.x.grad, **tol)
    if kind == "lstm":
        torch.testing.assert_close(c, torch.stack(ref.c).detach(), **tol)
        torch.testing.assert_close(grad_c, torch.stack([v.grad for v in ref.c]), **tol)


def _compare(case, reverse, steps=5, reached=(0, 1, 2), frozen=()):
    """The op against torch.nn on one loss over the outputs in ``reached`` (0 out, 1 h_n, 2 c_n), every
    gradient of x, the initial states and the parameters not ``frozen`` (names)."""
    module = _module(case)
    lstm = case[0] == "lstm"
    for name in frozen:
        getattr(module, name).requires_grad_(False)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(5, dtype=torch.float64, requires_grad=True).expand(2, 5)  # expanded, as a user's may be
    c0 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    leaves = [x, h0, c0] if lstm else [x, h0]
    leaves += [p for p in module.parameters() if p.requires_grad]
    out, final = module(x.flip(0) if reverse else x, (h0[None], c0[None]) if lstm else h0[None])
    h_n, c_n = final if lstm else (final, None)
    expected = (out.flip(0) if reverse else out, h_n[0], None if c_n is None else c_n[0])
    got = _run(module, x, h0, c0 if lstm else None, reverse)

    def grads(outputs):
        return torch.autograd.grad(_loss(*[v if i in reached else None for i, v in enumerate(outputs)]), leaves)

    for a, b in zip(grads(got), grads(expected), strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_gradients_reach_only_some_outputs(case, reverse):
    """Backward gets None for an output the loss does not reach."""
    for reached in ((0,), (1,), (2,)) if case[0] == "lstm" else ((0,), (1,)):
        _compare(case, reverse, reached=reached)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_frozen_parameters_and_a_single_step(case):
    """Inputs that do not require grad get none, the others theirs; a sequence of one step."""
    for frozen in (("weight_ih_l0",), ("weight_hh_l0",), ("bias_ih_l0",), ("bias_hh_l0", "weight_ih_l0")):
        _compare(case, False, frozen=frozen)
    for reverse in (False, True):
        _compare(case, reverse, steps=1)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bias_gradients_are_two_tensors_and_a_second_backward_adds_the_same(case):
    module = _module(case)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    zero = torch.zeros(2, 5, dtype=torch.float64)
    loss = _run(module, x, zero, zero if case[0] == "lstm" else None)[0].sum()
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in module.parameters()]
    assert module.bias_ih_l0.grad.data_ptr() != module.bias_hh_l0.grad.data_ptr()
    loss.backward()
    for p, g in zip(module.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_none_can_be_differentiated_twice(case):
    module = _module(case)
    x = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad(
        _run(module, x, zero, zero if case[0] == "lstm" else None)[0].sum(), x, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


@pytest.mark.parametrize("steps", [11, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_compiled_lstm_hands_over_summary_statistics_of_what_it_computed(reverse, dtype, steps):
    """Where only summaries are asked, the kernel's own statistics of h, c, the gates and the total ∂L/∂h_t and
    ∂L/∂c_t: those of gradscope.trace's functions on the values it hands over; its outputs and gradients unchanged.
    Over 11 steps (more than the 8 rows its quantiles sort at once) and 37 (split among threads, where there are
    several: from 16 steps, native.cpp's kSteps)."""
    if native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    module = _module(("lstm", {}), dtype=dtype)
    x = torch.randn(steps, 4, 3, dtype=dtype)
    h0, c0 = torch.randn(4, 5, dtype=dtype), torch.randn(4, 5, dtype=dtype)
    results = []
    for norms_only in (False, True):
        sink = _Sink(norms_only)
        out, h_n, c_n = _run(module, x, h0, c0, reverse, sink)
        grads = torch.autograd.grad(_loss(out, h_n, c_n), list(module.parameters()))
        results.append((sink, out, grads))
    (full, full_out, full_grads), (summary, out, grads) = results
    assert not full.stats and set(summary.stats) == {*GATE_NAMES["lstm"], "h", "c", "grad_h", "grad_c"}
    torch.testing.assert_close(out, full_out, rtol=0, atol=0)
    for a, b in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (gates, c), ((_, grad_h, grad_c),) = summary.values[0], summary.grads
    tol = TOL[dtype]
    for name, values in (("h", out), ("c", c), ("grad_h", grad_h), ("grad_c", grad_c)):
        torch.testing.assert_close(summary.stats[name], trace.norm_stats(values), **tol, equal_nan=True)
    ranges = [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-1.0, 1.0)]  # the gates in the kernel's order: o, i, f, g
    expected = trace.gates_stats(gates.permute(2, 0, 1, 3), ranges)
    for name, index in zip(GATE_NAMES["lstm"], GATE_ORDER["lstm"], strict=True):
        torch.testing.assert_close(summary.stats[name], expected[index], **tol)


@pytest.mark.parametrize("steps", [15, 16, 17, 40])
def test_compiled_statistics_split_among_threads_are_one_thread_s(steps):
    """Each step's statistics are its own: with the steps split among two threads (from 16 steps, native.cpp's
    kSteps), norm_stats' and gates_stats' are one thread's, bit for bit. (The LSTM kernel's, split the same way, are
    checked against trace's functions above: its values themselves may round differently on other threads.)"""
    if native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    torch.manual_seed(1)
    values, gates = torch.randn(steps, 6, 7), torch.rand(3, steps, 6, 9)
    values[3, 2] = float("nan")
    ranges = [(0.0, 1.0), (-1.0, 1.0), None]
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            runs.append(
                (trace.norm_stats(values), trace.stats_of_norms(values[..., 0].abs()), trace.gates_stats(gates, ranges))
            )
    finally:
        torch.set_num_threads(threads)
    for split, one in zip(*runs, strict=True):
        torch.testing.assert_close(split, one, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("reached", [(0, 1), (0,), (1,)], ids=["out_and_h_n", "out", "h_n"])
@pytest.mark.parametrize("case", CASES[:2], ids=_id)
def test_the_rnn_hands_over_only_norms_where_asked_with_the_same_gradients(case, reverse, reached):
    module = _module(case)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    results = []
    for norms_only in (False, True):
        sink = _Sink(norms_only)
        out, h_n, _ = _run(module, x, h0, None, reverse, sink)
        loss = _loss(*[v if i in reached else None for i, v in enumerate((out, h_n))])
        grads = torch.autograd.grad(loss, [h0, *module.parameters()])
        results.append((sink.grads[0], grads))
    (full, full_grads), (norms, norms_grads) = results
    torch.testing.assert_close(norms[1], torch.linalg.vector_norm(full[1], dim=-1), **TOL[torch.float64])
    torch.testing.assert_close(norms[0], full[0], **TOL[torch.float64])
    for a, b in zip(norms_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("block_steps", [1, 3])
@pytest.mark.parametrize("norms_only", [False, True], ids=["full", "norms"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES[:2], ids=_id)
def test_the_rnn_backward_in_blocks_of_steps_is_the_whole_sequence_s(
    case, reverse, norms_only, block_steps, monkeypatch
):
    module = _module(case)
    x = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    leaves = [x, h0, *module.parameters()]
    results = []
    for elements in (x.shape[0] * 4 * 5, block_steps * 4 * 5):  # one block of all 7 steps, then 7 / block_steps
        monkeypatch.setattr(kernels, "_BLOCK_ELEMENTS", elements)
        sink = _Sink(norms_only)
        out, h_n, _ = _run(module, x, h0, None, reverse, sink)
        grads = torch.autograd.grad(_loss(out, h_n), leaves)
        results.append((sink.grads[0], grads))
    (whole, whole_grads), (blocks, block_grads) = results
    expected_out, expected_hn = module(x.flip(0) if reverse else x, h0[None])
    expected = torch.autograd.grad(_loss(expected_out.flip(0) if reverse else expected_out, expected_hn[0]), leaves)
    for a, b, c in zip(block_grads, whole_grads, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
        torch.testing.assert_close(a, c, **TOL[torch.float64])
    for a, b in zip(blocks[:2], whole[:2], strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.fixture
def fresh_build(monkeypatch):
    """``native``'s build looked up anew, and forgotten afterwards (the next lookup finds the cached build)."""
    native._build.cache_clear()
    yield
    native._build.cache_clear()


def test_the_compiled_loops_build_and_apply_to_float32_and_float64_on_the_cpu():
    """In CI they must build (a compiler and ninja are installed there); elsewhere a machine may lack them."""
    ops = native.ops(torch.zeros(1))
    if ops is None:
        assert os.environ.get("CI") != "true", "the compiled loops did not build in CI"
        pytest.skip("the compiled loops do not build on this machine")
    assert native.ops(torch.zeros(1, dtype=torch.float64)) is ops
    assert native.ops(torch.zeros(1, dtype=torch.bfloat16)) is None
    assert native.ops(torch.zeros(1, device="meta")) is None


def test_gradscope_native_0_skips_the_build(fresh_build, monkeypatch, recwarn):
    monkeypatch.setenv("GRADSCOPE_NATIVE", "0")
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("built although GRADSCOPE_NATIVE=0"))
    assert native.ops(torch.zeros(1)) is None
    assert not recwarn.list


def test_each_processor_and_flags_get_their_own_build(fresh_build, monkeypatch, tmp_path):
    """Built with -march=native, a build must never be found in a cache shared with a processor of other
    instructions; the same processor (whatever its clock) finds its own again. GRADSCOPE_NATIVE_CFLAGS's flags are
    the compiler's last, and name a build of their own."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(native, "_CPUINFO", cpuinfo)

    def name(flags: str, mhz: str = "3000.0") -> str:
        core = f"model name\t: EPYC\nflags\t\t: fpu sse2 avx2 {flags}\ncpu MHz\t\t: {mhz}\n"
        cpuinfo.write_text(f"processor\t: 0\n{core}\nprocessor\t: 1\n{core}")
        return native._build_name(native._flags())

    assert name("avx512f") == name("avx512f", mhz="1499.9")
    assert name("avx512f") != name("")
    plain = name("")
    assert re.fullmatch(r"gradscope_native_[0-9a-f]{16}", plain)
    monkeypatch.setenv("GRADSCOPE_NATIVE_CFLAGS", " -mno-avx512f  -O2 ")
    flags = native._flags()
    assert flags[-2:] == ["-mno-avx512f", "-O2"] and name("") != plain
    cpuinfo.unlink()  # no /proc (macOS, Windows): the platform's machine and processor name it
    assert native._build_name(flags).startswith("gradscope_native_")
    loaded = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: loaded.append((kw["name"], kw["extra_cflags"])))
    native.ops(torch.zeros(1))
    assert len(loaded) == 1 and loaded[0][0] == native._build_name(flags)
    assert loaded[0][1][: len(flags)] == flags  # then OpenMP's, where torch has it


def test_a_failed_build_warns_once_and_the_lstm_runs_on_torch_s_operations(fresh_build, monkeypatch):
    def fail(**kw):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cpp_extension, "load", fail)
    case = ("lstm", {})
    with pytest.warns(RuntimeWarning, match=r"could not be built \(RuntimeError: Ninja is required .*\); LSTMs"):
        _compare(case, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compare(case, True)  # looked up once: no second warning


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_the_compiled_lstm_saturates_and_propagates_nan_as_torch_s(dtype, monkeypatch):
    """Pre-activations of ±1e4 (gates at 0 and 1, tanh at ±1) and a NaN in one sequence: the same outputs and
    gradients as torch.nn, NaN where torch.nn has NaN (float32's sigmoid and tanh are the kernel's own)."""
    if native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    module = _module(("lstm", {}), dtype=dtype)
    x = torch.randn(6, 3, 3, dtype=dtype) * torch.tensor([1.0, 1e4, 1.0], dtype=dtype)[:, None]
    x[2, 2, 1] = float("nan")
    h0, c0 = torch.zeros(3, 5, dtype=dtype), torch.zeros(3, 5, dtype=dtype)
    for leaf in (x, h0, c0):
        leaf.requires_grad_()
    leaves = [x, h0, c0, *module.parameters()]
    out, (h_n, c_n) = module(x, (h0[None], c0[None]))
    expected = [out, h_n[0], c_n[0], *torch.autograd.grad(out[:, :2].sum() + h_n[0, :2].sum(), leaves)]
    got = list(_run(module, x, h0, c0))
    got += torch.autograd.grad(got[0][:, :2].sum() + got[1][:2].sum(), leaves)
    assert torch.isnan(got[0][2:, 2]).all() and not torch.isnan(got[0][:, :2]).any()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], equal_nan=True)


def test_wide_lstms_take_their_step_products_through_onednn_with_torch_nn_s_results(monkeypatch):
    """From M = 512 (float32), without forcing: the choice is made in both directions, and the results are
    torch.nn's."""
    if native.ops(torch.zeros(1)) is None or not native.onednn(torch.zeros(1)):
        pytest.skip("the compiled loops or torch's oneDNN are not on this machine")
    chosen = []
    choose = kernels._steps_onednn
    monkeypatch.setattr(kernels, "_steps_onednn", lambda x, width: chosen.append(choose(x, width)) or chosen[-1])
    width = kernels._ONEDNN_WIDTH
    torch.manual_seed(0)
    module = torch.nn.LSTM(width, width)
    x = torch.randn(5, 2, width, requires_grad=True)
    h0, c0 = torch.randn(2, width), torch.randn(2, width)
    leaves = [x, *module.parameters()]
    out, (h_n, c_n) = module(x, (h0[None], c0[None]))
    expected = [out, h_n[0], c_n[0], *torch.autograd.grad(_loss(out, h_n[0], c_n[0]), leaves)]
    got = list(_run(module, x, h0, c0))
    got += torch.autograd.grad(_loss(*got), leaves)
    assert chosen == [True, True]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's, on setting the flags
def test_onednn_takes_only_float32_on_the_cpu_where_torch_has_it_enabled():
    assert not native.onednn(torch.zeros(1, dtype=torch.float64))
    assert not native.onednn(torch.zeros(1, dtype=torch.bfloat16))
    assert not native.onednn(torch.zeros(1, device="meta"))
    assert native.onednn(torch.zeros(1)) == torch.backends.mkldnn.is_available()
    with torch.backends.mkldnn.flags(enabled=False):
        assert not native.onednn(torch.zeros(1))
    assert not kernels._steps_onednn(torch.zeros(1), kernels._ONEDNN_WIDTH - 1)


def test_the_compiled_lstm_refuses_onednn_products_in_float64():
    ops = native.ops(torch.zeros(1, dtype=torch.float64))
    if ops is None:
        pytest.skip("the compiled loops do not build on this machine")
    gates, w_hh, state = torch.zeros(2, 1, 4, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64), None
    h, c, tanh_c, state = (torch.zeros(2, 1, 1, dtype=torch.float64) for _ in range(4))
    with pytest.raises(RuntimeError, match="through oneDNN in float32 only, got Double"):
        ops.lstm_forward(gates, w_hh, state[0], state[0], h, c, tanh_c, False, None, [], [], True)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(("shape", "width"), [((7, 3, 1), 12), ((4, 5, 8), 2), ((0, 3, 8), 4), ((3, 2, 9), 1)])
def test_projections_are_the_product_whichever_library_takes_them(shape, width, bias):
    """``_project`` (oneDNN in float32 on the CPU, where torch has it) against float64's BLAS; x also strided."""
    torch.manual_seed(0)
    x = torch.randn(*shape[:2], 2 * shape[2])[..., ::2]  # every other column: not contiguous
    weight, b = torch.randn(width, shape[2]), torch.randn(width) if bias else None
    expected = x.double() @ weight.double().t() + (0 if b is None else b.double())
    got = kernels._project(x, weight, b)
    assert got.shape == (*shape[:2], width) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(kernels._project(x, weight, b).double(), expected, **TOL[torch.float32])


@pytest.mark.parametrize("onednn", [False, True], ids=["tiles", "onednn"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("batch", "width"), [(9, 16), (13, 20), (6, 4), (8, 32), (3, 16), (5, 48), (7, 144), (40, 16)])
def test_the_compiled_lstm_splits_its_batch_among_threads_with_torch_nn_s_results(
    batch, width, dtype, reverse, onednn, monkeypatch
):
    """Widths whose products take the tiles (where the build has them; AVX-512's: 4M and M multiples of 16, or 4M
    only; M = 48 and 144: products deeper than a block of 128 of w's rows, columns in 64s and 16s; AVX2's, in 48s,
    24s and 8s, in the build without AVX-512 that a test below runs) or, forced, oneDNN
    (float32), and batches split among two threads or not: torch.nn's outputs and gradients, and the same on one
    thread."""
    if native.ops(torch.zeros(1)) is None:
        pytest.skip("the compiled loops do not build on this machine")
    if onednn:
        if dtype == torch.float64 or not native.onednn(torch.zeros(1)):
            pytest.skip("oneDNN takes float32, where torch has it")
        monkeypatch.setattr(kernels, "_ONEDNN_WIDTH", 1)
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, width, dtype=dtype)
    x = torch.randn(6, batch, 3, dtype=dtype, requires_grad=True)
    h0, c0 = (torch.randn(batch, width, dtype=dtype, requires_grad=True) for _ in range(2))
    leaves = [x, h0, c0, *module.parameters()]
    out, (h_n, c_n) = module(x.flip(0) if reverse else x, (h0[None], c0[None]))
    outputs = [out.flip(0) if reverse else out, h_n[0], c_n[0]]
    expected = outputs + list(torch.autograd.grad(_loss(*outputs), leaves))
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            got = list(_run(module, x, h0, c0, reverse))
            runs.append(got + list(torch.autograd.grad(_loss(*got), leaves)))
    finally:
        torch.set_num_threads(threads)
    for a, b, one in zip(runs[0], expected, runs[1], strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
        torch.testing.assert_close(a, one, **TOL[dtype])


@pytest.mark.parametrize("onednn", [False, True], ids=["tiles", "onednn"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    ("batch", "width", "inputs"), [(9, 16, 1), (5, 48, 8), (6, 64, 20), (3, 5, 3), (7, 144, 64), (48, 16, 3)]
)
def test_the_compiled_lstm_backward_adds_up_the_parameters_gradients_with_its_tiles(
    batch, width, inputs, reverse, onednn
):
    """float32 with the tiles (AVX-512's, or AVX2's), whichever way the step products go: the kernel writes dL/dx_t = da_t W_ih, and
    sum_t x_t^T da_t, sum_t da_t^T h_{t-1} (h0 before the first step run) and da summed over steps and rows, each
    thread adding up its rows, a block of steps at a time (B 48: blocks of 2 and 5 steps, and what is left); x may be
    strided (here batch first, transposed). In float64 (or without the tiles) it writes none of them and says so."""
    ops = native.ops(torch.zeros(1))
    if ops is None:
        pytest.skip("the compiled loops do not build on this machine")
    if onednn and not native.onednn(torch.zeros(1)):
        pytest.skip("torch's oneDNN is not on this machine")
    torch.manual_seed(0)
    steps = 7
    gates = torch.rand(steps, batch, 4 * width)  # gate values: any in (0, 1) will do
    c, tanh_c, h = (torch.randn(steps, batch, width) for _ in range(3))
    h0, c0, w_hh, w_ih = (
        torch.randn(*shape) for shape in ((batch, width),) * 2 + ((4 * width, width), (4 * width, inputs))
    )
    x = torch.randn(batch, steps, inputs).transpose(0, 1)
    grad_out = torch.randn(steps, batch, width)

    def backward(dtype, first_only=False):
        dh, dc = grad_out.to(dtype, copy=True), torch.empty(steps, batch, width, dtype=dtype)
        da = torch.empty(*((batch,) if first_only else (steps, batch)), 4 * width, dtype=dtype)
        outputs = [
            torch.full(shape, float("nan"), dtype=dtype)
            for shape in (x.shape, (inputs, 4 * width), w_hh.shape, (4 * width,))
        ]
        saved = (v.to(dtype) for v in (gates, c, tanh_c, c0, w_hh))
        given = (v.to(dtype) for v in (x, w_ih, h, h0))
        wrote = ops.lstm_backward(*saved, None, dh, dc, da, reverse, None, onednn, *given, *outputs)
        return wrote, da, outputs

    tiles = _has_tiles()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        wrote, da, outputs = backward(torch.float32)
        torch.set_num_threads(1)
        wrote_one, _, outputs_one = backward(torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert wrote == wrote_one == tiles == ops.tiles(torch.float32)
    assert not ops.tiles(torch.float64)
    if not tiles:
        pytest.skip("the build has no tiles: these are left to torch's products")
    # da [B, 4M]: the kernel keeps each step's da for its block of steps only, and hands back the first step's
    assert backward(torch.float32, first_only=True)[0]
    for n in (2, 1):
        torch.set_num_threads(n)
        try:
            _, da_first, outputs_kept = backward(torch.float32, first_only=True)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(da_first, da[-1 if reverse else 0])
        for got, kept in zip(outputs if n == 2 else outputs_one, outputs_kept, strict=True):
            assert torch.equal(got, kept)
    before = torch.cat([h[1:], h0[None]]) if reverse else torch.cat([h0[None], h[:-1]])
    da = da.double()
    expected = [
        da @ w_ih.double(),
        torch.einsum("tbd,tbr->dr", x.double(), da),
        torch.einsum("tbr,tbm->rm", da, before.double()),
        da.sum((0, 1)),
    ]
    for got, one, want in zip(outputs, outputs_one, expected, strict=True):
        scale = dict(rtol=1e-5, atol=1e-5 * want.abs().max().item())  # float32 sums of many terms
        torch.testing.assert_close(got.double(), want, **scale)
        torch.testing.assert_close(one.double(), got.double(), **scale)
    if not onednn:  # where the kernel does not take them, it leaves them as they were and says so
        wrote, _, outputs = backward(torch.float64)
        assert wrote is False and all(v.isnan().all() for v in outputs)
        with pytest.raises(RuntimeError, match="has no tiles for Double in this build: it writes every step's da"):
            backward(torch.float64, first_only=True)


def _has_tiles() -> bool:
    """Whether the build should have the tiles: on x86 with AVX2 or AVX-512 (and FMA, as torch's AVX2 kernels)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def test_a_build_without_avx512_takes_avx2_s_tiles_with_the_same_results(tmp_path):
    """On an AVX-512 CPU, the compiled LSTM's tests run again in a build with AVX2's tiles
    (GRADSCOPE_NATIVE_CFLAGS=-mno-avx512f), in a process of its own (one build per process): the tiles taken
    (tiles(float32), and the gradients written in the loop), with torch.nn's results."""
    ops = native.ops(torch.zeros(1))
    if ops is None or torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("a build without AVX-512 tells something new only where the CPU has it")
    check = tmp_path / "check.py"
    check.write_text(
        "import torch\nfrom gradscope import native\n"
        "assert native.ops(torch.zeros(1)).tiles(torch.float32), 'no tiles in the AVX2 build'\n"
    )
    env = {**os.environ, "GRADSCOPE_NATIVE_CFLAGS": "-mno-avx512f"}
    run = subprocess.run([sys.executable, str(check)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider", __file__, "-k", "not avx2"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200, cwd=Path(__file__).parent)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    passed = re.search(r"\b(\d+) passed", run.stdout.strip().splitlines()[-1])
    assert passed and int(passed[1]) > 200 and "no tiles" not in run.stdout, run.stdout[-2000:]


def test_the_compiled_lstm_backward_refuses_gradients_it_cannot_write_by_name():
    ops = native.ops(torch.zeros(1))
    if ops is None:
        pytest.skip("the compiled loops do not build on this machine")
    steps, batch, width, inputs = 3, 2, 4, 5
    gates, da = torch.rand(steps, batch, 4 * width), torch.empty(steps, batch, 4 * width)
    c, tanh_c, h, dh, dc = (torch.randn(steps, batch, width) for _ in range(5))
    c0, h0, w_hh, w_ih = torch.randn(batch, width), torch.randn(batch, width), torch.randn(16, 4), torch.randn(16, 5)
    x, grad_x = torch.randn(steps, batch, inputs), torch.empty(steps, batch, inputs)
    saved = (gates, c, tanh_c, c0, w_hh, None, dh, dc, da, False, None, False)
    with pytest.raises(RuntimeError, match="takes x, w_ih and grad_x together"):
        ops.lstm_backward(*saved, None, w_ih, h, h0, grad_x)
    with pytest.raises(RuntimeError, match="takes h and h0 with grad_w_hh"):
        ops.lstm_backward(*saved, x, w_ih, None, None, grad_x, None, torch.empty(16, 4))
    with pytest.raises(RuntimeError, match=r"writes grad_w_hh as \[16, 4\], got \[4, 16\]"):
        ops.lstm_backward(*saved, x, w_ih, h, h0, grad_x, None, torch.empty(4, 16))
    with pytest.raises(
        RuntimeError, match=r"takes w_ih \[16, 5\] and grad_x shaped as x, got \[16, 5\] and \[3, 2, 4\]"
    ):
        ops.lstm_backward(*saved, x, w_ih, h, h0, torch.empty(steps, batch, 4))
    with pytest.raises(
        RuntimeError, match=r"writes da \[3, 2, 16\], or \[2, 16\] with grad_x and its tiles, got \[2, 16\]"
    ):
        ops.lstm_backward(*saved[:8], torch.empty(batch, 16), *saved[9:])
    with pytest.raises(RuntimeError, match=r"takes x \[3, 2, D\] on the CPU in the gates' dtype, got \[2, 3, 5\]"):
        ops.lstm_backward(*saved, x.transpose(0, 1), w_ih, h, h0, grad_x)
