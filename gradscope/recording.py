"""Recording per-step BPTT gradients and gate values of the recurrent layers inside any model.

How the gradients are captured: while recording, a layer adds a zero *probe* tensor (a leaf that
requires grad) to its input and to every state it computes, :math:`\\tilde h_t = h_t + p_t`, and uses
:math:`\\tilde h_t` everywhere (output and recurrence). Values are unchanged, and the gradient that
backward delivers to :math:`p_t` is exactly the total derivative :math:`\\partial L / \\partial h_t`
through time, what ``retain_grad()`` on ``h_t`` gives in an unrolled loop. One probe tensor per
quantity and direction (its steps taken with one ``unbind``) carries one tensor hook, owned by the
recording; no hook is ever placed on a user's module, parameter or tensor.
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

from gradscope.cells import GATE_NAMES, input_projection
from gradscope.layers import GRU, LSTM, RNN, RecurrentLayer, Step
from gradscope.trace import (
    KEEP_GATE,
    NORM_QUANTITIES,
    LayerSummary,
    LayerTrace,
    Trace,
    gate_stats,
    norm_stats,
)

__all__ = ["DETAILS", "Recorder", "instrument", "record"]

DETAILS = ("full", "summary")
_SWAPS: dict[type, type] = {nn.RNN: RNN, nn.GRU: GRU, nn.LSTM: LSTM}
_SINK = "_gradscope_sink"
_BLOCK = 16  # steps per batched recomputation of the gates


class _LayerRecord:
    """Collects one layer-direction of one pass: values at forward time, gradients from probe hooks."""

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

    def probe(self, quantity: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A zero tensor of ``shape`` (dtype and device of ``like``) whose gradient becomes ``grad_<quantity>``.

        It is a zero scalar leaf expanded to ``shape``: no memory, yet its gradient is the full
        ``[T, B, F]`` tensor. None when autograd is off (no_grad / inference mode): values are still
        recorded.
        """
        if not torch.is_grad_enabled():
            return None
        zero = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
        p = zero.expand(shape)
        p.register_hook(partial(self._on_grad, "grad_" + quantity))
        return p

    def _on_grad(self, quantity: str, grad: Tensor) -> None:
        grad = grad.detach()
        if self.detail == "summary":
            if quantity in self.grads:
                warnings.warn(
                    f"a second backward ran through the recorded pass of {self.key}; summary "
                    "statistics of its gradients describe the latest backward only",
                    stacklevel=2,
                )
            self.grads[quantity] = norm_stats(grad)
        elif quantity in self.grads:
            self.grads[quantity] = self.grads[quantity] + grad  # as .grad accumulates
        else:
            self.grads[quantity] = grad

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
        if self.detail == "full":
            return
        self._derive(reduce=True)
        self.values = {q: v if q == "c" else norm_stats(v) for q, v in self.values.items()}
        if self.cell in KEEP_GATE:
            self.gates["keep"] = self.gates[KEEP_GATE[self.cell]]

    def _derived_blocks(self) -> Iterator[dict[str, Tensor]]:
        """Gates (and the LSTM's c) from the recorded x and h, a block of steps at a time, in the order run.

        Each block is one batched cell call over ``_BLOCK`` steps; blocks keep temporaries small. For
        the LSTM, :math:`c_t = f_t \\odot c_{t-1} + i_t \\odot g_t` is then scanned step by step.
        """
        h0, c0, (w_ih, w_hh, b_ih, b_hh), step, direction = self._inputs
        x, h = self.values["x"], self.values["h"]
        steps, batch, width = h.shape
        names = GATE_NAMES[self.cell]
        starts = range(0, steps, _BLOCK)
        c_prev = c0
        with torch.no_grad():
            for lo in starts if direction == "forward" else reversed(starts):
                hi = min(lo + _BLOCK, steps)
                n = hi - lo
                if direction == "forward":
                    h_prev = h[lo - 1 : hi - 1] if lo > 0 else torch.cat([h0[None], h[: hi - 1]])
                else:
                    h_prev = h[lo + 1 : hi + 1] if hi < steps else torch.cat([h[lo + 1 :], h0[None]])
                gi = input_projection(x[lo:hi], w_ih, b_ih).reshape(n * batch, -1)
                c_any = None if c0 is None else h_prev.new_zeros(n * batch, width)
                _, _, gates = step(gi, h_prev.reshape(n * batch, width), c_any, w_hh, b_hh, None)
                block = {name: g.reshape(n, batch, width) for name, g in zip(names, gates, strict=True)}
                if c0 is not None:
                    c = torch.empty_like(block["forget"])
                    update = block["input"] * block["cell"]
                    for t in range(n) if direction == "forward" else range(n - 1, -1, -1):
                        c_prev = torch.addcmul(update[t], block["forget"][t], c_prev, out=c[t])
                    block["c"] = c
                yield block

    def _derive(self, reduce: bool) -> None:
        """Set ``gates`` (and ``values["c"]``) in time order, as ``[T, B, M]`` tensors or, with
        ``reduce``, as their ``[T, 5]`` statistics. Runs once; later calls do nothing."""
        if self._derived:
            return
        forward = self._inputs[4] == "forward"
        parts: dict[str, list[Tensor]] = {}
        for block in self._derived_blocks():
            for name, value in block.items():
                if reduce:
                    value = norm_stats(value) if name == "c" else gate_stats(value, self.gate_ranges[name])
                parts.setdefault(name, []).append(value)
        self._derived = True
        derived = {name: torch.cat(p if forward else p[::-1]) for name, p in parts.items()}
        if "c" in derived:
            self.values["c"] = derived.pop("c")
        self.gates = derived

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

    def __init__(self, detail: str) -> None:
        self.detail = detail
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

    def _begin(self, name: str, layer: RecurrentLayer) -> Callable[[int, str], _LayerRecord]:
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

        return new_record


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
def record(model: nn.Module, detail: str = "full") -> Iterator[Recorder]:
    """Record every recurrent layer inside ``model`` while the block runs.

    gradscope layers are recorded as they are; ``torch.nn.RNN``, ``GRU`` and ``LSTM`` modules become the
    matching gradscope layer for the duration of the block (the same object, with the same Parameters)
    and are restored on exit, also when the block raises.

    Args:
        model: any ``nn.Module``; the root itself may be a recurrent layer.
        detail: ``"full"`` keeps every tensor of :class:`~gradscope.trace.LayerTrace`; ``"summary"``
            keeps per-step reductions over the batch (:class:`~gradscope.trace.LayerSummary`), so memory
            does not grow with the batch size.

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
    targets = _targets(model)
    if not targets:
        raise ValueError(
            f"{type(model).__name__} contains no recurrent layer to record "
            "(gradscope RNN/GRU/LSTM or torch.nn.RNN/GRU/LSTM)"
        )
    busy = [name for name, module in targets if _SINK in vars(module)]
    if busy:
        raise RuntimeError(f"modules {busy} are already being recorded by an enclosing record() block")
    recorder = Recorder(detail)
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
