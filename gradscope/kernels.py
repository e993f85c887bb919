r"""gradscope's own sequence op for recording torch's LSTM on the CPU: one autograd node, both loops written out.

torch's LSTM on the CPU is a oneDNN kernel: nothing inside it can be hooked, so recording through it needs
the probe input and the gates recomputed (see :mod:`gradscope.recording`), about twice the kernel's time.
:class:`LSTMSequence` runs the same equations (:func:`gradscope.cells.lstm_step` with tanh/tanh) step by
step in its forward, which keeps every step's gates and :math:`c_t`, and its backward walks the steps back
with the derivatives written out, so every step's total :math:`\partial L / \partial h_t` and
:math:`\partial L / \partial c_t` are at hand as it goes:

.. math::
    \delta h_t &= g_t + W_{hh}^T \delta a_{t+1}, \qquad
    \delta c_t = \delta h_t \odot o_t \odot (1 - \tanh^2 c_t) + f_{t+1} \odot \delta c_{t+1} \\
    \delta a_t &= \big[\delta c_t \odot g_t \odot i_t (1 - i_t),\ \delta c_t \odot c_{t-1} \odot f_t (1 - f_t),\
    \delta c_t \odot i_t \odot (1 - g_t^2),\ \delta h_t \odot \tanh c_t \odot o_t (1 - o_t)\big]

with :math:`g_t` the gradient arriving at output t and :math:`a_t` the gate pre-activations; the weights'
gradients and :math:`\partial L / \partial x_t = W_{ih}^T \delta a_t` are then batched products over all
steps. A step costs one matrix product and six elementwise operations forward, one and four backward,
each on views made once per call. The rows are kept in the order (o, i, f, g), so that one ``sigmoid_``
covers three gates, and :math:`\tanh a = 2 \sigma(2 a) - 1` makes it cover the fourth (sigmoid costs a
third of tanh on the CPU).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["LSTMSequence", "LSTMSink"]

# the gate rows (input, forget, cell, output), torch's order and GATE_NAMES's, taken in the order used here
# (output, input, forget, cell); and back
_ORDER = (3, 0, 1, 2)
NAME_ORDER = (1, 2, 3, 0)


class LSTMSink(Protocol):
    """What receives the values of one :class:`LSTMSequence` call: the recording of its layer-direction."""

    def on_lstm_values(self, gates: Tensor, c: Tensor) -> None:
        """Forward: gates ``[T, B, 4, M]`` (the order used here) and ``c`` ``[T, B, M]``, time order."""

    def on_lstm_grads(self, grad_x: Tensor, grad_h: Tensor, grad_c: Tensor) -> None:
        """Backward: the total gradients of ``x`` ``[T, B, D]``, ``h`` and ``c`` ``[T, B, M]``, time order."""


def _rows(weight: Tensor, order: tuple[int, ...]) -> Tensor:
    """``weight`` ``[4M, ...]`` with its four blocks of rows taken in ``order`` (a copy)."""
    chunks = weight.chunk(4)
    return torch.cat([chunks[k] for k in order])


class LSTMSequence(torch.autograd.Function):
    """One layer-direction of torch's LSTM (tanh/tanh) over a whole sequence, its values handed to ``sink``.

    ``apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sink)``: ``x`` ``[T, B, D]``, states ``[B, M]``,
    weights in torch's layout (``b_ih``, ``b_hh`` both None without bias); ``reverse`` runs the steps from
    the last to the first (a backward direction), all tensors stay in time order. Returns ``(out, h_n,
    c_n)``: ``out`` ``[T, B, M]``, final states ``[B, M]``. The gradients of every input are those of
    ``torch.nn.LSTM``; it cannot be differentiated twice.
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
        sink: LSTMSink,
    ) -> tuple[Tensor, Tensor, Tensor]:
        steps, batch, _ = x.shape
        width = w_hh.shape[1]
        w_ih, w_hh = _rows(w_ih, _ORDER), _rows(w_hh, _ORDER)
        # forward runs on the cell gate's rows doubled: tanh a = 2 sigmoid(2a) - 1
        double = x.new_ones(4 * width, 1)
        double[3 * width :] = 2
        flat = x.reshape(steps * batch, -1)
        if b_ih is None or b_hh is None:
            gates = flat.mm((w_ih * double).t())
        else:
            gates = torch.addmm(_rows(b_ih + b_hh, _ORDER) * double[:, 0], flat, (w_ih * double).t())
        gates = gates.view(steps, batch, 4, width)
        h, c, tanh_c = (x.new_empty(steps, batch, width) for _ in range(3))
        rows = gates.view(steps, batch, 4 * width).unbind(0)
        out_gate, in_gate, forget, cell = (gates[:, :, k].unbind(0) for k in range(4))
        hs, cs, tanh_cs = h.unbind(0), c.unbind(0), tanh_c.unbind(0)
        w_t = (w_hh * double).t()
        low, high = x.new_full((batch, width), -1.0), x.new_ones(batch, width)  # 0-dim ends: slower lerp
        h_prev, c_prev = h0, c0
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            rows[t].addmm_(h_prev, w_t).sigmoid_()
            torch.lerp(low, high, cell[t], out=cell[t])
            c_prev = torch.mul(in_gate[t], cell[t], out=cs[t]).addcmul_(forget[t], c_prev)
            h_prev = torch.mul(out_gate[t], torch.tanh(c_prev, out=tanh_cs[t]), out=hs[t])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gates, c, tanh_c, h)  # tanh c: kept, as it is costly
        ctx.reverse, ctx.sink, ctx.bias = reverse, sink, b_ih is not None  # type: ignore[attr-defined]
        sink.on_lstm_values(gates, c)
        return h, h_prev.clone(), c_prev.clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None, grad_cn: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, h0, c0, w_ih, w_hh, gates, c, tanh_c, h = ctx.saved_tensors
        steps, batch, width = h.shape
        reverse = ctx.reverse
        first, last = (steps - 1, 0) if reverse else (0, steps - 1)  # in the order run
        dh = h.new_zeros(h.shape) if grad_out is None else grad_out.clone(memory_format=torch.contiguous_format)
        if grad_hn is not None:
            dh[last] += grad_hn
        # da: the gates' pre-activations' gradient per unit of dh (output gate) or dc (the others) ...
        one = h.new_ones(())
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
        for t in range(steps) if reverse else range(steps - 1, -1, -1):
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
        flat = da.view(steps * batch, 4 * width)
        grad_x = flat.mm(w_ih).view(steps, batch, -1)
        ctx.sink.on_lstm_grads(grad_x, dh, dc)
        needs = ctx.needs_input_grad
        grad_w_hh = grad_b = None
        # [D, T*B] @ [T*B, 4M]: for a narrow input several times faster than the transposed product
        grad_w_ih = _rows(x.reshape(steps * batch, -1).t().mm(flat).t(), NAME_ORDER) if needs[3] else None
        if needs[4]:
            inner, h_inner = (da[:-1], h[1:]) if reverse else (da[1:], h[:-1])
            grad_w_hh = torch.addmm(
                rows[first].t().mm(h0), inner.reshape(-1, 4 * width).t(), h_inner.reshape(-1, width)
            )
            grad_w_hh = _rows(grad_w_hh, NAME_ORDER)
        if ctx.bias and (needs[5] or needs[6]):
            grad_b = _rows(flat.sum(0), NAME_ORDER)
        return (
            grad_x if needs[0] else None,
            rows[first].mm(w_hh) if needs[1] else None,
            dcs[first] * forgets[first] if needs[2] else None,
            grad_w_ih,
            grad_w_hh,
            grad_b if needs[5] else None,
            grad_b.clone() if needs[6] and grad_b is not None else None,  # not one tensor for two .grad
            None,
            None,
        )
