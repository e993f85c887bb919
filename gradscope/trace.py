"""What a recording holds: per-layer, per-direction traces of one forward/backward pass.

A :class:`Trace` is one pass; it maps ``(module, layer, direction)`` to a :class:`LayerTrace` (every
tensor, ``detail="full"``) or a :class:`LayerSummary` (per-step reductions over the batch,
``detail="summary"``). Both turn into the same long-form DataFrame, whose columns are
:data:`FRAME_COLUMNS`:

``module, layer, direction, cell``
    where the values come from (``module`` is the qualified name from ``named_modules()``, ``""`` for
    the root; ``direction`` is ``"forward"`` or ``"backward"``; ``cell`` is ``"rnn"``, ``"gru"`` or ``"lstm"``).
``quantity``, ``kind``
    ``kind="norm"`` for ``x, h, c, grad_x, grad_h, grad_c``: statistics over the batch of the L2 norm
    over features at step ``t``. ``kind="gate"`` for the gate names and ``keep``: statistics over
    batch and units of the post-activation gate values.
``t``
    the step, in the original input order for both directions.
``mean, q10, q50, q90``
    norms: the batch mean and the 10 %, 50 %, 90 % quantiles over the batch. Gates: the mean over
    batch and units, and the quantiles across units of each unit's batch-mean value. Quantiles use
    linear interpolation, as ``torch.quantile``, except that +inf among the ranks gives +inf, not NaN.
``saturated``
    gates only: the fraction of values in the outer tenth of the gate's range at either end (below
    0.1 or above 0.9 for a sigmoid gate, the criterion of Karpathy et al. 2015); NaN for norms and
    for unbounded activations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from gradscope.native import ops as native_ops

__all__ = ["FRAME_COLUMNS", "LayerSummary", "LayerTrace", "Trace"]

FRAME_COLUMNS = (
    "module", "layer", "direction", "cell", "quantity", "kind", "t",
    "mean", "q10", "q50", "q90", "saturated",
)  # fmt: skip
NORM_QUANTITIES = ("x", "h", "c", "grad_x", "grad_h", "grad_c")
KEEP_GATE = {"lstm": "forget", "gru": "update"}
"""The gate whose value is the fraction of the previous state kept (GRU z in torch's parameterisation)."""
_QUANTILES = (0.1, 0.5, 0.9)
_SATURATION_BAND = 0.1

# Range of each activation's output, for the saturation fraction; None where unbounded.
ACTIVATION_RANGES: dict[str, tuple[float, float] | None] = {
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "hardtanh": (-1.0, 1.0),
    "relu": None,
    "identity": None,
}


@functools.cache
def _positions(count: int) -> tuple[list[int], list[int], list[float]]:
    """Where the quantiles :data:`_QUANTILES` of ``count`` sorted values lie: rows below, above, and weights."""
    positions = [q * (count - 1) for q in _QUANTILES]
    below, above = [math.floor(p) for p in positions], [math.ceil(p) for p in positions]
    return below, above, [p - b for p, b in zip(positions, below, strict=True)]


def _quantiles(values: Tensor) -> Tensor:
    """Quantiles :data:`_QUANTILES` along the last dim of ``[..., K]``: torch.quantile's "linear" method, ``low + (high
    - low) w`` between the values ranked below and above, except that between two equal values it is that value. So
    +inf among the ranks (an exploding gradient's norm) gives +inf where torch.quantile gives NaN (inf - inf); NaN
    ranks last and gives NaN, as there. The compiled ops (:mod:`gradscope.native`) compute the same.

    On the CPU in float32 and float64 all in numpy: its sort is about 15 times faster than torch's on rows
    of tens of values, and on such small arrays its few operations cost less than torch's dispatch.
    """
    below, above, weights = _positions(values.shape[-1])
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        ordered = np.sort(values.detach().numpy(), axis=-1)
        low, high = ordered[..., below], ordered[..., above]
        with np.errstate(invalid="ignore"):  # inf - inf, replaced by where
            between = low + (high - low) * np.asarray(weights, dtype=ordered.dtype)
        return torch.from_numpy(np.where(low == high, low, between))
    ordered = values.sort(dim=-1).values
    low, high = ordered[..., below], ordered[..., above]
    return torch.where(low == high, low, low + (high - low) * values.new_tensor(weights))


def norm_stats(values: Tensor) -> Tensor:
    """Per-step statistics of the L2 norm over features: ``[T, B, F]`` → ``[T, 5]``.

    Columns: mean, q10, q50, q90 over the batch, and NaN (saturation is not defined for norms). On the CPU in
    float32 and float64 compiled (:mod:`gradscope.native`), with the same results.
    """
    with torch.no_grad():
        ops = native_ops(values)
        if ops is not None:
            return ops.norm_stats(values.detach())
        return stats_of_norms(torch.linalg.vector_norm(values, dim=-1))


def stats_of_norms(norms: Tensor) -> Tensor:
    """:func:`norm_stats` from the norms themselves, ``[T, B]`` → ``[T, 5]``."""
    with torch.no_grad():
        ops = native_ops(norms)
        if ops is not None:
            return ops.norm_stats(norms.detach())
        nan = torch.full_like(norms[:, :1], float("nan"))
        return torch.cat([norms.mean(1, keepdim=True), _quantiles(norms), nan], dim=1)


def gate_stats(values: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    """Per-step statistics of gate values: ``[T, B, M]`` → ``[T, 5]``.

    Columns: the mean over batch and units; the 10/50/90 % quantiles *across units* of each unit's
    batch-mean value (the spread between units that keep and units that forget); and the fraction of
    all values that are saturated (NaN when ``value_range`` is None).
    """
    return gates_stats(values[None], [value_range])[0]


def saturation_bounds(value_ranges: Sequence[tuple[float, float] | None]) -> tuple[list[float], list[float]]:
    """``(middle, reach)`` per range: a value is saturated farther than reach from the middle of its range (an
    unbounded gate, range None: reach inf, never; its saturation is then NaN)."""
    middle = [0.0 if r is None else (r[0] + r[1]) / 2 for r in value_ranges]
    reach = [math.inf if r is None else (0.5 - _SATURATION_BAND) * (r[1] - r[0]) for r in value_ranges]
    return middle, reach


def gates_stats(values: Tensor, value_ranges: Sequence[tuple[float, float] | None]) -> Tensor:
    """:func:`gate_stats` of G gates at once, ``[G, T, B, M]`` → ``[G, T, 5]``, gate g in ``value_ranges[g]``.

    One set of tensor operations for all gates: on small blocks of steps, dispatch costs more than
    arithmetic. On the CPU in float32 and float64 compiled (:mod:`gradscope.native`), with the same results.
    """
    middle, reach = saturation_bounds(value_ranges)
    with torch.no_grad():
        ops = native_ops(values)
        if ops is not None:
            return ops.gates_stats(values.detach(), middle, reach)
        unit_means = values.mean(2)
        # as 0/1 floats, several times cheaper on the CPU than comparisons into bool tensors
        shape = (len(value_ranges), 1, 1, 1)
        outer = values.new_empty(values.shape)  # contiguous, whatever the layout of values: a faster sum
        torch.sub(values, values.new_tensor(middle).view(shape), out=outer).abs_()
        outer.gt_(values.new_tensor(reach).view(shape))
        saturated = outer.sum((2, 3)).div_(values[0, 0].numel()).unsqueeze(-1)
        saturated[[g for g, r in enumerate(value_ranges) if r is None]] = math.nan
        return torch.cat([unit_means.mean(-1, keepdim=True), _quantiles(unit_means), saturated], dim=-1)


def _stats_frame(meta: dict[str, object], stats: dict[str, Tensor], gate_names: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for quantity, table in stats.items():
        arr = table.detach().to("cpu", torch.float64).numpy()
        steps = arr.shape[0]
        frame = pd.DataFrame(arr, columns=["mean", "q10", "q50", "q90", "saturated"])
        frame.insert(0, "t", np.arange(steps))
        frame.insert(0, "kind", "gate" if quantity in gate_names else "norm")
        frame.insert(0, "quantity", quantity)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)
    for position, (key, value) in enumerate(meta.items()):
        out.insert(position, key, value)
    return out[list(FRAME_COLUMNS)]


@dataclass(frozen=True)
class LayerSummary:
    """Per-step reductions over the batch for one layer and direction (``detail="summary"``).

    Attributes:
        module, layer, direction, cell: where the values come from (see the module docstring).
        batch_size, seq_len: ``B`` and ``T`` of the recorded pass.
        stats: quantity → ``[T, 5]`` tensor with columns mean, q10, q50, q90, saturated.
            Norm quantities: ``x, h, grad_x, grad_h`` (and ``c, grad_c`` for an LSTM; the ``grad_*``
            only after a backward pass). Gate quantities: the gate names and ``keep``.
    """

    module: str
    layer: int
    direction: str
    cell: str
    batch_size: int
    seq_len: int
    stats: dict[str, Tensor] = field(repr=False)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(q for q in self.stats if q not in NORM_QUANTITIES)

    def to_frame(self) -> pd.DataFrame:
        """The long-form table described in the module docstring, one row per (quantity, t)."""
        meta = {"module": self.module, "layer": self.layer, "direction": self.direction, "cell": self.cell}
        return _stats_frame(meta, self.stats, self.gate_names)


@dataclass(frozen=True)
class LayerTrace:
    """Every recorded tensor of one layer and direction (``detail="full"``), batch first.

    Shapes: ``x`` and ``grad_x`` are ``[B, T, D]`` (``D`` the layer's input width); all others
    ``[B, T, M]``. ``t`` is the original input order for both directions.

    Attributes:
        module, layer, direction, cell: where the values come from (see the module docstring).
        x: the layer's input (for layer k > 0, the previous layer's output after dropout).
        h: hidden states :math:`h_t`. c: LSTM cell states :math:`c_t` (None otherwise).
        grad_x: :math:`\\partial L / \\partial x_t` through this direction; the directions of a
            bidirectional layer sum to the full gradient. None before a backward pass.
        grad_h: the total :math:`\\partial L / \\partial h_t` through backpropagation through time
            (output and recurrence), what ``retain_grad()`` on ``h_t`` of an unrolled loop gives.
        grad_c: the total :math:`\\partial L / \\partial c_t` (LSTM only).
        gates: post-activation gates by name: GRU ``reset, update, candidate``; LSTM
            ``input, forget, cell, output``; empty for the RNN.
        gate_ranges: each gate's value range, for saturation (None when unbounded).
        h0, c0: the initial states ``[B, M]`` (c0 None except for the LSTM).
        weights: ``(w_ih, w_hh, b_ih, b_hh)`` as they were during the forward pass (copies; biases None
            when the layer has none), in torch's layout.
        step: the layer's cell, :data:`gradscope.layers.Step`, with its options fixed. With ``weights``,
            ``h0`` and ``x`` it reproduces every step: the analysis uses it for exact Jacobians.
    """

    module: str
    layer: int
    direction: str
    cell: str
    x: Tensor = field(repr=False)
    h: Tensor = field(repr=False)
    c: Tensor | None = field(repr=False)
    grad_x: Tensor | None = field(repr=False)
    grad_h: Tensor | None = field(repr=False)
    grad_c: Tensor | None = field(repr=False)
    gates: dict[str, Tensor] = field(repr=False)
    gate_ranges: dict[str, tuple[float, float] | None] = field(repr=False)
    h0: Tensor = field(repr=False)
    c0: Tensor | None = field(repr=False)
    weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None] = field(repr=False)
    step: Callable[..., tuple[Tensor, Tensor | None, tuple[Tensor, ...]]] = field(repr=False)

    @property
    def keep(self) -> Tensor | None:
        """Fraction of the previous state kept at step t: LSTM forget gate, GRU update gate z; None for RNN.

        This puts all cells on one axis (in the seed's GRU notation the kept fraction is 1 − z).
        """
        gate = KEEP_GATE.get(self.cell)
        return None if gate is None else self.gates[gate]

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    @property
    def seq_len(self) -> int:
        return self.h.shape[1]

    def summary(self) -> LayerSummary:
        """The same reductions that ``detail="summary"`` records."""
        values = {q: getattr(self, q) for q in NORM_QUANTITIES}
        stats = {q: norm_stats(v.transpose(0, 1)) for q, v in values.items() if v is not None}
        for name, value in self.gates.items():
            stats[name] = gate_stats(value.transpose(0, 1), self.gate_ranges[name])
        if self.cell in KEEP_GATE:
            stats["keep"] = stats[KEEP_GATE[self.cell]]
        return LayerSummary(self.module, self.layer, self.direction, self.cell, self.batch_size, self.seq_len, stats)

    def to_frame(self) -> pd.DataFrame:
        """The long-form table described in the module docstring, one row per (quantity, t)."""
        return self.summary().to_frame()


class Trace:
    """One recorded forward (and backward) pass: a LayerTrace or LayerSummary per module, layer, direction.

    Built by :func:`gradscope.record`; gradients appear once ``backward()`` has run through the pass.
    """

    def __init__(self) -> None:
        self._sources: dict[tuple[str, int, str], object] = {}

    def _add(self, key: tuple[str, int, str], source: object) -> None:
        self._sources[key] = source

    @property
    def names(self) -> list[str]:
        """Qualified names of the recorded modules, in the order they ran (``""`` is the root)."""
        return list(dict.fromkeys(name for name, _, _ in self._sources))

    def keys(self) -> list[tuple[str, int, str]]:
        """All ``(module, layer, direction)`` recorded in this pass, in the order they ran."""
        return list(self._sources)

    def layer(self, name: str | None = None, layer: int = 0, direction: str = "forward") -> LayerTrace | LayerSummary:
        """The trace of one layer and direction of one module.

        Args:
            name: qualified module name; may be left out when a single module was recorded.
            layer: layer index, 0 is the one reading the input.
            direction: ``"forward"`` or ``"backward"`` (bidirectional layers only).
        """
        names = self.names
        if name is None:
            if len(names) != 1:
                raise ValueError(f"this trace holds several modules {names}: pass name= to pick one")
            name = names[0]
        key = (name, layer, direction)
        if key not in self._sources:
            raise KeyError(
                f"no trace for module {name!r}, layer {layer}, direction {direction!r}; "
                f"recorded (module, layer, direction): {self.keys()}"
            )
        return self._sources[key].snapshot()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[LayerTrace | LayerSummary]:
        for name, layer, direction in self._sources:
            yield self.layer(name, layer, direction)

    def __len__(self) -> int:
        return len(self._sources)

    def to_frame(self) -> pd.DataFrame:
        """All layers of this pass as one long-form DataFrame with :data:`FRAME_COLUMNS`."""
        frames = [layer.to_frame() for layer in self]
        if not frames:
            return pd.DataFrame(columns=FRAME_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def __repr__(self) -> str:
        return f"Trace(keys={self.keys()})"
