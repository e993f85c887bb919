"""Recording per-step BPTT gradients and gate values of the recurrent layers inside any model.

How the gradients are captured depends on how the layer ran (see :mod:`gradscope.layers`). Every way
gives, for each step, the total derivative :math:`\\partial L / \\partial h_t` through time (output and
recurrence together), what ``retain_grad()`` on ``h_t`` gives in an unrolled loop, and likewise
:math:`\\partial L / \\partial c_t` and :math:`\\partial L / \\partial x_t`. No hook is ever placed on a
user's module, parameter or tensor; values are never changed.

- The input (unrolled loop, torch's CPU loop): where it requires grad (a deeper layer's, say), the layer
  runs on a view of it whose gradient is :math:`\\partial L / \\partial x_t`; otherwise it adds a zero
  *probe* (a scalar leaf that requires grad, expanded to the input's shape) to its input once, and the
  probe's gradient is that. A fused kernel's wider probe (below) gives it too.
- The unrolled loop: one hook on each ``h_t`` (and ``c_t``) the loop computes, which receives the
  gradient summed over all its uses.
- torch's RNN and GRU kernels on the CPU: these are themselves a loop of autograd operations whose output
  is the stack of the steps' states, so a pre-hook on the autograd node that made each ``h_t`` receives
  the same total gradient. A small RNN instead gets every step's gradient from one hook on the split of
  its input projection (see :class:`_ProjectionGradients`), and the GRU's gates are copied from the
  values its graph saved. The recording checks each structure it relies on (one node per step, the last
  also making ``h_n``; the nodes around each step) and otherwise uses the probe input below, or
  recomputes the gates.
- A fused kernel (oneDNN's LSTM, cuDNN): there is no per-step state to hook. The kernel runs instead on the
  input extended by a zero probe :math:`p_t` of width M, with ``weight_ih`` extended by :math:`W_{hh}`,
  so that :math:`p`'s gradient is :math:`e_t = W_{hh}^T \\partial L / \\partial a_t` (:math:`a_t` the gate
  pre-activations). With :math:`g_t` the gradient arriving at output t (a hook on the output), the total
  gradients follow in time order:

  - RNN, LSTM: :math:`\\partial L / \\partial h_{t-1} = g_{t-1} + e_t`;
  - LSTM: :math:`\\partial L / \\partial c_{t-1} = \\partial L / \\partial h_{t-1} \\odot o_{t-1} \\odot
    (1 - \\tanh^2 c_{t-1}) + f_t \\odot \\partial L / \\partial c_t`, an elementwise reverse scan;
  - GRU: :math:`W_{hn}` enters :math:`n_t` scaled by :math:`r_t` and :math:`h_{t-1}` also reaches
    :math:`h_t` directly through :math:`z_t`, so :math:`\\partial L / \\partial h_{t-1} = g_{t-1} + e_t +
    z_t \\odot \\delta_t + W_{hn}^T ((r_t - 1) \\odot (1 - z_t) \\odot (1 - n_t^2) \\odot \\delta_t)`
    with :math:`\\delta_t = \\partial L / \\partial h_t`, a reverse scan with one M×M product a step.

- gradscope's own sequence ops (:mod:`gradscope.kernels`), which record on the CPU with ``path="auto"``:
  each op's forward hands over every step's gates (and :math:`c_t`), its backward every step's total
  gradients.

Otherwise gates (and the LSTM's :math:`c_t` where a kernel ran) are recomputed from the recorded states
with batched matmuls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

from gradscope.cells import GATE_NAMES, input_projection
from gradscope.kernels import GATE_ORDER
from gradscope.layers import GRU, LSTM, PATHS, RNN, RecurrentLayer, Step
from gradscope.trace import (
    KEEP_GATE,
    NORM_QUANTITIES,
    LayerSummary,
    LayerTrace,
    Trace,
    gates_stats,
    norm_stats,
    stats_of_norms,
)

__all__ = ["DETAILS", "Recorder", "instrument", "record"]

DETAILS = ("full", "summary")
_SWAPS: dict[type, type] = {nn.RNN: RNN, nn.GRU: GRU, nn.LSTM: LSTM}
_SINK = "_gradscope_sink"
# values per block of steps computed at once: gates recomputed (full detail: 16 MiB in float32), or
# gates and gradients reduced to statistics (summary detail: small, so that its peak memory stays low)
_BLOCK_VALUES = {"full": 1 << 22, "summary": 1 << 18}
# summary detail, the RNN's batched products (:class:`_ProjectionGradients`): smaller blocks, as an RNN's
# graph is small (one [B, M] state saved a step). At B·M = 2048, T = 100 (1 and 2 layers), blocks of 2^18
# values raised a summary-recorded training step's peak memory by 21-34 %, blocks of 2^16 by under 1 %, the
# time the same within noise; the GRU's per-step hooks with 2^16 kept their peak (1.00) and were 0.02-0.08
# slower (all measured on a 2-core CPU)
_PRODUCT_BLOCK_VALUES = 1 << 16
# torch's CPU RNN loop: up to this many multiply-adds a step (B·M²), batched products recover every step's
# gradient from one hook more cheaply than a hook on each step does; beyond it, per-step hooks cost less
# (both measured on a 2-core CPU: B=32 and 64, M=64 to 512)
_PRODUCTS_PER_STEP = 1 << 20


def _linear_scan(b: Tensor, a: Tensor, reverse: bool, doubling: bool | None = None) -> Tensor:
    """Solve :math:`x_t = b_t + a_t \\odot x_{t-1}` along dim 0 (with ``reverse``, :math:`x_{t+1}`) from
    :math:`x = b` at the step run first; ``a`` ``[T - 1, ...]`` holds the other steps' coefficients (rows 1 ..
    T - 1, with ``reverse`` 0 .. T - 2). On the CPU a step at a time, in place in ``b``; elsewhere (a GPU), or
    with ``doubling``, by recursive doubling: ⌈log₂ T⌉ rounds of whole-sequence operations instead of T kernel
    launches (its partial products associate differently: the same sums to rounding). Returns x.
    """
    steps = b.shape[0]
    if doubling is None:
        doubling = b.device.type != "cpu"
    if not doubling:
        for t in range(steps - 2, -1, -1) if reverse else range(1, steps):
            b[t].addcmul_(a[t if reverse else t - 1], b[t + 1 if reverse else t - 1])
        return b
    # after the round of span k, x_t sums the terms of k steps and c_t multiplies the k coefficients
    # that reach the step k further on (rows 0 .. T-1-k; forward: rows k .. T-1)
    x, c, k = b, a, 1
    while k < steps:
        n = steps - k
        if reverse:
            x = torch.cat([torch.addcmul(x[:n], c, x[k:]), x[n:]])
        else:
            x = torch.cat([x[:k], torch.addcmul(x[k:], c, x[:n])])
        if 2 * k < steps:
            c = c[: n - k] * c[k:] if reverse else c[k:] * c[: n - k]
        k *= 2
    return x


def _scan_coefficients(cell: str, gates: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """What the fused path's reverse scans need from the gates (and the LSTM's ``c``), time order.

    LSTM: :math:`(f_t, o_t \\odot (1 - \\tanh^2 c_t))`; GRU: :math:`(z_t, (r_t - 1) \\odot (1 - z_t)
    \\odot (1 - n_t^2))`.
    """
    if cell == "lstm":
        return gates["forget"], gates["output"] * (1 - torch.tanh(gates["c"]).square())
    r, z, n = gates["reset"], gates["update"], gates["candidate"]
    return z, (r - 1) * (1 - z) * (1 - n.square())


class _FusedGradients:
    """Turns the gradients around one fused call into its record's per-step gradients.

    Only the hooks of that call's autograd graph hold it, so what it keeps lives no longer than the graph;
    the summary mode's scan coefficients (two ``[T, B, M]`` tensors) go after the first backward.
    """

    def __init__(self, record: _LayerRecord) -> None:
        self.record = record
        self.arriving: dict[str, Tensor] = {}
        self.coefficients: tuple[Tensor, Tensor] | None = None  # time order; None: from the full trace

    def arrive(self, name: str, grad: Tensor | None) -> None:
        """Hook on the op's output, ``h_n`` and ``c_n``: the gradient arriving there from the rest of the model
        (None, from cuDNN's node, where the loss does not reach that output: then nothing arrives)."""
        if grad is not None:
            self.arriving[name] = grad.detach()

    def on_input_grad(self, grad: Tensor) -> None:
        """Hook on the probed input ``[x_t, p_t]``, which fires after the op's backward: all is known now."""
        record = self.record
        _, _, (_, w_hh, _, _), _, direction = record._inputs
        width = w_hh.shape[1]
        grad = grad.detach()
        arriving, self.arriving = self.arriving, {}
        # run order from here on: a backward direction ran on the reversed sequence
        dh = arriving["out"].clone() if "out" in arriving else torch.zeros_like(grad[..., -width:])
        dh[:-1] += grad[1:, :, -width:]
        if "h_n" in arriving:
            dh[-1] += arriving["h_n"][0]
        dc = None
        if record.cell != "rnn":
            if record.detail == "summary" and self.coefficients is None:
                warnings.warn(
                    f"a second backward ran through the recorded pass of {record.key}; on the fused path "
                    "summary statistics of its gradients describe the first backward only",
                    stacklevel=2,
                )
                return
            keep, scale = self.coefficients or record._full_scan_coefficients()
            self.coefficients = None  # summary mode: freed now, even while the user keeps the outputs
            if direction == "backward":
                keep, scale = keep.flip(0), scale.flip(0)
            if record.cell == "lstm":
                dc = dh * scale
                if "c_n" in arriving:
                    dc[-1] += arriving["c_n"][0]
                dc = _linear_scan(dc, keep[1:], reverse=True)
            else:
                w_hn = w_hh[2 * width :]
                for t in range(dh.shape[0] - 2, -1, -1):
                    dh[t].addcmul_(keep[t + 1], dh[t + 1]).addmm_(scale[t + 1] * dh[t + 1], w_hn)
        in_time_order = (lambda v: v.flip(0)) if direction == "backward" else (lambda v: v.contiguous())
        record._on_grad("grad_x", in_time_order(grad[..., :-width]))
        record._on_grad("grad_h", in_time_order(dh))
        if dc is not None:
            record._on_grad("grad_c", in_time_order(dc))


class _ProjectionGradients:
    """torch's CPU RNN loop: every step's total :math:`\\partial L / \\partial h_t` from one hook and batched products.

    The gradient of step t's slice of the input projection is :math:`\\delta_t = \\partial L / \\partial a_t`, the
    pre-activation's, so :math:`\\partial L / \\partial h_{t-1} = g_{t-1} + W_{hh}^T \\delta_t` with :math:`g` the
    gradient arriving at the output (and at ``h_n`` for the last step). A pre-hook on the node that splits
    the projection receives every :math:`\\delta_t` at once, after the loop's backward; hooks on the output
    and ``h_n`` receive :math:`g` before it. Summary detail reduces a block of steps at a time.
    """

    def __init__(self, record: _LayerRecord, direction: str) -> None:
        self.record = record
        self.direction = direction
        self.arriving: dict[str, Tensor] = {}

    def arrive(self, name: str, grad: Tensor) -> None:
        """Hook on the op's output or ``h_n``: the gradient arriving there from the rest of the model."""
        self.arriving[name] = grad.detach()

    def on_split(self, grad_outputs: tuple[Tensor | None, ...]) -> None:
        """Pre-hook on the split of the input projection: :math:`\\delta_t` of every step, run order."""
        arriving, self.arriving = self.arriving, {}
        out, h_n = arriving.get("out"), arriving.get("h_n")
        reached = [d for d in grad_outputs if d is not None] or [v for v in (out, h_n) if v is not None]
        if not reached:
            return
        steps, (batch, width) = len(grad_outputs), reached[0].shape[-2:]
        w_hh = self.record._inputs[2][1].to(reached[0].dtype)  # under autocast, the gradients' dtype is lower
        norms = self.record.detail == "summary"
        size = max(1, _PRODUCT_BLOCK_VALUES // (batch * width)) if norms else steps
        blocks = []
        with torch.no_grad():
            unreached = reached[0].new_zeros(batch, width)  # a step's delta where no gradient reached it
            for lo in range(0, steps, size):
                hi = min(lo + size, steps)
                dh = (
                    out[lo:hi].clone(memory_format=torch.contiguous_format)
                    if out is not None
                    else reached[0].new_zeros(hi - lo, batch, width)
                )
                following = [unreached if d is None else d for d in grad_outputs[lo + 1 : hi + 1]]
                if following:
                    k = len(following)
                    dh[:k].view(k * batch, width).addmm_(torch.stack(following).view(k * batch, width), w_hh)
                if hi == steps and h_n is not None:
                    dh[-1] += h_n[0]
                blocks.append(torch.linalg.vector_norm(dh, dim=-1) if norms else dh)
        grad = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        self.record._on_grad("grad_h", grad.flip(0) if self.direction == "backward" else grad, norms=norms)


class _StepGradients:
    """The total gradient of one state (``h`` or ``c``) at every step, each caught by a hook on that step.

    The hooks are on the loop's own ``h_t`` / ``c_t`` (unrolled path) or on the autograd node that made
    each ``h_t`` (torch's CPU loop). Backward reaches the first step run last: its hook stacks the steps,
    in time order, for the record (a step no gradient reached is zero). Summary detail keeps only each
    step's norms over features, taken a block of steps at a time. Only the hooks hold this, so it lives
    no longer than the autograd graph.
    """

    def __init__(self, record: _LayerRecord, quantity: str, steps: int, direction: str) -> None:
        self.record = record
        self.quantity = quantity
        self.norms = record.detail == "summary"
        self.last = 0 if direction == "forward" else steps - 1
        self.rows: list[Tensor | None] = [None] * steps
        self.unreduced: list[int] = []  # summary detail: steps whose row is still the gradient

    def at(self, t: int, grad: Tensor | None) -> None:
        """The total gradient of step ``t``'s state (None: none reached it in this backward)."""
        if grad is not None:
            self.rows[t] = grad.detach()
            if self.norms:
                self.unreduced.append(t)
                if len(self.unreduced) * grad.numel() >= _BLOCK_VALUES["summary"]:
                    self._reduce()
        if t == self.last:
            self._reduce()
            rows, self.rows = self.rows, [None] * len(self.rows)
            reached = [row for row in rows if row is not None]
            if reached:
                zero = torch.zeros_like(reached[0])
                stacked = torch.stack([zero if row is None else row for row in rows])
                self.record._on_grad(self.quantity, stacked, norms=self.norms)

    def at_node_output(self, t: int, output: int, grad_outputs: tuple[Tensor | None, ...]) -> None:
        """A pre-hook on the autograd node whose output number ``output`` is step ``t``'s state."""
        self.at(t, grad_outputs[output])

    def _reduce(self) -> None:
        if self.unreduced:
            norms = torch.linalg.vector_norm(torch.stack([self.rows[t] for t in self.unreduced]), dim=-1)  # type: ignore[misc]
            for t, row in zip(self.unreduced, norms.unbind(0), strict=True):
                self.rows[t] = row
            self.unreduced = []


def _input_node(parent: Node | None, index: int, name: str) -> Node | None:
    """The autograd node behind input ``index`` of ``parent`` if it is named ``name``, else None.

    A node's Python class has the node's name; reading it is much cheaper than calling ``name()``.
    """
    edges = () if parent is None else parent.next_functions
    found = edges[index][0] if index < len(edges) else None
    return found if type(found).__name__ == name else None


def _projection_split(steps: list[Node]) -> Node | None:
    """The node that splits torch's CPU RNN loop's input projection into steps, given each step's node, run order.

    ATen projects the whole input at once and unbinds it; step ``i`` computes :math:`\\phi(W_{hh} h + b_{hh}
    + \\text{projection}_i)`. None unless every step's node is an activation of such a sum whose second
    input is output ``i`` of one shared unbind node.
    """
    split = None
    for i, node in enumerate(steps):
        activation = type(node).__name__ in ("TanhBackward0", "ReluBackward0")
        add = _input_node(node, 0, "AddBackward0") if activation else None
        if add is None or _input_node(add, 1, "UnbindBackward0") is None:
            return None
        found, output = add.next_functions[1]
        if output != i or (split is not None and found is not split):
            return None
        split = found
    return split


def _saved_gru_gates(node: Node, shape: torch.Size) -> tuple[Tensor, ...] | None:
    """``(r_t, z_t, n_t)`` as torch's CPU GRU step saved them for backward, from the node that made ``h_t``.

    ATen's GRU cell computes :math:`h_t = (h_{t-1} - n_t) z_t + n_t` with :math:`n_t = \\tanh(i_n + (W_{hn}
    h_{t-1} + b_{hn}) r_t)`, and its sigmoid and tanh nodes keep their results. None unless the graph has
    exactly that shape and the three values are ``[B, M]`` (``shape``).
    """
    mul_z, tanh = _input_node(node, 0, "MulBackward0"), _input_node(node, 1, "TanhBackward0")
    sigmoid_z = _input_node(mul_z, 1, "SigmoidBackward0")
    sigmoid_r = _input_node(_input_node(_input_node(tanh, 0, "AddBackward0"), 1, "MulBackward0"), 1, "SigmoidBackward0")
    if type(node).__name__ != "AddBackward0" or sigmoid_z is None or sigmoid_r is None or tanh is None:
        return None
    gates = tuple(n._saved_result for n in (sigmoid_r, sigmoid_z, tanh))  # type: ignore[attr-defined]
    return gates if all(g.shape == shape for g in gates) else None


class _LayerRecord:
    """Collects one layer-direction of one pass: values at forward time, gradients from hooks."""

    def __init__(
        self,
        key: tuple[str, int, str],
        cell: str,
        gate_ranges: dict[str, tuple[float, float] | None],
        detail: str,
    ) -> None:
        self.key = key
        self.cell = cell
        self.gate_ranges = gate_ranges
        self.detail = detail
        self.values: dict[str, Tensor] = {}  # time-major [T, B, F]; reduced to [T, 5] in summary mode
        self.gates: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.shape: tuple[int, int] = (0, 0)
        self._inputs: tuple = ()  # (h0, c0, weights, step, direction) from the forward pass
        self._derived = False
        self._fused: _FusedGradients | None = None  # between probe_input and store, for a fused kernel
        self._saved_gates: list[tuple[Tensor, ...]] | None = None  # per step, from torch's GRU graph until derived
        self._given: tuple[Tensor, Tensor | None] | None = None  # a kernel's gates [T, B, G, M] (and c) until derived
        self._given_stats: dict[str, Tensor] = {}  # summary statistics a kernel computed, by quantity, until taken

    def probe_x(self, x: Tensor) -> Tensor:
        """What the layer runs on instead of ``x`` ``[T, B, D]``: its gradient becomes ``grad_x``.

        Where ``x`` requires grad (a deeper layer's input, say), a view of it: the view's gradient is what
        this layer alone sends back to ``x``, and nothing is copied in forward. Otherwise ``x`` plus a zero
        probe, a scalar leaf expanded to ``x``'s shape, whose gradient is the full ``[T, B, D]`` tensor
        (the sum is a copy of ``x``; a first layer's input is narrow). ``x`` itself when autograd is off
        (no_grad / inference mode), where values are still recorded.
        """
        if not torch.is_grad_enabled():
            return x
        if x.requires_grad:
            view = x.view_as(x)
            # the first layer's input is the user's: autograd may hand the gradient's memory on to its .grad.
            # A deeper layer's input is the layer below's output, whose nodes make new tensors from it.
            view.register_hook(partial(self._on_grad, "grad_x", shared=self.key[1] == 0))
            return view
        zero = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        p = zero.expand(x.shape)
        p.register_hook(partial(self._on_grad, "grad_x"))
        return x + p

    def state_hooks(self, steps: int, direction: str, cell_state: bool) -> Callable[[int, Tensor, Tensor | None], None]:
        """Unrolled path: ``watch(t, h_t, c_t)`` hooks step ``t``'s states for ``grad_h`` (and ``grad_c``).

        Call it on every step the loop computes; it does nothing when autograd is off.
        """
        if not torch.is_grad_enabled():
            return lambda t, h, c: None
        grad_h = _StepGradients(self, "grad_h", steps, direction)
        grad_c = _StepGradients(self, "grad_c", steps, direction) if cell_state else None

        def watch(t: int, h: Tensor, c: Tensor | None) -> None:
            h.register_hook(partial(grad_h.at, t))
            if grad_c is not None and c is not None:
                c.register_hook(partial(grad_c.at, t))

        return watch

    def watch_steps(self, out: Tensor, h_n: Tensor, direction: str) -> bool:
        """torch's CPU loop: hook its graph for ``grad_h`` (and, for the GRU, copy out the gates it saved).

        ``out`` ``[T, B, M]`` and ``h_n`` ``[1, B, M]`` as the op returned them, in run order. A pre-hook on
        the autograd node of every step's state, or, for a small enough RNN, one on the split of its input
        projection (:class:`_ProjectionGradients`). True when ``out`` is the stack of one node per step,
        the last of which also makes ``h_n``; otherwise (another kernel) nothing is hooked and False is
        returned.
        """
        stack, final = out.grad_fn, h_n.grad_fn
        if stack is None or final is None or stack.name() != "StackBackward0" or final.name() != "StackBackward0":
            return False
        edges, steps = stack.next_functions, out.shape[0]
        nodes = [node for node, _ in edges]
        if len(edges) != steps or None in nodes or len(set(nodes)) != steps or final.next_functions != edges[-1:]:
            return False
        small = self.cell == "rnn" and h_n.shape[1] * h_n.shape[2] ** 2 <= _PRODUCTS_PER_STEP
        split = _projection_split(nodes) if small else None  # walked only where it would be used
        if split is not None:
            gradients = _ProjectionGradients(self, direction)
            split.register_prehook(gradients.on_split)
            out.register_hook(partial(gradients.arrive, "out"))
            h_n.register_hook(partial(gradients.arrive, "h_n"))
            return True
        grad_h = _StepGradients(self, "grad_h", steps, direction)
        for i, (node, output) in enumerate(edges):
            t = i if direction == "forward" else steps - 1 - i
            node.register_prehook(partial(grad_h.at_node_output, t, output))
        if self.cell == "gru":
            gates = [_saved_gru_gates(node, h_n.shape[1:]) for node in nodes]
            if None not in gates:
                self._saved_gates = gates if direction == "forward" else gates[::-1]  # type: ignore[assignment]
        return True

    def probe_input(self, x: Tensor, width: int) -> Tensor:
        """Fused kernel: ``x`` ``[T, B, D]`` extended by a zero probe of ``width`` columns, ``[T, B, D + width]``.

        Its gradient becomes ``grad_x``, ``grad_h`` and ``grad_c`` once the op's backward has run (see the
        module docstring). Only with autograd on.
        """
        zero = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        probed = torch.cat([x, zero.expand(*x.shape[:-1], width)], dim=-1)
        self._fused = _FusedGradients(self)
        probed.register_hook(self._fused.on_input_grad)
        return probed

    def watch_outputs(self, out: Tensor, h_n: Tensor, c_n: Tensor | None) -> None:
        """Fused kernel: hook the outputs (``[T, B, M]``, states ``[1, B, M]``) for the gradients arriving there."""
        if self._fused is None:
            return
        for name, tensor in (("out", out), ("h_n", h_n), ("c_n", c_n)):
            if tensor is not None and tensor.requires_grad:
                tensor.register_hook(partial(self._fused.arrive, name))

    @property
    def norms_only(self) -> bool:
        """For a kernel: summary detail keeps only the norms of ``grad_h``."""
        return self.detail == "summary"

    def on_kernel_values(self, gates: Tensor | None, c: Tensor | None, stats: dict[str, Tensor] | None = None) -> None:
        """A :mod:`gradscope.kernels` op's forward: its gates and the LSTM's ``c``, kept instead of recomputed (and
        summary statistics it computed, taken instead of computing them)."""
        self._given = None if gates is None else (gates, c)
        self._given_stats.update(stats or {})

    def on_kernel_grads(
        self, grad_x: Tensor, grad_h: Tensor, grad_c: Tensor | None, stats: dict[str, Tensor] | None = None
    ) -> None:
        """A :mod:`gradscope.kernels` op's backward: every step's total gradients, time order (and statistics)."""
        self._given_stats.update(stats or {})
        self._on_grad("grad_x", grad_x, shared=self.key[1] == 0)  # it is also the input's gradient
        self._on_grad("grad_h", grad_h, norms=grad_h.dim() == 2)
        if grad_c is not None:
            self._on_grad("grad_c", grad_c)

    def _norm_stats(self, quantity: str, values: Tensor, norms: bool = False) -> Tensor:
        """Summary statistics of ``values`` ``[T, B, F]`` (with ``norms``, their norms ``[T, B]``): a kernel's where
        it computed them."""
        given = self._given_stats.pop(quantity, None)
        if given is not None:
            return given
        return stats_of_norms(values) if norms else norm_stats(values)

    def _full_scan_coefficients(self) -> tuple[Tensor, Tensor]:
        self._derive(reduce=False)
        return _scan_coefficients(self.cell, {**self.gates, "c": self.values.get("c")})

    def _on_grad(self, quantity: str, grad: Tensor, norms: bool = False, shared: bool = False) -> None:
        """A gradient ``[T, B, F]`` in time order (summary detail: or, with ``norms``, its norms ``[T, B]``).

        ``shared``: autograd passes ``grad`` on, and may hand the same memory to a user's ``.grad``
        (which the user may change in place); full detail keeps a copy.
        """
        grad = grad.detach()
        if self.detail == "summary":
            if quantity in self.grads:
                warnings.warn(
                    f"a second backward ran through the recorded pass of {self.key}; summary "
                    "statistics of its gradients describe the latest backward only",
                    stacklevel=2,
                )
            self.grads[quantity] = self._norm_stats(quantity, grad, norms)
        elif quantity in self.grads:
            self.grads[quantity] = self.grads[quantity] + grad  # as .grad accumulates
        else:
            self.grads[quantity] = grad.clone() if shared else grad

    def store(
        self,
        x: Tensor,
        h: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
        step: Step,
        direction: str,
    ) -> None:
        """Keep what the forward pass computed, time-major: input ``x`` ``[T, B, D]``, states ``h`` ``[T, B, M]``.

        Gates and LSTM cell states are not copied out of the loop: they are recomputed from ``x``,
        ``h``, the initial state and a copy of the weights, for all steps at once, when the trace is
        first read (full detail) or right away to be reduced (summary detail).
        """
        self.shape = (h.shape[1], h.shape[0])
        self.values = {"x": x.detach(), "h": h.detach()}
        with torch.no_grad():
            frozen = tuple(None if w is None else w.detach().clone() for w in weights)
        self._inputs = (h0.detach(), None if c0 is None else c0.detach(), frozen, step, direction)
        fused, self._fused = self._fused, None
        if self.detail == "full":
            if self._saved_gates is not None or self._given is not None:  # taken now: backward frees them
                self._derive(reduce=False)
            return
        scans = fused is not None and self.cell != "rnn"
        coefficients = self._derive(reduce=True, scan_coefficients=scans)
        if scans:
            fused.coefficients = coefficients  # type: ignore[union-attr]
        self.values = {q: v if q == "c" else self._norm_stats(q, v) for q, v in self.values.items()}
        if self.cell in KEEP_GATE:
            self.gates["keep"] = self.gates[KEEP_GATE[self.cell]]

    def _derived_blocks(self) -> Iterator[tuple[Tensor | tuple[Tensor, ...], Tensor | None]]:
        """The G gates in :data:`GATE_NAMES` order, each ``[n, B, M]`` (copied from torch's graph: stacked in
        one ``[G, n, B, M]`` tensor), and the LSTM's c ``[n, B, M]`` (else None), a block of n steps at a
        time, in the order run.

        Where torch's GRU loop ran, its gates are stacked from the values its graph saved (in full detail
        as one block). Otherwise they are recomputed from the recorded x and h: each block is one batched
        cell call over as many steps as hold about ``_BLOCK_VALUES`` gate values for the detail, which keeps
        temporaries small (and large fresh allocations are slow). For the LSTM, :math:`c_t = f_t \\odot
        c_{t-1} + i_t \\odot g_t` is then scanned (:func:`_linear_scan`). (Where a :mod:`gradscope.kernels` op
        ran, :meth:`_from_kernel` takes its values instead.)
        """
        h0, c0, (w_ih, w_hh, b_ih, b_hh), step, direction = self._inputs
        x, h = self.values["x"], self.values["h"]
        steps, batch, width = h.shape
        names = GATE_NAMES[self.cell]
        saved = self._saved_gates
        # on a GPU summary detail too takes full detail's blocks: each block costs launches, memory is not short
        values = _BLOCK_VALUES["full" if h.device.type != "cpu" else self.detail]
        size = max(1, values // (batch * width * max(1, len(names))))
        size = steps if saved is not None and self.detail == "full" else size
        starts = range(0, steps, size)
        c_prev = c0
        with torch.no_grad():
            for lo in starts if direction == "forward" else reversed(starts):
                hi = min(lo + size, steps)
                n = hi - lo
                if saved is not None:
                    values = [gates[k] for k in range(len(names)) for gates in saved[lo:hi]]
                    yield torch.stack(values).view(len(names), n, batch, width), None
                    continue
                if direction == "forward":
                    h_prev = h[lo - 1 : hi - 1] if lo > 0 else torch.cat([h0[None], h[: hi - 1]])
                else:
                    h_prev = h[lo + 1 : hi + 1] if hi < steps else torch.cat([h[lo + 1 :], h0[None]])
                gi = input_projection(x[lo:hi], w_ih, b_ih).reshape(n * batch, -1)
                c_any = None if c0 is None else h_prev.new_zeros(n * batch, width)
                _, _, gates = step(gi, h_prev.reshape(n * batch, width), c_any, w_hh, b_hh)
                block = {name: g.reshape(n, batch, width) for name, g in zip(names, gates, strict=True)}
                c = None
                if c0 is not None:
                    forget, first = block["forget"], 0 if direction == "forward" else n - 1
                    update = block["input"] * block["cell"]
                    update[first].addcmul_(forget[first], c_prev)
                    if direction == "forward":
                        c = _linear_scan(update, forget[1:], reverse=False)
                    else:
                        c = _linear_scan(update, forget[:-1], reverse=True)
                    c_prev = c[n - 1 - first]
                yield tuple(block.values()), c

    def _derive(self, reduce: bool, scan_coefficients: bool = False) -> tuple[Tensor, Tensor] | None:
        """Set ``gates`` (and ``values["c"]``) in time order, as ``[T, B, M]`` tensors or, with
        ``reduce``, as their ``[T, 5]`` statistics. Runs once; later calls do nothing.

        With ``scan_coefficients``, also returns the fused path's :func:`_scan_coefficients`, unreduced.
        """
        names = GATE_NAMES[self.cell]
        if self._derived or not names:  # the RNN has nothing to derive
            self._derived = True
            return None
        if self._given is not None:
            self._from_kernel(*self._given, reduce)
            return None
        forward = self._inputs[4] == "forward"
        ranges = [self.gate_ranges[name] for name in names]
        parts: dict[str, list[Tensor]] = {}
        for gates, c in self._derived_blocks():
            if scan_coefficients:
                block = dict(zip(names, gates, strict=True)) | {"c": c}
                for name, value in zip(("_keep", "_scale"), _scan_coefficients(self.cell, block), strict=True):
                    parts.setdefault(name, []).append(value)
            if reduce:  # all gates' statistics at once
                stacked = gates if isinstance(gates, Tensor) else torch.stack(gates)
                parts.setdefault("_stats", []).append(gates_stats(stacked, ranges))
            else:
                for name, value in zip(names, gates, strict=True):
                    parts.setdefault(name, []).append(value)
            if c is not None:
                parts.setdefault("c", []).append(norm_stats(c) if reduce else c)
        self._derived = True
        self._saved_gates = None
        derived = {
            name: p[0] if len(p) == 1 else torch.cat(p if forward else p[::-1], dim=1 if name == "_stats" else 0)
            for name, p in parts.items()
        }
        if "c" in derived:
            self.values["c"] = derived.pop("c")
        coefficients = (derived.pop("_keep"), derived.pop("_scale")) if scan_coefficients else None
        self.gates = dict(zip(names, derived.pop("_stats"), strict=True)) if reduce else derived
        return coefficients

    def _from_kernel(self, gates: Tensor, c: Tensor | None, reduce: bool) -> None:
        """:meth:`_derive` from a kernel's gates ``[T, B, G, M]`` and ``c``: views of them, or their statistics
        over the whole sequence at once (they exist already: no blocks, no copies)."""
        names, order = GATE_NAMES[self.cell], GATE_ORDER[self.cell]
        if reduce and all(name in self._given_stats for name in names):
            self.gates = {name: self._given_stats.pop(name) for name in names}
        elif reduce:
            in_kernel_order = [name for _, name in sorted(zip(order, names, strict=True))]
            stats = gates_stats(gates.permute(2, 0, 1, 3), [self.gate_ranges[name] for name in in_kernel_order])
            self.gates = {name: stats[k] for k, name in zip(order, names, strict=True)}
        else:
            self.gates = {name: gates[:, :, k] for k, name in zip(order, names, strict=True)}
        if c is not None:
            self.values["c"] = self._norm_stats("c", c) if reduce else c
        self._derived = True
        self._given = None

    def snapshot(self) -> LayerTrace | LayerSummary:
        module, layer, direction = self.key
        if self.detail == "summary":
            batch, steps = self.shape
            norms = {**self.values, **self.grads}
            stats = {q: norms[q] for q in NORM_QUANTITIES if q in norms} | self.gates
            return LayerSummary(module, layer, direction, self.cell, batch, steps, stats)

        self._derive(reduce=False)

        def batch_first(v: Tensor | None) -> Tensor | None:
            return None if v is None else v.transpose(0, 1)

        return LayerTrace(
            module=module,
            layer=layer,
            direction=direction,
            cell=self.cell,
            x=batch_first(self.values["x"]),
            h=batch_first(self.values["h"]),
            c=batch_first(self.values.get("c")),
            grad_x=batch_first(self.grads.get("grad_x")),
            grad_h=batch_first(self.grads.get("grad_h")),
            grad_c=batch_first(self.grads.get("grad_c")),
            gates={name: v.transpose(0, 1) for name, v in self.gates.items()},
            gate_ranges=dict(self.gate_ranges),
            h0=self._inputs[0],
            c0=self._inputs[1],
            weights=self._inputs[2],
            step=self._inputs[3],
        )


class Recorder:
    """The object ``with gradscope.record(model) as rec`` gives: every recorded pass, in order.

    A new pass (a new :class:`Trace`) starts when a recorded module runs forward again; a model that
    calls the same recurrent module twice in one forward therefore produces two traces.
    """

    def __init__(self, detail: str, path: str | None = None) -> None:
        self.detail = detail
        self.path = path
        self.traces: list[Trace] = []
        self._modules_in_trace: set[str] = set()

    @property
    def trace(self) -> Trace:
        """The latest pass."""
        if not self.traces:
            raise RuntimeError("nothing was recorded yet: run a forward pass of the model inside the record() block")
        return self.traces[-1]

    def to_frame(self) -> pd.DataFrame:
        """Every pass as one long-form DataFrame: :data:`gradscope.trace.FRAME_COLUMNS` plus ``pass``."""
        frames = [trace.to_frame().assign(**{"pass": i}) for i, trace in enumerate(self.traces)]
        if not frames:
            raise RuntimeError("nothing was recorded: run a forward pass inside the record() block")
        frame = pd.concat(frames, ignore_index=True)
        return frame[["pass", *frame.columns[:-1]]]

    def _begin(self, name: str, layer: RecurrentLayer) -> tuple[str | None, Callable[[int, str], _LayerRecord]]:
        if not self.traces or name in self._modules_in_trace:
            self.traces.append(Trace())
            self._modules_in_trace = set()
        self._modules_in_trace.add(name)
        trace = self.traces[-1]
        cell, ranges = layer.cell, layer.gate_ranges()

        def new_record(index: int, direction: str) -> _LayerRecord:
            record = _LayerRecord((name, index, direction), cell, ranges, self.detail)
            trace._add(record.key, record)
            return record

        return self.path, new_record


@dataclass
class _Swap:
    module: nn.Module
    original: type


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The recurrent modules to record, after checking that every one of them can be recorded."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, RecurrentLayer):
            found.append((name, module))
        elif type(module) in _SWAPS:
            if getattr(module, "proj_size", 0):
                raise ValueError(
                    f"module {name!r} is an nn.LSTM with proj_size={module.proj_size}, which gradscope "
                    "does not support; use proj_size=0 followed by an nn.Linear on the outputs"
                )
            found.append((name, module))
        elif isinstance(module, nn.RNNBase):
            warnings.warn(
                f"module {name!r} is a subclass of {type(module).__bases__[0].__name__} "
                f"({type(module).__name__}) with a forward of its own; it is not recorded",
                stacklevel=3,
            )
    return found


def _swap_in(module: nn.Module) -> _Swap | None:
    """Turn a torch.nn recurrent module into the matching gradscope layer, in place, sharing everything."""
    if isinstance(module, RecurrentLayer):
        return None
    original = type(module)
    module.__class__ = _SWAPS[original]
    return _Swap(module, original)


@contextmanager
def record(model: nn.Module, detail: str = "full", path: str | None = None) -> Iterator[Recorder]:
    """Record every recurrent layer inside ``model`` while the block runs.

    gradscope layers are recorded as they are; ``torch.nn.RNN``, ``GRU`` and ``LSTM`` modules become the
    matching gradscope layer for the duration of the block (the same object, with the same Parameters)
    and are restored on exit, also when the block raises.

    Args:
        model: any ``nn.Module``; the root itself may be a recurrent layer.
        detail: ``"full"`` keeps every tensor of :class:`~gradscope.trace.LayerTrace`; ``"summary"``
            keeps per-step reductions over the batch (:class:`~gradscope.trace.LayerSummary`), so what
            it keeps does not grow with the batch size (the pass itself still holds ``[T, B, M]``
            temporaries until its backward).
        path: ``"fused"``, ``"unrolled"`` or ``"auto"`` forces that path on every layer in the block
            (see :attr:`gradscope.layers.RecurrentLayer.path`); None (the default) leaves each layer's
            own, ``"auto"`` unless set. Both paths record the same trace.

    Example::

        with gradscope.record(model) as rec:
            loss = model(x).pow(2).mean()
            loss.backward()
        rec.trace.layer().grad_h  # [B, T, M], total dL/dh_t
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"record() expects an nn.Module, got: {type(model).__name__}")
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, got: {detail!r}")
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None, got: {path!r}")
    targets = _targets(model)
    if not targets:
        raise ValueError(
            f"{type(model).__name__} contains no recurrent layer to record "
            "(gradscope RNN/GRU/LSTM or torch.nn.RNN/GRU/LSTM)"
        )
    busy = [name for name, module in targets if _SINK in vars(module)]
    if busy:
        raise RuntimeError(f"modules {busy} are already being recorded by an enclosing record() block")
    recorder = Recorder(detail, path)
    swaps: list[_Swap] = []
    try:
        for name, module in targets:
            swap = _swap_in(module)
            if swap is not None:
                swaps.append(swap)
            setattr(module, _SINK, partial(recorder._begin, name))
        yield recorder
    finally:
        for _, module in targets:
            vars(module).pop(_SINK, None)
        for swap in swaps:
            swap.module.__class__ = swap.original


def instrument(model: nn.Module) -> nn.Module:
    """Turn every torch.nn.RNN/GRU/LSTM inside ``model`` (the root included) into the gradscope layer, for good.

    The modules stay the same objects with the same Parameters and state_dict; they compute the same
    outputs. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"instrument() expects an nn.Module, got: {type(model).__name__}")
    for _, module in _targets(model):
        _swap_in(module)
    return model
