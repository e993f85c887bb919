r"""gradscope's own sequence ops, for recording torch's RNN, GRU and LSTM on the CPU: one autograd node each.

On the CPU, torch's LSTM is a oneDNN kernel, in which nothing can be hooked: recording through it takes
the probe input and the gates recomputed (see :mod:`gradscope.recording`), about twice the kernel's time.
torch's RNN and GRU are a loop of autograd operations, which the recording hooks step by step, at the
cost of a Python hook per step. Each op here instead runs one layer-direction's equations (those of
:mod:`gradscope.cells` with torch's options) in a forward loop that keeps every step's gates (and
:math:`c_t`), and a backward loop with the derivatives written out, which has every step's total
:math:`\partial L / \partial h_t` (and :math:`\partial L / \partial c_t`) at hand as it goes. With
:math:`g_t` the gradient arriving at output t, :math:`a_t` the pre-activations and :math:`\delta v =
\partial L / \partial v`:

- RNN: :math:`\delta h_t = g_t + W_{hh}^T \delta a_{t+1}`, :math:`\delta a_t = \delta h_t \odot
  \phi'(a_t)`.
- GRU (reset after): :math:`\delta h_t = g_t + z_{t+1} \odot \delta h_{t+1} + W_{hh}^T [\delta a^r_{t+1},
  \delta a^z_{t+1}, r_{t+1} \odot \delta a^n_{t+1}]` with :math:`\delta a^n_t = \delta h_t \odot (1 - z_t)
  \odot (1 - n_t^2)`, :math:`\delta a^z_t = \delta h_t \odot (h_{t-1} - n_t) \odot z_t (1 - z_t)`,
  :math:`\delta a^r_t = \delta a^n_t \odot (W_{hn} h_{t-1} + b_{hn}) \odot r_t (1 - r_t)`.
- LSTM (tanh/tanh): :math:`\delta h_t = g_t + W_{hh}^T \delta a_{t+1}`, :math:`\delta c_t = \delta h_t
  \odot o_t \odot (1 - \tanh^2 c_t) + f_{t+1} \odot \delta c_{t+1}`, :math:`\delta a_t = [\delta c_t
  \odot g_t \odot i_t (1 - i_t), \delta c_t \odot c_{t-1} \odot f_t (1 - f_t), \delta c_t \odot i_t \odot
  (1 - g_t^2), \delta h_t \odot \tanh c_t \odot o_t (1 - o_t)]`.

Each step's factors of :math:`\delta h_t` or :math:`\delta c_t` are computed for all steps at once before
the backward loop, which then costs one matrix product and one to four elementwise operations a step
(RNN, GRU, LSTM: two, three and five operations; forward: two, six and seven), each on views made once
per call. The weights' gradients and :math:`\partial L / \partial x_t = W_{ih}^T \delta a_t` are batched
products over all steps; the RNN's over blocks of steps, so that its backward holds :math:`\delta a` (and,
where only norms are asked, :math:`\delta h`) for a block at a time, not the whole sequence: beside an RNN
training step's own memory, a whole-sequence buffer showed in its peak. The LSTM keeps
its rows in the order (o, i, f, g), so that one ``sigmoid_`` covers three gates, and
:math:`\tanh a = 2 \sigma(2 a) - 1` makes it cover the fourth (sigmoid costs a third of tanh on the CPU).

For float32 and float64 the LSTM's two loops run compiled (:mod:`gradscope.native`): a step is one matrix
product and one pass over its elements. At small sizes torch's calls cost more than their arithmetic, and
the loops in torch's operations, which remain for other dtypes and where the kernel cannot be built, took
1.3-2x torch.nn's LSTM.

Every op's outputs and gradients are torch.nn's (tests/test_kernels.py); none can be differentiated twice.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from gradscope.cells import GATE_NAMES
from gradscope.native import onednn
from gradscope.native import ops as native_ops
from gradscope.trace import ACTIVATION_RANGES, saturation_bounds

__all__ = ["GATE_ORDER", "Sink", "run_sequence"]

# per cell, where each gate of GATE_NAMES[cell] is in the gates an op hands over: the LSTM's are in the order
# (output, input, forget, cell); _LSTM_ROWS takes torch's rows (input, forget, cell, output) into it
GATE_ORDER: dict[str, tuple[int, ...]] = {"rnn": (), "gru": (0, 1, 2), "lstm": (1, 2, 3, 0)}
_LSTM_ROWS = (3, 0, 1, 2)
# the compiled LSTM's gates in its order (sigmoid o, i, f; tanh g): where each counts as saturated
_LSTM_SATURATION = saturation_bounds([ACTIVATION_RANGES["sigmoid"]] * 3 + [ACTIVATION_RANGES["tanh"]])
# the rows of the compiled LSTM's forward statistics: its gates in its order, then h and c
_LSTM_STATS = (*(name for _, name in sorted(zip(GATE_ORDER["lstm"], GATE_NAMES["lstm"], strict=True))), "h", "c")
# the smallest M at which the compiled LSTM's step products go through oneDNN (float32) rather than its own tiles or
# BLAS. On 2 cores (AVX-512's tiles), B 32-64, T 100, each thread's rows, the tiles' time over oneDNN's forward /
# backward: at M = 256 0.98-1.06x / 0.82-0.92x, at M = 384 0.97-0.99x / 0.97-0.99x, at M = 512 1.16-1.18x /
# 0.93-0.98x.
_ONEDNN_WIDTH = 512

Weights = tuple[Tensor, Tensor, Tensor | None, Tensor | None]

# the RNN's backward holds its pre-activations' gradient for blocks of this many elements (steps x B x M)
_BLOCK_ELEMENTS = 1 << 18


class Sink(Protocol):
    """What receives the values of one op's call: the recording of its layer-direction. All in time order."""

    norms_only: bool
    """Whether the RNN's backward may hand over only each step's norm of ∂L/∂h_t over features, ``[T, B]``
    (it then holds one step's ∂L/∂h_t at a time, not the whole sequence's)."""

    def on_kernel_values(self, gates: Tensor | None, c: Tensor | None, stats: dict[str, Tensor] | None = None) -> None:
        """Forward: the gates ``[T, B, G, M]`` (see :data:`GATE_ORDER`; None for the RNN), the LSTM's ``c``.

        ``stats`` (the compiled LSTM, where :attr:`norms_only`): the summary statistics ``[T, 5]`` of some
        quantities (``"h"``, ``"c"``, the gate names), computed by the op as it ran: those of
        :func:`~gradscope.trace.norm_stats` and :func:`~gradscope.trace.gates_stats`."""

    def on_kernel_grads(
        self, grad_x: Tensor, grad_h: Tensor, grad_c: Tensor | None, stats: dict[str, Tensor] | None = None
    ) -> None:
        """Backward: the total gradients of ``x`` ``[T, B, D]``, ``h`` (and the LSTM's ``c``) ``[T, B, M]``
        (``h``'s: its norms ``[T, B]`` where :attr:`norms_only`, from the RNN); ``stats`` as in
        :meth:`on_kernel_values` (``"grad_h"``, ``"grad_c"``)."""


def run_sequence(
    cell: str, x: Tensor, h0: Tensor, c0: Tensor | None, weights: Weights, reverse: bool, sink: Sink, relu: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer-direction of torch's ``cell`` over a sequence: ``(out, h_n, c_n)``, ``out`` ``[T, B, M]``.

    ``x`` ``[T, B, D]``, states ``[B, M]`` (``c0`` the LSTM's, else None), weights in torch's layout
    (biases both None without bias); ``reverse`` runs the steps from the last to the first (a backward
    direction), every tensor staying in time order; ``relu``: the RNN's nonlinearity.
    """
    if cell == "lstm":
        return LSTMSequence.apply(x, h0, c0, *weights, reverse, sink)
    if cell == "gru":
        out, h_n = GRUSequence.apply(x, h0, *weights, reverse, sink)
    else:
        out, h_n = RNNSequence.apply(x, h0, *weights, relu, reverse, sink)
    return out, h_n, None


def _run_order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _project(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:math:`W x_t (+ b)` for all steps at once, ``[T, B, D]`` → ``[T, B, R]`` with ``weight`` ``[R, D]``."""
    flat = x.reshape(-1, x.shape[-1])
    if onednn(flat) and flat.numel() > 0:
        # on the CPU oneDNN measured 1.2-3.5x faster than torch's BLAS here, most for dL/dx_t, [T B, 4M] x [4M, D]
        out = torch.ops.mkldnn._linear_pointwise(flat.contiguous(), weight.contiguous(), bias, "none", [], "")
    else:
        out = flat.mm(weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
    return out.view(*x.shape[:2], weight.shape[0])


def _steps_onednn(x: Tensor, width: int) -> bool:
    """Whether the compiled LSTM's step products go through oneDNN (see native.cpp's ``Recurrent``)."""
    return width >= _ONEDNN_WIDTH and onednn(x)


def _start(grad_out: Tensor | None, grad_hn: Tensor | None, h: Tensor, reverse: bool) -> Tensor:
    """The gradient arriving at each step's state from outside the recurrence (a new tensor, added to in place)."""
    dh = h.new_zeros(h.shape) if grad_out is None else grad_out.clone(memory_format=torch.contiguous_format)
    if grad_hn is not None:
        dh[0 if reverse else -1] += grad_hn
    return dh


def _input_weight_grad(x: Tensor, d: Tensor) -> Tensor:
    r""":math:`\sum_t \delta_t x_t^T` for ``x`` ``[T, B, D]`` and ``d`` ``[T, B, R]``: ``[R, D]``."""
    # [D, T*B] @ [T*B, R]: for a narrow input several times faster than the transposed product
    return x.reshape(-1, x.shape[-1]).t().mm(d.reshape(-1, d.shape[-1])).t()


def _recurrent_weight_grad(
    h0: Tensor, h: Tensor, d: Tensor, reverse: bool, low: int = 0, *, copies: bool = False
) -> Tensor:
    r""":math:`\sum_t \delta_t h_{t-1}^T` over the steps ``low .. low + len(d) - 1`` that ``d`` holds (all by
    default), :math:`h_{t-1}` the state before step t as run: ``[R, M]``. With ``copies``, oneDNN may take the
    product on copies of ``d`` and the states in its layout: faster, and as much memory again as they take."""
    high = low + d.shape[0]
    first = h.shape[0] - 1 if reverse else 0
    if reverse:  # before step t: h[t + 1], or h0 for the last step (run first)
        before = h[low + 1 : high + 1]
        inner = d[: before.shape[0]]
    else:
        before = h[max(low - 1, 0) : high - 1]
        inner = d[d.shape[0] - before.shape[0] :]
    if copies and onednn(d) and d.numel() > 0:
        # oneDNN's inner product's weight gradient: 0.5-0.7x BLAS's time at M = 64-512 (B 32, T 100-256, 2 cores),
        # the copies included. Beside the RNN's and GRU's small training steps the copies showed in the peak memory
        # (summary-recorded step d1/d0 up to 2.1 and 1.6, at 23ed4b6): the LSTM's only. h0 in its place.
        if low <= first < high:
            before = torch.cat([before, h0[None]] if reverse else [h0[None], before])
        flat_d, flat_h = d.reshape(-1, d.shape[-1]).contiguous(), before.reshape(-1, h.shape[-1]).contiguous()
        like = flat_d.new_empty(flat_d.shape[1], flat_h.shape[1])  # the weight: torch's op takes its dtype
        return torch.ops.aten.mkldnn_linear_backward_weights(flat_d.to_mkldnn(), flat_h.to_mkldnn(), like, False)[0]
    grad = inner.reshape(-1, d.shape[-1]).t().mm(before.reshape(-1, h.shape[-1]))
    return grad.addmm_(d[first - low].t(), h0) if low <= first < high else grad


def _accumulate(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total.add_(part)


def _both_biases(grad: Tensor | None, needs: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """One gradient for two biases that add up: each its own tensor (autograd may hand either to a ``.grad``)."""
    if grad is None:
        return None, None
    return grad if needs[0] else None, (grad.clone() if needs[0] else grad) if needs[1] else None


def _rows(weight: Tensor, order: tuple[int, ...]) -> Tensor:
    """``weight`` ``[4M, ...]`` with its four blocks of rows taken in ``order`` (a copy)."""
    chunks = weight.chunk(4)
    return torch.cat([chunks[k] for k in order])


class RNNSequence(torch.autograd.Function):
    """torch's RNN, tanh or relu: ``apply(x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, sink)`` → ``(out, h_n)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        relu: bool,
        reverse: bool,
        sink: Sink,
    ) -> tuple[Tensor, Tensor]:
        h = _project(x, w_ih, None if b_ih is None or b_hh is None else b_ih + b_hh)
        hs, w_t = h.unbind(0), w_hh.t()
        h_prev = h0
        for t in _run_order(h.shape[0], reverse):
            h_prev = hs[t].addmm_(h_prev, w_t)
            h_prev = h_prev.relu_() if relu else h_prev.tanh_()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, w_ih, w_hh, h)
        ctx.relu, ctx.reverse, ctx.sink, ctx.bias = relu, reverse, sink, b_ih is not None  # type: ignore[attr-defined]
        sink.on_kernel_values(None, None)
        return h, h_prev.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None) -> tuple[Tensor | None, ...]:
        x, h0, w_ih, w_hh, h = ctx.saved_tensors
        steps, batch, width = h.shape
        reverse, norms_only, needs = ctx.reverse, ctx.sink.norms_only, ctx.needs_input_grad
        arriving = [None] * steps if grad_out is None else grad_out.unbind(0)
        # dh: every step's (or, norms only, its norms, each step's dh then in one [B, M] buffer)
        dh = h.new_empty(h.shape[:2] if norms_only else h.shape)
        dhs = [h.new_empty(h.shape[1:])] * steps if norms_only else dh.unbind(0)
        grad_x = x.new_empty(x.shape)
        grad_w_ih = grad_w_hh = grad_b = None
        after = None  # da of the step run after this one
        # in blocks of steps, run order reversed: da = dh * phi'(a) is held a block at a time
        order = list(reversed(_run_order(steps, reverse)))
        block = max(1, _BLOCK_ELEMENTS // (batch * width))
        for start in range(0, steps, block):
            times = order[start : start + block]
            low, high = min(times), max(times) + 1
            h_block = h[low:high]
            # phi' from phi's value: 1 - h^2, or 1 where h > 0; then, in place, da itself
            da = (h_block > 0).to(h.dtype) if ctx.relu else torch.addcmul(h.new_ones(()), h_block, h_block, value=-1)
            das = da.unbind(0)
            for t in times:
                target = dhs[t]
                if after is None:
                    target.copy_(arriving[t]) if arriving[t] is not None else target.zero_()
                    if grad_hn is not None:
                        target.add_(grad_hn)
                elif arriving[t] is None:
                    torch.mm(after, w_hh, out=target)
                else:
                    torch.addmm(arriving[t], after, w_hh, out=target)
                if norms_only:
                    torch.linalg.vector_norm(target, dim=-1, out=dh[t])
                after = das[t - low].mul_(target)
            torch.mm(da.view(-1, width), w_ih, out=grad_x[low:high].view(-1, x.shape[-1]))
            if needs[2]:
                grad_w_ih = _accumulate(grad_w_ih, _input_weight_grad(x[low:high], da))
            if needs[3]:
                grad_w_hh = _accumulate(grad_w_hh, _recurrent_weight_grad(h0, h, da, reverse, low))
            if ctx.bias:
                grad_b = _accumulate(grad_b, da.sum((0, 1)))
        ctx.sink.on_kernel_grads(grad_x, dh, None)
        return (
            grad_x if needs[0] else None,
            after.mm(w_hh) if needs[1] else None,
            grad_w_ih,
            grad_w_hh,
            *_both_biases(grad_b, needs[4:6]),
            None,
            None,
            None,
        )


class GRUSequence(torch.autograd.Function):
    """torch's GRU (reset after): ``apply(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, sink)`` → ``(out, h_n)``.

    The gates it hands over are ``[T, B, 3, M]``: r, z, n.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        reverse: bool,
        sink: Sink,
    ) -> tuple[Tensor, Tensor]:
        steps, batch, _ = x.shape
        width = w_hh.shape[1]
        bias = b_ih is not None and b_hh is not None
        # b_hr and b_hz add to the projection; b_hn is scaled by r with W_hn h
        b_in = torch.cat([b_ih[: 2 * width] + b_hh[: 2 * width], b_ih[2 * width :]]) if bias else None  # type: ignore[index]
        gates = _project(x, w_ih, b_in).view(steps, batch, 3, width)
        h, recurrent_n = x.new_empty(steps, batch, width), x.new_empty(steps, batch, width)  # W_hn h_{t-1} + b_hn
        flat = gates.view(steps, batch, 3 * width)
        rz = flat[:, :, : 2 * width].unbind(0)
        r, z, n = (gates[:, :, k].unbind(0) for k in range(3))
        hs, recurrent_ns = h.unbind(0), recurrent_n.unbind(0)
        w_rz, w_n = w_hh[: 2 * width].t(), w_hh[2 * width :].t()
        h_prev = h0
        for t in _run_order(steps, reverse):
            rz[t].addmm_(h_prev, w_rz).sigmoid_()
            if bias:
                torch.addmm(b_hh[2 * width :], h_prev, w_n, out=recurrent_ns[t])  # type: ignore[index]
            else:
                torch.mm(h_prev, w_n, out=recurrent_ns[t])
            n[t].addcmul_(r[t], recurrent_ns[t]).tanh_()
            h_prev = torch.lerp(n[t], h_prev, z[t], out=hs[t])  # (1 - z) n + z h
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, w_ih, w_hh, gates, recurrent_n, h)
        ctx.reverse, ctx.sink, ctx.bias = reverse, sink, bias  # type: ignore[attr-defined]
        sink.on_kernel_values(gates, None)
        return h, h_prev.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None) -> tuple[Tensor | None, ...]:
        x, h0, w_ih, w_hh, gates, recurrent_n, h = ctx.saved_tensors
        steps, batch, width = h.shape
        reverse = ctx.reverse
        first = steps - 1 if reverse else 0
        dh = _start(grad_out, grad_hn, h, reverse)
        one = h.new_ones(())
        r, z, n = gates.unbind(2)
        # d: per unit of dh, the gradients of a_r, a_z and W_hn h + b_hn (then, in place, the gradients) ...
        d = torch.empty_like(gates)
        d_r, d_z, d_hn = d.unbind(2)
        da_n = torch.addcmul(one, n, n, value=-1)
        da_n.addcmul_(da_n, z, value=-1)  # (1 - z)(1 - n^2)
        torch.addcmul(r, r, r, value=-1, out=d_r).mul_(recurrent_n).mul_(da_n)
        (torch.sub(h[1:], n[:-1], out=d_z[:-1]) if reverse else torch.sub(h[:-1], n[1:], out=d_z[1:]))
        torch.sub(h0, n[first], out=d_z[first])  # h_{t-1} - n_t
        d_z.mul_(z).addcmul_(d_z, z, value=-1)  # times z (1 - z), without a [T, B, M] temporary
        torch.mul(da_n, r, out=d_hn)
        # ... step by step from the last run
        rows = d.view(steps, batch, 3 * width).unbind(0)
        dhs, ds, dh_columns, zs = dh.unbind(0), d.unbind(0), dh[:, :, None].unbind(0), z.unbind(0)
        after = None
        for t in reversed(_run_order(steps, reverse)):
            if after is not None:
                dhs[t].addcmul_(dhs[after], zs[after]).addmm_(rows[after], w_hh)
            ds[t].mul_(dh_columns[t])
            after = t
        needs = ctx.needs_input_grad
        grad_h0 = torch.addmm(dhs[first] * zs[first], rows[first], w_hh) if needs[1] else None
        d = d.view(steps, batch, 3 * width)
        grad_w_hh = _recurrent_weight_grad(h0, h, d, reverse) if needs[3] else None
        grad_b_hh = d.sum((0, 1)) if ctx.bias and needs[5] else None
        d_hn.copy_(da_n.mul_(dh))  # d becomes the gradient of the projection: a_n's in place of W_hn h's
        grad_x = _project(d, w_ih.t(), None)
        ctx.sink.on_kernel_grads(grad_x, dh, None)
        grad_w_ih = _input_weight_grad(x, d) if needs[2] else None
        grad_b_ih = d.sum((0, 1)) if ctx.bias and needs[4] else None
        return (grad_x if needs[0] else None, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None, None)


class LSTMSequence(torch.autograd.Function):
    """torch's LSTM (tanh/tanh): ``apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sink)`` → ``(out, h_n, c_n)``.

    The gates it hands over are ``[T, B, 4, M]``: o, i, f, g.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        reverse: bool,
        sink: Sink,
    ) -> tuple[Tensor, Tensor, Tensor]:
        steps, batch, _ = x.shape
        width = w_hh.shape[1]
        w_ih, w_hh = _rows(w_ih, _LSTM_ROWS), _rows(w_hh, _LSTM_ROWS)
        bias = None if b_ih is None or b_hh is None else _rows(b_ih + b_hh, _LSTM_ROWS)
        h, c, tanh_c = (x.new_empty(steps, batch, width) for _ in range(3))
        ops = native_ops(x)
        stats = None
        if ops is None:
            gates = _lstm_forward_loop(x, h0, c0, w_ih, w_hh, bias, h, c, tanh_c, reverse)
        else:
            gates = _project(x, w_ih, bias)
            # summary detail: the statistics, computed by the kernel once its steps are
            stats = x.new_empty(6, steps, 5) if sink.norms_only else None
            ops.lstm_forward(
                gates, w_hh, h0, c0, h, c, tanh_c, reverse, stats, *_LSTM_SATURATION, _steps_onednn(x, width)
            )
            gates = gates.view(steps, batch, 4, width)
        last = 0 if reverse else -1
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gates, c, tanh_c, h)  # tanh c: kept, as it is costly
        ctx.reverse, ctx.sink, ctx.bias, ctx.ops = reverse, sink, bias is not None, ops  # type: ignore[attr-defined]
        sink.on_kernel_values(gates, c, None if stats is None else dict(zip(_LSTM_STATS, stats, strict=True)))
        return h, h[last].clone(), c[last].clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None, grad_cn: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, h0, c0, w_ih, w_hh, gates, c, tanh_c, h = ctx.saved_tensors
        steps, batch, width = h.shape
        reverse = ctx.reverse
        first = steps - 1 if reverse else 0
        dh = _start(grad_out, grad_hn, h, reverse)
        needs = ctx.needs_input_grad
        stats = grads = None
        if ctx.ops is None:
            da, dc = _lstm_backward_loop(c0, w_hh, gates, c, tanh_c, dh, grad_cn, reverse)
        else:
            # with its tiles, the kernel computes dL/dx_t and the parameters' gradients in its loop as well, and keeps
            # each step's da only while they need it: it hands back the first step's
            da = gates.new_empty(batch, 4 * width) if ctx.ops.tiles(x.dtype) else torch.empty_like(gates)
            dc = torch.empty_like(dh)
            stats = dh.new_empty(2, steps, 5) if ctx.sink.norms_only else None
            grad_x = x.new_empty(x.shape)
            grads = (
                w_ih.new_empty(w_ih.shape[1], w_ih.shape[0]) if needs[3] else None,  # transposed
                w_hh.new_empty(w_hh.shape) if needs[4] else None,
                w_hh.new_empty(w_hh.shape[0]) if ctx.bias else None,
            )
            onednn_steps, inputs = _steps_onednn(dh, width), (x, w_ih, h, h0)
            if not ctx.ops.lstm_backward(
                gates, c, tanh_c, c0, w_hh, grad_cn, dh, dc, da, reverse, stats, onednn_steps, *inputs, grad_x, *grads
            ):
                grads = None
        if grads is None:  # da holds every step's
            da = da.view(steps, batch, 4 * width)
            grad_x = _project(da, w_ih.t(), None)
            grads = (
                _input_weight_grad(x, da).t() if needs[3] else None,
                _recurrent_weight_grad(h0, h, da, reverse, copies=True) if needs[4] else None,
                da.sum((0, 1)) if ctx.bias else None,
            )
            da = da[first]
        grad_w_ih_t, grad_w_hh, grad_b = grads
        ctx.sink.on_kernel_grads(
            grad_x, dh, dc, None if stats is None else dict(zip(("grad_h", "grad_c"), stats, strict=True))
        )
        back = GATE_ORDER["lstm"]
        return (
            grad_x if needs[0] else None,
            da.mm(w_hh) if needs[1] else None,
            dc[first] * gates[first, :, 2] if needs[2] else None,
            _rows(grad_w_ih_t.t(), back) if needs[3] else None,
            _rows(grad_w_hh, back) if needs[4] else None,
            *_both_biases(None if grad_b is None else _rows(grad_b, back), needs[5:7]),
            None,
            None,
        )


def _lstm_forward_loop(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None,
    h: Tensor,
    c: Tensor,
    tanh_c: Tensor,
    reverse: bool,
) -> Tensor:
    """The LSTM's forward in torch's operations (rows o, i, f, g): writes ``h``, ``c``, ``tanh_c``; the gates."""
    steps, batch, _ = x.shape
    width = w_hh.shape[1]
    # on the cell gate's rows doubled: tanh a = 2 sigmoid(2a) - 1
    double = x.new_ones(4 * width, 1)
    double[3 * width :] = 2
    gates = _project(x, w_ih * double, None if bias is None else bias * double[:, 0]).view(steps, batch, 4, width)
    rows = gates.view(steps, batch, 4 * width).unbind(0)
    out_gate, in_gate, forget, cell = (gates[:, :, k].unbind(0) for k in range(4))
    hs, cs, tanh_cs = h.unbind(0), c.unbind(0), tanh_c.unbind(0)
    w_t = (w_hh * double).t()
    low, high = x.new_full((batch, width), -1.0), x.new_ones(batch, width)  # 0-dim ends: slower lerp
    h_prev, c_prev = h0, c0
    for t in _run_order(steps, reverse):
        rows[t].addmm_(h_prev, w_t).sigmoid_()
        torch.lerp(low, high, cell[t], out=cell[t])
        c_prev = torch.mul(in_gate[t], cell[t], out=cs[t]).addcmul_(forget[t], c_prev)
        h_prev = torch.mul(out_gate[t], torch.tanh(c_prev, out=tanh_cs[t]), out=hs[t])
    return gates


def _lstm_backward_loop(
    c0: Tensor,
    w_hh: Tensor,
    gates: Tensor,
    c: Tensor,
    tanh_c: Tensor,
    dh: Tensor,
    grad_cn: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """The LSTM's backward in torch's operations: ``dh`` (in place) the total gradients; ``(da, dc)``, ``da`` shaped
    as ``gates`` ``[T, B, 4, M]``."""
    steps, batch, width = dh.shape
    first = steps - 1 if reverse else 0
    # da: the pre-activations' gradient per unit of dh (output gate) or dc (the others) ...
    one = dh.new_ones(())
    out_gate, in_gate, forget, cell = gates.unbind(2)
    da = torch.empty_like(gates)
    sigmoids = gates[:, :, :3]
    torch.addcmul(sigmoids, sigmoids, sigmoids, value=-1, out=da[:, :, :3])
    da[:, :, 0].mul_(tanh_c)
    da[:, :, 1].mul_(cell)
    (da[:-1, :, 2] if reverse else da[1:, :, 2]).mul_(c[1:] if reverse else c[:-1])  # c_{t-1} after the first
    da[first, :, 2].mul_(c0)
    torch.addcmul(one, cell, cell, value=-1, out=da[:, :, 3]).mul_(in_gate)
    dh_dc = torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(out_gate)  # o (1 - tanh^2 c)
    # ... and in place, step by step from the last run, da itself
    dc = torch.empty_like(dh)
    rows = da.view(steps, batch, 4 * width).unbind(0)
    da_out, da_rest = da[:, :, 0].unbind(0), da[:, :, 1:].unbind(0)
    dhs, dcs, dc_columns = dh.unbind(0), dc.unbind(0), dc[:, :, None].unbind(0)
    dh_dcs, forgets = dh_dc.unbind(0), forget.unbind(0)
    after = None
    for t in reversed(_run_order(steps, reverse)):
        if after is None:
            torch.mul(dhs[t], dh_dcs[t], out=dcs[t])
            if grad_cn is not None:
                dcs[t].add_(grad_cn)
        else:
            dhs[t].addmm_(rows[after], w_hh)
            torch.mul(dhs[t], dh_dcs[t], out=dcs[t]).addcmul_(forgets[after], dcs[after])
        da_rest[t].mul_(dc_columns[t])
        da_out[t].mul_(dhs[t])
        after = t
    return da, dc
