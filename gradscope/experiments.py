r"""Train RNN, GRU and LSTM side by side on one task, recording their gradient flow as they learn.

:func:`compare` trains one model per (cell, readout) on the same data stream and stores, at step 0
and every ``record_every`` optimiser steps (and after the last), what :mod:`gradscope.analysis`
measures, in a run directory (:mod:`gradscope.storage`).

At each record step, with the model as it is after that many updates:

- a *probe* batch, fixed for the whole run, goes forward and backward under ``record(detail="full")``:
  forgetting curves and fits (batch ``"probe"``), gate statistics, time constants, Jacobian summaries;
- the training batch of that step goes forward and backward under ``record(detail="summary")`` (it is
  the step's own training pass): forgetting curves, fits and gate statistics with batch ``"train"``;
- loss and metric on a fixed held-out set (split ``"test"``) and on a fixed set of training samples
  (split ``"train"``); split ``"gap"`` holds test − train, the seed's overfitting question.

After the last step, for sequences up to :data:`CONNECTIVITY_MAX_LEN`, the connectivity
:math:`\lVert \partial h_t / \partial x_s \rVert` of the recurrent layer on the first
``jacobian_samples`` probe samples.

Every layer is measured (columns ``layer`` and ``direction``); layer 0's ``grad_x`` is the gradient with
respect to the task's inputs, the one the summaries and progress report.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

import gradscope
from gradscope import analysis
from gradscope.layers import GRU, LSTM, RNN
from gradscope.storage import TABLES, Run, RunWriter, load_run
from gradscope.tasks import Task, make_task
from gradscope.trace import Trace

__all__ = [
    "CELLS",
    "FORGET_BIAS",
    "READOUTS",
    "SequenceModel",
    "compare",
    "init_forget_bias",
    "run_parameter_counts",
    "run_summary",
]

CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
READOUTS = ("last", "max", "mean", "sequence")
"""How the hidden states become one prediction: the last state, max or mean pooling over time, or a
prediction at every step ("sequence", for tasks with sequence output such as "copy")."""
FORGET_BIAS = ("default", "one", "chrono")
CONNECTIVITY_MAX_LEN = 200
"""Connectivity (T² entries) is stored for sequences up to this length, at the last step."""


class SequenceModel(nn.Module):
    """One recurrent layer (``self.rnn``), a readout over time, and a linear head.

    Args:
        cell: ``"rnn"``, ``"gru"`` or ``"lstm"``.
        readout: one of :data:`READOUTS`; ``"max"`` is the seed's LSTM with max pooling over time.
        bidirectional: both directions, their states concatenated before the readout.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        readout: str,
        num_layers: int = 1,
        bidirectional: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}: choose from {list(CELLS)}")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}: choose from {list(READOUTS)}")
        self.readout = readout
        self.rnn = CELLS[cell](
            input_size, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=bidirectional
        )
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, T, D]`` → ``[N, K]``, or ``[N, T, K]`` with the "sequence" readout."""
        out, _ = self.rnn(x)
        if self.readout == "last":
            out = out[:, -1]
        elif self.readout == "max":
            out = out.max(dim=1).values
        elif self.readout == "mean":
            out = out.mean(dim=1)
        return self.head(out)


def init_forget_bias(layer: nn.RNNBase, scheme: str, seq_len: int, generator: torch.Generator) -> None:
    r"""Initialise the bias of the gate that keeps the state (LSTM forget gate, GRU update gate z).

    - ``"default"``: leave torch's initialisation (gates near 0.5 on average).
    - ``"one"``: effective bias 1 (Jozefowicz, Zaremba & Sutskever 2015).
    - ``"chrono"``: :math:`b \sim \log U[1, T_{max} - 1]` with :math:`T_{max}` = ``seq_len``, and for the
      LSTM the input gate's bias :math:`-b` (Tallec & Ollivier 2018).

    torch adds two bias vectors; the whole value is written to ``bias_ih`` and the ``bias_hh`` entries
    of those gates are set to 0, so the effective bias is exactly the one intended (writing it into
    both would double it). The simple RNN has no such gate and is left unchanged.
    """
    if scheme not in FORGET_BIAS:
        raise ValueError(f"forget_bias must be one of {FORGET_BIAS}, got: {scheme!r}")
    if scheme == "default" or not isinstance(layer, (nn.LSTM, nn.GRU)) or not layer.bias:
        return
    m = layer.hidden_size
    keep = slice(m, 2 * m)  # LSTM (i, f, g, o): f; GRU (r, z, n): z
    with torch.no_grad():
        suffixes = [f"l{k}{r}" for k in range(layer.num_layers) for r in ("", "_reverse")[: 1 + layer.bidirectional]]
        for suffix in suffixes:
            b_ih, b_hh = getattr(layer, f"bias_ih_{suffix}"), getattr(layer, f"bias_hh_{suffix}")
            if scheme == "one":
                value = torch.ones(m)
            else:
                value = torch.log(1 + (max(seq_len, 2) - 2) * torch.rand(m, generator=generator))
            b_ih[keep] = value.to(b_ih.dtype)
            b_hh[keep] = 0.0
            if scheme == "chrono" and isinstance(layer, nn.LSTM):
                b_ih[:m] = -value.to(b_ih.dtype)
                b_hh[:m] = 0.0


@dataclass(frozen=True)
class _Config:
    task: str
    seq_len: int
    cells: tuple[str, ...]
    readouts: dict[str, tuple[str, ...]]
    hidden_size: int
    num_layers: int
    bidirectional: bool
    steps: int
    batch_size: int
    lr: float
    record_every: int
    seed: int
    clip: float | None
    forget_bias: str
    train_size: int | None
    eval_size: int
    probe_size: int
    jacobian_samples: int
    task_options: dict[str, Any]


def _check(config: _Config, task: Task) -> None:
    def positive(name: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got: {value!r}")

    for name in ("hidden_size", "num_layers", "steps", "batch_size", "record_every", "eval_size", "probe_size"):
        positive(name, getattr(config, name))
    if config.train_size is not None:
        positive("train_size", config.train_size)
    if not isinstance(config.jacobian_samples, int) or not 1 <= config.jacobian_samples <= config.probe_size:
        raise ValueError(f"jacobian_samples must be an int in [1, probe_size], got: {config.jacobian_samples!r}")
    if not config.cells or any(c not in CELLS for c in config.cells):
        raise ValueError(f"cells must be a non-empty subset of {list(CELLS)}, got: {list(config.cells)}")
    allowed = ("sequence",) if task.sequence_output else ("last", "max", "mean")
    if not config.readouts:
        raise ValueError("readouts name no cell to train")
    for chosen in config.readouts.values():
        if not chosen or any(r not in allowed for r in chosen):
            raise ValueError(f"task {task.name!r} takes readouts from {list(allowed)}, got: {list(chosen)}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got: {config.lr!r}")
    if config.clip is not None and not config.clip > 0:
        raise ValueError(f"clip must be > 0 or None, got: {config.clip!r}")
    if config.forget_bias not in FORGET_BIAS:
        raise ValueError(f"forget_bias must be one of {FORGET_BIAS}, got: {config.forget_bias!r}")


class _Stream:
    """The training data: fresh samples from a seeded generator, or cycling through a fixed training set."""

    def __init__(self, task: Task, config: _Config):
        self.task, self.batch_size = task, config.batch_size
        self.generator = torch.Generator().manual_seed(config.seed)
        self.data = None if config.train_size is None else task.sample(config.train_size, self.generator)
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.data is None:
            return self.task.sample(self.batch_size, self.generator)
        x, y = self.data
        index = torch.arange(self.position, self.position + self.batch_size) % len(x)
        self.position = int(index[-1]) + 1
        return x[index], y[index]


def _meta(frame: pd.DataFrame, step: int, cell: str, readout: str, **extra: Any) -> pd.DataFrame:
    for position, (key, value) in enumerate({"step": step, "cell": cell, "readout": readout, **extra}.items()):
        frame.insert(position, key, value)
    return frame


def _measure_trace(trace: Trace, cell: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Curves, fits and gate statistics of every layer and direction of the recorded ``rnn``."""
    curves, fits, gates = [], [], []
    for _, index, direction in trace.keys():
        layer = trace.layer("rnn", index, direction)
        where = {"layer": index, "direction": direction}
        for quantity in ("grad_x", "grad_h", "grad_c") if cell == "lstm" else ("grad_x", "grad_h"):
            curve = analysis.forgetting_curve(layer, quantity)
            curves.append(curve.assign(**where, quantity=quantity))
            try:
                fit = asdict(analysis.fit_forgetting(curve))
            except ValueError:  # nothing above the floor: an all-zero gradient
                fit = {"rate": math.nan, "half_life": math.nan, "horizon": None, "r2": math.nan}
                fit |= {"regime": "undefined", "points": 0}
            fits.append({**where, "quantity": quantity, **fit})
        stats = layer.to_frame()
        gates.append(stats[stats["kind"] == "gate"].rename(columns={"quantity": "gate"}).assign(**where))
    return (
        pd.concat(curves, ignore_index=True)[["layer", "direction", "quantity", "t", "lag", "norm", "relative"]],
        pd.DataFrame(fits).astype({"horizon": "Int64"}),
        pd.concat(gates, ignore_index=True)[["layer", "direction", "gate", "t", "mean", "q10", "q90", "saturated"]],
    )


def _evaluate(model: nn.Module, task: Task, data: tuple[Tensor, Tensor]) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        pred = model(data[0])
        result = task.loss(pred, data[1]).item(), task.metric(pred, data[1])
    model.train()
    return result


def compare(
    task: str,
    seq_len: int,
    cells: Sequence[str] = ("rnn", "gru", "lstm"),
    readouts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    hidden_size: int = 64,
    num_layers: int = 1,
    bidirectional: bool = False,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    record_every: int = 25,
    seed: int = 0,
    out: str | os.PathLike = "runs/run",
    clip: float | None = None,
    forget_bias: str = "default",
    train_size: int | None = None,
    eval_size: int = 512,
    probe_size: int = 64,
    jacobian_samples: int = 4,
    overwrite: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **task_options: Any,
) -> Run:
    """Train every (cell, readout) on the same data and record how their gradients flow; return the Run.

    Args:
        task, seq_len, task_options: see :func:`gradscope.tasks.make_task`.
        cells: any of ``"rnn", "gru", "lstm"``.
        readouts: for tasks with one prediction per sequence, any of ``"last", "max", "mean"`` (default
            ``("last",)``); for "copy", ``("sequence",)`` (the default there). Either one sequence for
            every cell, or a mapping cell → readouts (``{"lstm": ("last", "max")}``; a cell left out of
            the mapping is not trained).
        hidden_size, num_layers, bidirectional: of the recurrent layer (every layer and direction is
            measured).
        steps: optimiser (Adam) steps with ``batch_size`` samples each, learning rate ``lr``.
        record_every: record at step 0, every ``record_every`` steps, and after the last step.
        seed: fixes initialisation (the same for every configuration) and every data stream.
        out: the run directory; an existing run there is replaced only with ``overwrite``.
        clip: clip the gradient norm to this value before each update (None: no clipping).
        forget_bias: ``"default"``, ``"one"`` or ``"chrono"`` (see :func:`init_forget_bias`).
        train_size: None draws fresh training samples every step; an int trains on a fixed set of that
            many samples, cycled, so that models can overfit it.
        eval_size: samples in the held-out set and in the fixed training subset evaluated.
        probe_size: samples in the fixed probe batch recorded in full.
        jacobian_samples: probe samples whose Jacobians are analysed (cost grows as samples × T × M³).
        progress: called after every step with ``cell, readout, step, steps, loss`` (of that step's
            batch), ``recorded`` (whether it was a record step), and the latest record's ``test_loss``
            and ``half_life`` (of grad_x on the probe batch).

    Deterministic for a seed on CPU: the same arguments give the same tables.
    """
    task_obj = make_task(task, seq_len, **task_options)
    if readouts is None:
        readouts = ("sequence",) if task_obj.sequence_output else ("last",)
    if isinstance(readouts, str):
        raise ValueError(f"readouts must be a sequence or a mapping of sequences, got the string {readouts!r}")
    if isinstance(readouts, Mapping):
        strangers = [cell for cell in readouts if cell not in cells]
        if strangers:
            raise ValueError(f"readouts are given for {strangers}, which are not among cells {list(cells)}")
        per_cell = {cell: tuple(readouts[cell]) for cell in cells if cell in readouts}
    else:
        per_cell = {cell: tuple(readouts) for cell in cells}
    config = _Config(
        task, seq_len, tuple(cells), per_cell, hidden_size, num_layers, bool(bidirectional), steps, batch_size,
        float(lr),
        record_every, seed, None if clip is None else float(clip), forget_bias, train_size, eval_size,
        probe_size, jacobian_samples, dict(task_obj.options),
    )  # fmt: skip
    _check(config, task_obj)
    meta = {
        "gradscope": gradscope.__version__,
        "torch": torch.__version__,
        "cells": list(config.cells),
        "readouts": {cell: list(chosen) for cell, chosen in config.readouts.items()},
        "task": {"name": task, "length": task_obj.length, "metric": task_obj.metric_name,
                 "baseline_loss": task_obj.baseline_loss},
    }  # fmt: skip
    writer = RunWriter(out, asdict(config), meta, overwrite=overwrite)
    try:
        for cell in config.cells:
            for readout in config.readouts[cell]:
                _train_one(config, task_obj, cell, readout, writer, progress)
    except BaseException as error:
        writer.finish("failed", "".join(traceback.format_exception_only(type(error), error)).strip())
        raise
    writer.finish("completed")
    return load_run(out)


def _train_one(
    config: _Config,
    task: Task,
    cell: str,
    readout: str,
    writer: RunWriter,
    progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    torch.manual_seed(config.seed)
    model = SequenceModel(
        cell, task.input_size, config.hidden_size, task.output_size, readout, config.num_layers, config.bidirectional
    )
    init_forget_bias(model.rnn, config.forget_bias, config.seq_len, torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    stream = _Stream(task, config)
    test = task.sample(config.eval_size, torch.Generator().manual_seed(config.seed + 1))
    probe = task.sample(config.probe_size, torch.Generator().manual_seed(config.seed + 2))
    train_eval = (
        task.sample(config.eval_size, torch.Generator().manual_seed(config.seed))
        if stream.data is None
        else tuple(v[: config.eval_size] for v in stream.data)
    )
    counts = [("recurrent", sum(p.numel() for p in model.rnn.parameters()))]
    counts.append(("head", sum(p.numel() for p in model.head.parameters())))
    writer.add("params", pd.DataFrame([(cell, readout, name, n) for name, n in counts], columns=TABLES["params"]))
    record_steps = set(range(0, config.steps, config.record_every)) | {config.steps}
    test_loss = half_life = math.nan
    for step in range(config.steps + 1):
        recording = step in record_steps
        if recording:
            half_life = _record_probe(config, task, model, probe, step, cell, readout, writer)
        x, y = stream.next()
        optimizer.zero_grad(set_to_none=True)
        if recording:
            with gradscope.record(model, detail="summary") as rec:
                loss = task.loss(model(x), y)
                loss.backward()
            curves, fits, gates = _measure_trace(rec.trace, cell)
            writer.add("curves", _meta(curves, step, cell, readout, batch="train"))
            writer.add("fits", _meta(fits, step, cell, readout, batch="train"))
            writer.add("gates", _meta(gates, step, cell, readout, batch="train"))
            test_loss = _record_metrics(model, task, train_eval, test, step, cell, readout, writer)
            writer.commit([{"cell": cell, "readout": readout, "step": step}])
        else:
            loss = task.loss(model(x), y)
            loss.backward()
        if progress is not None:
            progress({"cell": cell, "readout": readout, "step": step, "steps": config.steps, "loss": loss.item(),
                      "test_loss": test_loss, "half_life": half_life, "recorded": recording})  # fmt: skip
        if step == config.steps:
            if task.length <= CONNECTIVITY_MAX_LEN:
                frame = analysis.connectivity(model.rnn, probe[0][: config.jacobian_samples], chunk_size=1024)
                writer.add("connectivity", _meta(frame, step, cell, readout))
                writer.commit([])
            break
        if config.clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()


def _record_probe(
    config: _Config, task: Task, model: nn.Module, probe: tuple[Tensor, Tensor], step: int, cell: str,
    readout: str, writer: RunWriter,
) -> float:  # fmt: skip
    """The full-detail record of the fixed probe batch, leaving no gradient behind; returns the grad_x half-life."""
    model.zero_grad(set_to_none=True)
    with gradscope.record(model) as rec:
        task.loss(model(probe[0]), probe[1]).backward()
    model.zero_grad(set_to_none=True)
    curves, fits, gates = _measure_trace(rec.trace, cell)
    writer.add("curves", _meta(curves, step, cell, readout, batch="probe"))
    writer.add("fits", _meta(fits, step, cell, readout, batch="probe"))
    writer.add("gates", _meta(gates, step, cell, readout, batch="probe"))
    samples = list(range(config.jacobian_samples))
    for _, index, direction in rec.trace.keys():
        layer = rec.trace.layer("rnn", index, direction)
        where = {"layer": index, "direction": direction}
        if cell != "rnn":
            writer.add("time_constants", _meta(analysis.gate_time_constants(layer), step, cell, readout, **where))
        exponents = analysis.lyapunov_exponents(layer, samples=samples)
        spectrum = analysis.jacobian_spectrum(layer, samples=samples)
        largest = spectrum.loc[spectrum["k"] == 0, "singular_value"]
        jac = pd.DataFrame(
            {
                "lyapunov_max": [float(exponents.groupby("sample")["exponent"].max().mean())],
                "spectral_norm_mean": [float(largest.mean())],
                "spectral_norm_max": [float(largest.max())],
            }
        )
        writer.add("jacobians", _meta(jac, step, cell, readout, **where))
    first = (fits["layer"] == 0) & (fits["direction"] == "forward") & (fits["quantity"] == "grad_x")
    return float(fits.loc[first, "half_life"].item())


def _record_metrics(
    model: nn.Module, task: Task, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], step: int,
    cell: str, readout: str, writer: RunWriter,
) -> float:  # fmt: skip
    """Loss and metric on the fixed training subset and the held-out set; returns the test loss."""
    train_loss, train_metric = _evaluate(model, task, train)
    test_loss, test_metric = _evaluate(model, task, test)
    rows = [
        ("train", train_loss, train_metric),
        ("test", test_loss, test_metric),
        ("gap", test_loss - train_loss, test_metric - train_metric),
    ]
    frame = pd.DataFrame(rows, columns=["split", "loss", "metric"])
    writer.add("metrics", _meta(frame, step, cell, readout))
    return test_loss


def _first_layer(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["layer"] == 0) & (frame["direction"] == "forward")]


def run_summary(run: Run) -> pd.DataFrame:
    """The first table of a run: one row per (cell, readout) at its last completed record step.

    Columns: ``cell``, ``readout``, ``step``, ``test_loss``, ``baseline_loss`` (the task's trivial
    predictor), ``loss_ratio`` (test / baseline: below 1 means something was learned), ``test_metric``,
    ``gap`` (test − train loss), ``half_life``, ``horizon``, ``regime`` (of grad_x of layer 0 on the probe batch),
    ``median_tau`` (NaN for the RNN, which has no gate), ``lyapunov_max``, ``parameters``.
    """
    if run.metrics.empty:
        raise ValueError(f"run {run.name!r} has no completed record step yet")
    baseline = run.info["task"]["baseline_loss"]
    rows = []
    for (cell, readout), metrics in run.metrics.groupby(["cell", "readout"], sort=False):
        step = metrics["step"].max()
        at = metrics[metrics["step"] == step].set_index("split")

        def select(frame: pd.DataFrame, cell: str = cell, readout: str = readout, step: int = step) -> pd.DataFrame:
            return frame[(frame["cell"] == cell) & (frame["readout"] == readout) & (frame["step"] == step)]

        fit = _first_layer(select(run.fits))
        fit = fit[(fit["batch"] == "probe") & (fit["quantity"] == "grad_x")].iloc[0]
        taus = _first_layer(select(run.time_constants))["tau"]
        params = run.params[(run.params["cell"] == cell) & (run.params["readout"] == readout)]["parameters"]
        rows.append(
            {
                "cell": cell,
                "readout": readout,
                "step": int(step),
                "test_loss": at.loc["test", "loss"],
                "baseline_loss": baseline,
                "loss_ratio": at.loc["test", "loss"] / baseline,
                "test_metric": at.loc["test", "metric"],
                "gap": at.loc["gap", "loss"],
                "half_life": fit["half_life"],
                "horizon": fit["horizon"],
                "regime": fit["regime"],
                "median_tau": float(taus.median()) if len(taus) else math.nan,
                "lyapunov_max": _first_layer(select(run.jacobians))["lyapunov_max"].item(),
                "parameters": int(params.sum()),
            }
        )
    return pd.DataFrame(rows)


def run_parameter_counts(run: Run, seq_lens: Sequence[int] = (10, 30, 100, 300, 1000, 3000)) -> pd.DataFrame:
    """:func:`gradscope.analysis.parameter_counts` for a run's sizes, over ``seq_lens`` and its own length."""
    config = run.config
    task = make_task(config["task"], config["seq_len"], **config["task_options"])
    lengths = sorted({*seq_lens, task.length})
    return analysis.parameter_counts(task.input_size, config["hidden_size"], lengths, config["num_layers"])
