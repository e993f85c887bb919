"""gradscope's own LSTM sequence op against torch.nn.LSTM and the independent unrolled reference."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL
from reference import unrolled

from gradscope.cells import GATE_NAMES
from gradscope.kernels import NAME_ORDER, LSTMSequence


class _Sink:
    """Keeps what the op hands over."""

    def __init__(self) -> None:
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_lstm_values(self, gates, c):
        self.values.append((gates.clone(), c.clone()))

    def on_lstm_grads(self, grad_x, grad_h, grad_c):
        self.grads.append((grad_x.clone(), grad_h.clone(), grad_c.clone()))


def _run(lstm, x, h0, c0, reverse, sink=None):
    """The op on ``lstm``'s weights (one layer): (out, h_n, c_n), states [B, M]."""
    params = list(lstm.parameters()) + ([None, None] if not lstm.bias else [])
    return LSTMSequence.apply(x, h0, c0, *params, reverse, sink or _Sink())


def _loss(out, h_n, c_n):
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(v.shape, generator=g, dtype=v.dtype) for v in (out, h_n, c_n)]
    return sum((v.sin() * w).sum() for v, w in zip((out, h_n, c_n), weights, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "x_plain"])
def test_outputs_and_every_gradient_are_torch_s(dtype, bias, reverse, x_grad):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, bias=bias, dtype=dtype)
    x = torch.randn(7, 4, 3, dtype=dtype, requires_grad=x_grad)
    h0, c0 = (torch.randn(4, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    leaves = [x, h0, c0, *lstm.parameters()] if x_grad else [h0, c0, *lstm.parameters()]

    out, (h_n, c_n) = lstm(x.flip(0) if reverse else x, (h0[None], c0[None]))
    expected = [out.flip(0) if reverse else out, h_n[0], c_n[0]]
    expected_grads = torch.autograd.grad(_loss(*expected), leaves)
    got = _run(lstm, x, h0, c0, reverse)
    got_grads = torch.autograd.grad(_loss(*got), leaves)
    for a, b in zip(got + got_grads, expected + list(expected_grads), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_sink_gets_each_step_s_gates_c_and_total_gradients(reverse):
    """Against the plain unrolled loop with retain_grad on every state: gates, c, and the total ∂L/∂h_t,
    ∂L/∂c_t, ∂L/∂x_t, in time order."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, bidirectional=reverse, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 2, 5, dtype=torch.float64), torch.randn(2, 2, 5, dtype=torch.float64)
    direction = "backward" if reverse else "forward"
    k = int(reverse)
    # the reference runs both directions; only this one's output enters the loss
    ref_out, ref_h, ref_c, steps = unrolled("lstm", lstm, x, h0[: k + 1], c0[: k + 1], {})
    ref = steps[(0, direction)]
    part = ref_out[..., 5 * k : 5 * (k + 1)]
    _loss(part, ref_h[k], ref_c[k]).backward()

    sink = _Sink()
    suffix = "_reverse" if reverse else ""
    weights = [getattr(lstm, f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    out, h_n, c_n = LSTMSequence.apply(x, h0[k], c0[k], *weights, reverse, sink)
    _loss(out, h_n, c_n).backward()

    (gates, c), ((grad_x, grad_h, grad_c),) = sink.values[0], sink.grads
    tol = TOL[torch.float64]
    for name, index in zip(GATE_NAMES["lstm"], NAME_ORDER, strict=True):
        torch.testing.assert_close(gates[:, :, index], torch.stack(ref.gates[name]).detach(), **tol)
    torch.testing.assert_close(c, torch.stack(ref.c).detach(), **tol)
    torch.testing.assert_close(grad_h, torch.stack([h.grad for h in ref.h]), **tol)
    torch.testing.assert_close(grad_c, torch.stack([v.grad for v in ref.c]), **tol)
    torch.testing.assert_close(grad_x, ref.x.grad, **tol)


def test_gradients_reach_only_some_outputs():
    """Backward gets None for an output the loss does not reach."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(2, 3, dtype=torch.float64)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    for pick in range(3):
        out, (h_n, c_n) = lstm(x)
        expected = torch.autograd.grad((out, h_n[0], c_n[0])[pick].pow(2).sum(), list(lstm.parameters()))
        got = torch.autograd.grad(_run(lstm, x, zero, zero, False)[pick].pow(2).sum(), list(lstm.parameters()))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_bias_gradients_are_two_tensors_and_a_second_backward_adds_the_same():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(2, 3, dtype=torch.float64)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    loss = _run(lstm, x, zero, zero, False)[0].sum()
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in lstm.parameters()]
    assert lstm.bias_ih_l0.grad.data_ptr() != lstm.bias_hh_l0.grad.data_ptr()
    loss.backward()
    for p, g in zip(lstm.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-14)


def test_it_cannot_be_differentiated_twice():
    lstm = torch.nn.LSTM(2, 3, dtype=torch.float64)
    x = torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(_run(lstm, x, zero, zero, False)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()
