"""How long the dashboard's callbacks take on large runs: 3 runs × 3 cells × T = 1000 × 50 record steps.

Run: ``.venv/bin/python benchmarks/dashboard_speed.py``. The runs are synthetic (random values in the
exact tables and shapes ``compare`` writes), since training three cells at T = 1000 for 50 record steps
would take hours and the dashboard's cost depends only on the tables' sizes. Reported, server side:

- first render: every callback of a fresh page, one after another, with cold caches (the browser
  issues them concurrently, so this is an upper bound on the server's share);
- each callback afterwards (warm cache, a control changed), median of repeats.

Targets (issue 5): first render within 2 s, each callback within 300 ms, on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _timing import timed

from gradscope.storage import TABLES, RunWriter
from gradscope_dashboard.app import (
    control_state,
    render_dynamics,
    render_gates,
    render_heatmaps,
    render_learning,
    render_memory,
)
from gradscope_dashboard.data import RunStore

GATES = {"gru": ("reset", "update", "candidate", "keep"), "lstm": ("input", "forget", "cell", "output", "keep")}


def _frame(table: str, columns: dict) -> pd.DataFrame:
    return pd.DataFrame(columns)[list(TABLES[table])]


def synthetic_run(path: Path, steps: int, seq_len: int, hidden: int, seed: int) -> None:
    """A completed run directory with ``compare``'s tables for rnn, gru and lstm (readout "last")."""
    rng = np.random.default_rng(seed)
    record_steps = np.arange(steps) * 10
    config = {"task": "adding", "seq_len": seq_len, "hidden_size": hidden, "num_layers": 1, "task_options": {},
              "steps": int(record_steps[-1])}  # fmt: skip
    meta = {"task": {"name": "adding", "length": seq_len, "metric": "mse", "baseline_loss": 1 / 6}}
    writer = RunWriter(path, config, meta, overwrite=True)
    t = np.arange(seq_len)
    completed = []
    for cell in ("rnn", "gru", "lstm"):
        quantities = ("grad_x", "grad_h", "grad_c") if cell == "lstm" else ("grad_x", "grad_h")
        base = dict(cell=cell, readout="last", layer=0, direction="forward")
        for step in record_steps:
            for batch in ("probe", "train"):
                for quantity in quantities:
                    norm = np.exp(-rng.uniform(0.001, 0.5) * (seq_len - 1 - t))
                    writer.add("curves", _frame("curves", dict(step=step, batch=batch, quantity=quantity, t=t,
                               lag=seq_len - 1 - t, norm=norm, relative=norm / norm.max(), **base)))  # fmt: skip
                    writer.add("fits", _frame("fits", dict(step=[step], batch=batch, quantity=quantity,
                               rate=rng.uniform(0, 1), half_life=rng.uniform(1, 100), horizon=pd.array([50], "Int64"),
                               r2=0.99, regime="vanishing", points=seq_len, **base)))  # fmt: skip
                for gate in GATES.get(cell, ()):
                    mean = rng.uniform(0, 1, seq_len)
                    writer.add("gates", _frame("gates", dict(step=step, batch=batch, gate=gate, t=t, mean=mean,
                               q10=mean * 0.8, q90=np.minimum(mean * 1.2, 1), saturated=rng.uniform(0, 1, seq_len),
                               **base)))  # fmt: skip
            if cell != "rnn":
                keep = rng.uniform(0.3, 0.99, hidden)
                writer.add("time_constants", _frame("time_constants", dict(step=step, unit=np.arange(hidden),
                           keep=keep, tau=1 / (1 - keep), **base)))  # fmt: skip
            writer.add("jacobians", _frame("jacobians", dict(step=[step], lyapunov_max=-0.1, spectral_norm_mean=0.9,
                       spectral_norm_max=1.1, **base)))  # fmt: skip
            for split in ("train", "test", "gap"):
                writer.add("metrics", _frame("metrics", dict(step=[step], cell=cell, readout="last", split=split,
                           loss=rng.uniform(0, 0.2), metric=rng.uniform(0, 0.2))))  # fmt: skip
            completed.append({"cell": cell, "readout": "last", "step": int(step)})
        writer.add("params", _frame("params", dict(cell=[cell, cell], readout="last", module=["recurrent", "head"],
                   parameters=[1000, 65])))  # fmt: skip
    writer.commit(completed)
    writer.finish("completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="record steps per run")
    parser.add_argument("--seq-len", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.runs):
            synthetic_run(root / f"run{i}", args.steps, args.seq_len, 64, seed=i)
        names = [f"run{i}" for i in range(args.runs)]
        configs = ["rnn/last", "gru/last", "lstm/last"]
        heat = "run0|lstm/last"
        last = (args.steps - 1) * 10  # the page's step slider starts at the latest record step

        def callbacks(store: RunStore) -> dict:
            return {
                "controls": lambda: control_state(store, names, configs),
                "memory": lambda: render_memory(store.load(names), configs, "grad_x", last, 0, "forward", "log",
                                                "probe", "light"),
                "heatmaps": lambda: render_heatmaps(store.load(names), heat, "grad_x", 0, "forward", "probe", "light"),
                **{
                    f"gates:{which}": lambda which=which: render_gates(
                        store.load(names), which, configs, last, 0, "forward", "probe", "light"
                    )
                    for which in ("profiles", "keep", "saturation")
                },
                "dynamics": lambda: render_dynamics(store.load(names), configs, last, 0, "forward", "light"),
                "learning": lambda: render_learning(store.load(names), configs, "light"),
            }  # fmt: skip

        cold = RunStore(root)
        first = {name: timed(fn) for name, fn in callbacks(cold).items()}
        warm = {name: statistics.median(timed(fn) for _ in range(args.repeats)) for name, fn in callbacks(cold).items()}
    size = f"{args.runs} runs × 3 cells × T = {args.seq_len} × {args.steps} record steps"
    print(f"dashboard callbacks, server side, {size}")
    print(f"first render (every callback, cold, one after another): {sum(first.values()):.2f} s")
    for name in first:
        print(f"  {name:19s} cold {first[name] * 1000:7.0f} ms   warm median {warm[name] * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
