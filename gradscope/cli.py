"""The ``gradscope`` command line: ``run`` a comparison, or the ``demo``."""

from __future__ import annotations

import argparse
import ipaddress
import math
import sys
import threading
import time
import webbrowser
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import gradscope
from gradscope.experiments import CELLS, FORGET_BIAS, compare, run_summary
from gradscope.storage import Run
from gradscope.tasks import TASKS

DEMO = dict(
    task="adding",
    seq_len=50,
    readouts={"rnn": ("last",), "gru": ("last",), "lstm": ("last", "max")},
    steps=500,
    batch_size=32,
    hidden_size=32,
    lr=0.01,
    forget_bias="chrono",
    record_every=100,
    eval_size=256,
    probe_size=32,
    jacobian_samples=2,
)
"""The demo's comparison: the adding problem at T = 50, where after 500 steps the story of the seed
notes shows on its own results (see the README for what it shows and why chrono initialisation)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``gradscope run: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Progress:
    """One line per (cell, readout) on stderr, redrawn in place: step, loss and the current half-life."""

    def __init__(self, stream: Any = None, interval: float = 0.2):
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.live = self.stream.isatty()  # redraw in place; otherwise one line per record step
        self.current: tuple[str, str] | None = None
        self.last_draw = 0.0

    def __call__(self, info: dict[str, Any]) -> None:
        key = (info["cell"], info["readout"])
        done = info["step"] == info["steps"]
        if not self.live:
            if info["recorded"]:
                self.stream.write(self._line(info) + "\n")
                self.stream.flush()
            return
        if key != self.current:
            if self.current is not None:
                self.stream.write("\n")
            self.current = key
        elif not (done or info["recorded"]) and time.monotonic() - self.last_draw < self.interval:
            return
        self.last_draw = time.monotonic()
        self.stream.write("\r" + self._line(info))
        if done:
            self.stream.write("\n")
            self.current = None
        self.stream.flush()

    @staticmethod
    def _line(info: dict[str, Any]) -> str:
        width = 24
        filled = round(width * info["step"] / info["steps"])
        half_life = info["half_life"]
        half = "—" if math.isnan(half_life) else ("inf" if math.isinf(half_life) else f"{half_life:.1f}")
        return (
            f"{info['cell']:>4}/{info['readout']:<8} [{'#' * filled}{'.' * (width - filled)}] "
            f"step {info['step']:>5}/{info['steps']}  loss {info['loss']:.4f}  half-life {half:>6} steps"
        )


def _print_summary(run: Run) -> None:
    table = run_summary(run)
    shown = table[["cell", "readout", "test_loss", "baseline_loss", "loss_ratio", "half_life", "horizon",
                   "median_tau", "parameters"]].astype({"horizon": object})  # fmt: skip
    print(f"\n{run.info['task']['name']} T={run.config['seq_len']}, after {run.config['steps']} steps "
          f"(test loss vs the trivial predictor's; half-life and horizon of dL/dx_t in steps):")  # fmt: skip
    shown.loc[shown["horizon"].isna(), "horizon"] = "-"  # never below 1e-3 within the sequence
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))


def _task_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option expects key=value, got: {pair!r}")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return options


def _run(args: argparse.Namespace) -> int:
    try:
        run = compare(
            args.task,
            args.seq_len,
            cells=args.cells,
            readouts=args.readouts,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            bidirectional=args.bidirectional,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            record_every=args.record_every,
            seed=args.seed,
            out=args.out,
            clip=args.clip,
            forget_bias=args.forget_bias,
            train_size=args.train_size,
            eval_size=args.eval_size,
            probe_size=args.probe_size,
            jacobian_samples=args.jacobian_samples,
            overwrite=args.overwrite,
            progress=_Progress(),
            **_task_options(args.option),
        )
    except (ValueError, FileExistsError, NotADirectoryError) as error:
        print(f"gradscope run: error: {error}", file=sys.stderr)
        return 2
    _print_summary(run)
    print(f"\nthe run is in {run.path}/ (gradscope.load_run({str(run.path)!r}))")
    return 0


def _story(run: Run) -> list[tuple[bool, str]]:
    """The seed's claims, checked on the run's own final numbers (nothing here is tuned)."""
    table = run_summary(run).set_index(["cell", "readout"])
    last = table.xs("last", level="readout")
    fits = run.fits
    rates = fits[(fits["step"] == run.config["steps"]) & (fits["batch"] == "probe") & (fits["layer"] == 0)
                 & (fits["quantity"] == "grad_x")].set_index(["cell", "readout"])["rate"]  # fmt: skip
    return [
        (last["half_life"].idxmin() == "rnn",
         "the simple RNN has the shortest gradient half-life: "
         + ", ".join(f"{c} {v:.3g}" for c, v in last["half_life"].items())),
        (last["test_loss"].idxmax() == "rnn",
         "the simple RNN has the worst task loss: " + ", ".join(f"{c} {v:.3g}" for c, v in last["test_loss"].items())),
        (rates[("lstm", "max")] < rates[("lstm", "last")],
         "LSTM with max pooling passes more gradient to early steps than with the last state "
         f"(decay rate per step {rates[('lstm', 'max')]:.3g} vs {rates[('lstm', 'last')]:.3g})"),
    ]  # fmt: skip


def _serve(root: Path, host: str, port: int, open_browser: bool, debug: bool, query: str = "") -> int:
    """Serve the dashboard over the runs under ``root`` until interrupted."""
    from gradscope_dashboard import create_app  # imported here: Dash is only needed to serve

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: serving on {host}, not a loopback address: anyone who can reach it can read the runs "
              f"under {root}", file=sys.stderr)  # fmt: skip
    try:
        app = create_app(root)
    except ValueError as error:
        print(f"gradscope dashboard: error: {error}", file=sys.stderr)
        return 2
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/{query}"
    print(f"gradscope dashboard: {url}  (runs under {root.resolve()}; Ctrl-C stops it)", flush=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    app.run(host=host, port=port, debug=debug)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    return _serve(args.runs_root, args.host, args.port, args.open, args.debug)


def _report(args: argparse.Namespace) -> int:
    from gradscope.report import write_report, write_static

    try:
        path = write_report(args.runs, args.output, theme=args.theme)
    except ValueError as error:
        print(f"gradscope report: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.static is not None:
        from gradscope.storage import load_run

        runs = []
        for item in args.runs:
            try:
                runs.append(load_run(item))
            except ValueError:
                continue  # write_report has already said so
        result = write_static(runs, args.static, theme=args.theme)
        for file in result.files:
            print(f"wrote {file}")
        if result.problem:
            print(f"gradscope report: static images not written: {result.problem}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    print("gradscope demo: RNN, GRU and LSTM (last state, and max pooling) on the adding problem, T=50")
    run = compare(**DEMO, seed=args.seed, out=args.out, overwrite=True, progress=_Progress())
    _print_summary(run)
    print("\nthe seed's story, on these results:")
    for holds, claim in _story(run):
        print(f"  [{'yes' if holds else 'NO'}] {claim}")
    print(f"\n{time.monotonic() - started:.0f} s; the run is in {run.path}/ "
          f"(load it with gradscope.load_run({str(run.path)!r}))")  # fmt: skip
    if args.no_serve:
        return 0
    return _serve(run.path.parent, args.host, args.port, args.open, False, query=f"?runs={run.path.name}")


def _serving_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument("--open", action="store_true", help="open the dashboard in a web browser")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradscope", description="Per-timestep gradient-flow diagnostics for RNN, GRU and LSTM.")
    parser.add_argument("--version", action="version", version=f"gradscope {gradscope.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="train RNN, GRU and LSTM side by side on a task, recording their gradient flow",
        description="Train every (cell, readout) on the same data stream and store what gradscope.analysis "
        "measures at every record step in a run directory.",
    )
    run.add_argument("--task", required=True, choices=TASKS, help="the task (see gradscope.tasks)")
    run.add_argument("--seq-len", type=int, required=True, help="sequence length T (copy: the delay)")
    run.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS), help="cells to train")
    run.add_argument("--readouts", nargs="+", choices=["last", "max", "mean", "sequence"],
                     help="readouts over time, for every cell (default: last; copy: sequence)")  # fmt: skip
    run.add_argument("--out", type=Path, required=True, help="the run directory to write")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    run.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    run.add_argument("--batch-size", type=int, default=64, help="samples per step (default 64)")
    run.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    run.add_argument("--hidden-size", type=int, default=64, help="hidden units M (default 64)")
    run.add_argument("--num-layers", type=int, default=1, help="stacked recurrent layers (default 1)")
    run.add_argument("--bidirectional", action="store_true", help="both directions (each one measured)")
    run.add_argument("--record-every", type=int, default=25, help="record every N steps, and at 0 and the end")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default 0)")
    run.add_argument("--clip", type=float, default=None, help="clip the gradient norm to this value")
    run.add_argument("--forget-bias", choices=FORGET_BIAS, default="default",
                     help="init of the LSTM forget / GRU update gate bias: torch default, 1, or chrono")  # fmt: skip
    run.add_argument("--train-size", type=int, default=None,
                     help="train on a fixed set of this many samples (default: fresh samples every step)")  # fmt: skip
    run.add_argument("--eval-size", type=int, default=512, help="held-out samples (default 512)")
    run.add_argument("--probe-size", type=int, default=64, help="samples in the probe batch recorded in full")
    run.add_argument("--jacobian-samples", type=int, default=4, help="probe samples whose Jacobians are analysed")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a task option, e.g. symbols=4 for recall (repeatable)")  # fmt: skip
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="the main job: a compact RNN / GRU / LSTM comparison, its summary, then the dashboard",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--no-serve", action="store_true", help="do not serve the dashboard afterwards")
    _serving_options(demo)
    demo.set_defaults(handler=_demo)

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML report of one or more runs",
        description="The dashboard's figures, the summary, each run's configuration and what every metric "
        "means, in one HTML file that opens offline.",
    )
    report.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    report.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="file (default report.html)")
    report.add_argument("--theme", choices=["light", "dark"], default="light")
    report.add_argument("--static", type=Path, metavar="DIR",
                        help="also write each figure as PNG and SVG into DIR (needs kaleido and Chromium)")  # fmt: skip
    report.set_defaults(handler=_report)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the dashboard over the run directories under RUNS_ROOT",
        description="Compare runs in the browser. Only run directories directly under RUNS_ROOT are read.",
    )
    dashboard.add_argument("runs_root", nargs="?", type=Path, default=Path("runs"), metavar="RUNS_ROOT",
                           help="folder holding run directories (default ./runs)")  # fmt: skip
    _serving_options(dashboard)
    dashboard.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error pages)")
    dashboard.set_defaults(handler=_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
