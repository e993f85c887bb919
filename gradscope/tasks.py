r"""Long-memory tasks with known trivial baselines.

``make_task(name, seq_len, **options)`` builds one. Every task samples ``x`` of shape ``[N, L, D]``
(``L`` is ``seq_len``, except for "copy" where it is ``seq_len + 20``) from a ``torch.Generator``, so a
seed fixes the data stream, and knows the loss of its trivial predictor (``baseline_loss``): a model
that does no better has learned nothing about the past.

========  =====================================================  ==========  =======================
name      what is asked                                          metric      baseline_loss
========  =====================================================  ==========  =======================
adding    sum of the two values marked in a second channel       mse         1/6 (predict 1)
          (Le, Jaitly & Hinton 2015)
copy      reproduce 10 symbols (of 8) after ``seq_len`` blanks   accuracy    10 ln 8 / (T + 20)
          (Arjovsky, Shah & Bengio 2016)
recall    which of K symbols came first, after T − 1 distractors accuracy    ln K (uniform guess)
sine      next value of a noisy sine from the last T values      mse         1/2 + noise² (predict 0)
========  =====================================================  ==========  =======================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TASKS", "Task", "make_task"]


@dataclass(frozen=True)
class Task:
    """A sequence task: what to sample, how to score it, and what a trivial predictor scores.

    Attributes:
        name: the task's name in :data:`TASKS`.
        seq_len: the ``T`` asked for; ``length`` is the sequence length actually sampled.
        input_size: ``D``. output_size: the width of the model's prediction (classes or 1).
        sequence_output: True when the model predicts at every step ("copy"), False when it predicts
            once per sequence.
        metric_name: ``"accuracy"`` or ``"mse"``.
        baseline_loss: the loss of the trivial predictor named in the module docstring.
        options: the task's own options, as given to :func:`make_task`.
    """

    name: str
    seq_len: int
    length: int
    input_size: int
    output_size: int
    sequence_output: bool
    metric_name: str
    baseline_loss: float
    options: dict[str, Any] = field(default_factory=dict)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(x [N, L, D], y)``: y is ``[N]`` class indices, ``[N, L]`` for "copy", ``[N, 1]`` for regression."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got: {batch_size!r}")
        return _SAMPLERS[self.name](self, batch_size, generator)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """Mean squared error (regression) or mean cross-entropy over samples (and steps, for "copy")."""
        if self.metric_name == "mse":
            return F.mse_loss(pred, y)
        if self.sequence_output:
            return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))
        return F.cross_entropy(pred, y)

    def metric(self, pred: Tensor, y: Tensor) -> float:
        """MSE, or accuracy (for "copy": over the 10 recalled symbols only)."""
        with torch.no_grad():
            if self.metric_name == "mse":
                return F.mse_loss(pred, y).item()
            if self.sequence_output:
                pred, y = pred[:, -_COPY_SYMBOLS:], y[:, -_COPY_SYMBOLS:]
            return (pred.argmax(-1) == y).to(torch.float64).mean().item()


_COPY_SYMBOLS = 10  # symbols to remember in the copy task (Arjovsky et al. 2016)


def _adding(task: Task, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    steps = task.length
    values = torch.rand(n, steps, generator=g)
    half = steps // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, steps, (n,), generator=g)
    mask = torch.zeros(n, steps)
    rows = torch.arange(n)
    mask[rows, first] = 1.0
    mask[rows, second] = 1.0
    y = (values * mask).sum(1, keepdim=True)
    return torch.stack([values, mask], dim=2), y


def _copy(task: Task, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    categories = task.options["categories"]
    blank, delimiter = categories, categories + 1
    steps = task.length
    symbols = torch.randint(0, categories, (n, _COPY_SYMBOLS), generator=g)
    tokens = torch.full((n, steps), blank, dtype=torch.long)
    tokens[:, :_COPY_SYMBOLS] = symbols
    tokens[:, steps - _COPY_SYMBOLS - 1] = delimiter
    y = torch.full((n, steps), blank, dtype=torch.long)
    y[:, -_COPY_SYMBOLS:] = symbols
    return F.one_hot(tokens, categories + 2).to(torch.get_default_dtype()), y


def _recall(task: Task, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    symbols = task.options["symbols"]
    tokens = torch.randint(0, symbols, (n, task.length), generator=g)
    return F.one_hot(tokens, symbols).to(torch.get_default_dtype()), tokens[:, 0]


def _sine(task: Task, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    low, high = task.options["frequency"]
    frequency = low + (high - low) * torch.rand(n, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    t = torch.arange(task.length + 1, dtype=torch.get_default_dtype())
    series = torch.sin(frequency * t + phase) + task.options["noise"] * torch.randn(n, task.length + 1, generator=g)
    return series[:, :-1, None], series[:, -1:]


_SAMPLERS = {"adding": _adding, "copy": _copy, "recall": _recall, "sine": _sine}
TASKS = tuple(_SAMPLERS)


def make_task(name: str, seq_len: int, **options: Any) -> Task:
    """Build a task.

    Args:
        name: one of :data:`TASKS`.
        seq_len: ``T`` ≥ 2: the sequence length ("copy": the delay between the symbols and the recall).
        options: "copy": ``categories=8``; "recall": ``symbols=8``; "sine": ``noise=0.1``,
            ``frequency=(0.1, 0.5)`` (radians per step, drawn uniformly per sequence).

    Example::

        task = make_task("adding", 100)
        x, y = task.sample(32, torch.Generator().manual_seed(0))   # x: [32, 100, 2]
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown task {name!r}: choose one of {list(TASKS)}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got: {seq_len!r}")
    allowed = {"adding": {}, "copy": {"categories": 8}, "recall": {"symbols": 8},
               "sine": {"noise": 0.1, "frequency": (0.1, 0.5)}}[name]  # fmt: skip
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {sorted(unknown)}; its options are {sorted(allowed)}")
    opts = {**allowed, **options}
    if name == "adding":
        return Task(name, seq_len, seq_len, 2, 1, False, "mse", 1 / 6, opts)
    if name == "copy":
        k = opts["categories"]
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"categories must be an int >= 2, got: {k!r}")
        baseline = _COPY_SYMBOLS * math.log(k) / (seq_len + 2 * _COPY_SYMBOLS)
        return Task(name, seq_len, seq_len + 2 * _COPY_SYMBOLS, k + 2, k + 1, True, "accuracy", baseline, opts)
    if name == "recall":
        k = opts["symbols"]
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"symbols must be an int >= 2, got: {k!r}")
        return Task(name, seq_len, seq_len, k, k, False, "accuracy", math.log(k), opts)
    noise = float(opts["noise"])
    low, high = (float(v) for v in opts["frequency"])
    if noise < 0 or not 0 < low <= high:
        raise ValueError(f"sine needs noise >= 0 and 0 < low <= high frequency, got {noise}, {(low, high)}")
    opts = {"noise": noise, "frequency": (low, high)}
    return Task(name, seq_len, seq_len, 1, 1, False, "mse", 0.5 + noise**2, opts)
