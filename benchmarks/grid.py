"""Recording overhead over a grid of sizes: time and memory of full and summary recording, in one process.

Run: ``.venv/bin/python benchmarks/grid.py [--cells lstm --batch 32 --steps 100 --input 8 --hidden 128 --layers 1]``.
Without restrictions the grid is every combination of cells rnn/gru/lstm, layers 1 and 2, B 32 and 64,
T 100, 256 and 1000, D 1 and 8, M 64, 128 and 512 (216 points: restrict the axes for a quick look). For each point
(cell, layers, B, T, D, M), on a fixed random input ``x [B, T, D]``:

- (a) ``torch.nn.{RNN,GRU,LSTM}(D, M, num_layers=layers, batch_first=True)``: forward, ``out.sum().backward()``;
- (b) the same under ``gradscope.record(module, detail="full")``, then reading the trace once (reading
  derives the gates where backward has not already);
- (c) the same as (b) with ``detail="summary"``;
- (d0) one Adam training step (MSE of the "last" readout) of :class:`gradscope.experiments.SequenceModel` of that
  cell and size, unrecorded; (d1) the same step with its forward and backward under
  ``record(detail="summary")``, as ``compare`` does on its record steps.

``--paths auto fused unrolled`` adds (b) and (c) with the path forced (``b_fused``, ``c_unrolled``, ...; unrolled
is slow).
The variants run in interleaved rounds, every other one in reverse (a, b, c, ..., d0, d1, then d1, d0, ..., a);
a ratio is the median over the rounds of the ratio within a round. A separate pass then measures the peak
memory of one call of each variant (torch.profiler's allocation events on CPU, ``max_memory_allocated`` on
CUDA) and the memory full recording keeps while its Recorder lives, compared with the tensors its trace holds.

Results go to a Markdown file (``--out``, default ``benchmarks/RESULTS.md``; ``-`` prints it instead),
rewritten after every point, so an interrupted run keeps what it measured. The file has one section per
cell, each from one run (its command, date, commit and machine at its head): a run replaces the sections
of the cells it measures and keeps the others, so that the grid, hours long on a small CPU, can be
measured one cell at a time. Ratios, not absolute times,
are what to compare across machines. On a machine busy with other work, ``--threads`` below the number of
cores avoids OpenMP's waits for a core, which can make small CPU kernels a hundred times slower.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import accumulate, product
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from _timing import timed
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import gradscope
from gradscope.experiments import SequenceModel
from gradscope.layers import PATHS

TORCH_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
FULL_TIME_TARGET = 1.3  # b/a
TRAIN_TIME_TARGET = 1.15  # d1/d0
TRAIN_MEMORY_TARGET = 1.1  # peak d1/d0
MIN_SECONDS = 3.0  # a point runs fewer rounds (down to 1) when its rounds of (a) alone would take longer
MB = 2**20
DEFINITIONS = """\
- **a ms**: median time of (a), `torch.nn` forward + backward of `out.sum()`.
- **b/a, c/a**: (b) full and (c) summary recording (path auto, trace read once) relative to (a);
  **b_fused/a, c_fused/a** and **b_unrolled/a, c_unrolled/a** (with `--paths`): the same with the path forced.
- **d0/a**: an unrecorded Adam training step of `SequenceModel` relative to (a), for context;
  **d1/d0**: the same step recorded with `detail="summary"` relative to the unrecorded one.
- **peak …**: the same ratios for the peak memory of one call, above what was allocated before it:
  (a), (b) and (c) find the parameters' gradients allocated, a training step allocates them (Adam's state
  exists).
- **retained MB**: memory that (b) leaves allocated while its Recorder lives, less what (a) leaves;
  **trace MB**: the distinct storages of the trace's tensors (x, h, c, grad_x, grad_h, grad_c, gates, h0, c0,
  weights), less the benchmark's own input; **retained/trace** ≈ 1: no hidden copies kept alive.
- Time ratios are medians over interleaved rounds (a, b, c, …, d0, d1 in turn, every other round in reverse, one
  process) of the ratio within a round; **rounds** is their number. – : not measured."""


@dataclass(frozen=True)
class Point:
    cell: str
    layers: int
    batch: int
    steps: int
    input: int
    hidden: int


@dataclass
class Variant:
    run: Callable[[], object]
    model: nn.Module  # whose gradients are reset before each call
    training_step: bool = False  # sets the gradients to None itself


@dataclass
class Result:
    point: Point
    seconds: dict[str, list[float]]  # per variant, one time per round
    peak: dict[str, int] | None  # per variant, bytes; None when memory was not measured
    retained: int | None  # bytes
    trace: int | None  # bytes

    def time_ratio(self, numerator: str, denominator: str) -> float:
        pairs = zip(self.seconds[numerator], self.seconds[denominator], strict=True)
        return statistics.median(n / d for n, d in pairs)

    def peak_ratio(self, numerator: str, denominator: str) -> float | None:
        return None if self.peak is None else self.peak[numerator] / max(self.peak[denominator], 1)

    def retained_ratio(self) -> float | None:
        return None if self.retained is None or not self.trace else self.retained / self.trace


class Bench:
    """The modules, data and timed variants of one grid point."""

    def __init__(self, point: Point, paths: list[str], device: torch.device) -> None:
        self.x = torch.randn(point.batch, point.steps, point.input, device=device)
        module = TORCH_CELLS[point.cell](point.input, point.hidden, num_layers=point.layers, batch_first=True)
        module.to(device)
        model = SequenceModel(point.cell, point.input, point.hidden, 1, "last", point.layers).to(device)
        optimizer = torch.optim.Adam(model.parameters())
        y = torch.randn(point.batch, 1, device=device)
        self.variants = {"a": Variant(partial(_forward_backward, module, self.x), module)}
        for path in paths:
            for letter, detail in (("b", "full"), ("c", "summary")):
                run = partial(_recorded, module, self.x, detail, path)
                self.variants[_variant_name(letter, path)] = Variant(run, module)
        for name, recorded in (("d0", False), ("d1", True)):
            self.variants[name] = Variant(partial(_train_step, model, optimizer, self.x, y, recorded), model, True)


def _work(point: Point) -> int:
    """Multiply-adds of one forward pass of (a), to order the grid by."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[point.cell]
    return point.layers * point.batch * point.steps * gates * point.hidden * (point.input + point.hidden)


def _variant_name(letter: str, path: str) -> str:
    return letter if path == "auto" else f"{letter}_{path}"


def _ratios(paths: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) of every reported ratio."""
    recorded = [(_variant_name(letter, path), "a") for path in paths for letter in "bc"]
    return [*recorded[:2], ("d0", "a"), ("d1", "d0"), *recorded[2:]]


def _forward_backward(module: nn.Module, x: Tensor) -> None:
    out, _ = module(x)
    out.sum().backward()


def _recorded(module: nn.Module, x: Tensor, detail: str, path: str) -> gradscope.Recorder:
    with gradscope.record(module, detail=detail, path=path) as rec:
        _forward_backward(module, x)
    list(rec.trace)  # builds each layer's trace (full detail: with its gates) as any reader would
    return rec


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, recorded: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with gradscope.record(model, detail="summary") if recorded else nullcontext():
        F.mse_loss(model(x), y).backward()
    optimizer.step()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(variant: Variant, device: torch.device) -> float:
    """Wall-clock seconds of one call of ``variant`` to completion, its gradients set to None first (untimed)."""

    def to_completion() -> None:
        variant.run()
        _synchronize(device)

    variant.model.zero_grad(set_to_none=True)
    _synchronize(device)
    return timed(to_completion)


def _time(bench: Bench, max_rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Per variant, its time in each of the interleaved rounds; fewer rounds where (a) is slow."""
    for variant in bench.variants.values():  # warm up
        _seconds(variant, device)
    rounds = min(max_rounds, math.ceil(MIN_SECONDS / _seconds(bench.variants["a"], device)))
    seconds: dict[str, list[float]] = {name: [] for name in bench.variants}
    names = list(bench.variants)
    for index in range(rounds):
        # every other round in reverse: the call after one that freed much memory pays for faulting it back in,
        # and it should not always be the same variant
        for name in names if index % 2 == 0 else names[::-1]:
            seconds[name].append(_seconds(bench.variants[name], device))
    return seconds


def _allocated(fn: Callable[[], object], device: torch.device) -> tuple[int, int, object]:
    """Peak and net bytes allocated during one call of ``fn``, and what it returned (alive when the net is read)."""
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before, result
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    running = list(accumulate((e.nbytes() for e in events), initial=0))
    return max(running), running[-1], result


def _trace_bytes(trace: gradscope.Trace, exclude: set[int]) -> int:
    """Bytes of the distinct storages that a full trace's tensors use, except those whose data_ptr is in ``exclude``."""
    storages: dict[int, int] = {}
    for layer in trace:
        tensors = [layer.x, layer.h, layer.c, layer.grad_x, layer.grad_h, layer.grad_c, *layer.gates.values()]
        for tensor in [*tensors, layer.h0, layer.c0, *(layer.weights or ())]:
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(nbytes for ptr, nbytes in storages.items() if ptr not in exclude)


def _memory(bench: Bench, device: torch.device) -> tuple[dict[str, int], int, int]:
    """Peak bytes of one call of each variant; bytes (b) keeps beyond (a) while its Recorder lives; its trace's bytes.

    Runs after the timed rounds, which allocated every parameter's gradient and Adam's state: (a), (b)
    and (c) find them zeroed in place, allocating none. A training step sets them to None itself and
    backward allocates them again, what training does: they are set to None before it, so that the
    step frees nothing allocated before the measurement (which the profiler would not see).
    """
    peak: dict[str, int] = {}
    net: dict[str, int] = {}
    for name, variant in bench.variants.items():
        variant.model.zero_grad(set_to_none=variant.training_step)
        gc.collect()
        peak[name], net[name], result = _allocated(variant.run, device)
        if name == "b":
            trace = _trace_bytes(cast(gradscope.Recorder, result).trace, {bench.x.untyped_storage().data_ptr()})
        del result
    return peak, net["b"] - net["a"], trace


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _megabytes(value: int | None) -> str:
    return "–" if value is None else f"{value / MB:.2f}"


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_line(cells) for cells in (header, ["---"] * len(header), *rows)]


def _header(ratios: list[tuple[str, str]]) -> list[str]:
    columns = [f"{n}/{d}" for n, d in ratios]
    memory = ["retained MB", "trace MB", "retained/trace"]
    return ["cell", "layers", "B", "T", "D", "M", "rounds", "a ms", *columns, *[f"peak {c}" for c in columns], *memory]


def _row(result: Result, ratios: list[tuple[str, str]]) -> list[str]:
    p = result.point
    return [
        p.cell,
        *map(str, (p.layers, p.batch, p.steps, p.input, p.hidden, len(result.seconds["a"]))),
        f"{statistics.median(result.seconds['a']) * 1e3:.1f}",
        *[_ratio(result.time_ratio(n, d)) for n, d in ratios],
        *[_ratio(result.peak_ratio(n, d)) for n, d in ratios],
        _megabytes(result.retained),
        _megabytes(result.trace),
        _ratio(result.retained_ratio()),
    ]


def _worst_and_median(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{max(known):.2f} / {statistics.median(known):.2f}" if known else "–"


def _count_above(values: Sequence[float | None], target: float) -> str:
    known = [v for v in values if v is not None]
    return str(sum(v > target for v in known)) if known else "–"


def _summary_row(label: str, results: list[Result]) -> list[str]:
    full = [r.time_ratio("b", "a") for r in results]
    summary = [r.time_ratio("c", "a") for r in results]
    train = [r.time_ratio("d1", "d0") for r in results]
    full_memory, summary_memory, train_memory = (
        [r.peak_ratio(n, d) for r in results] for n, d in (("b", "a"), ("c", "a"), ("d1", "d0"))
    )
    return [
        label,
        str(len(results)),
        *map(_worst_and_median, (full, summary, train, full_memory, summary_memory, train_memory)),
        _count_above(full, FULL_TIME_TARGET),
        _count_above(train, TRAIN_TIME_TARGET),
        _count_above(train_memory, TRAIN_MEMORY_TARGET),
    ]


def _summary_header() -> list[str]:
    return [
        "cell",
        "points",
        *[f"{c} worst / median" for c in ("b/a", "c/a", "d1/d0", "peak b/a", "peak c/a", "peak d1/d0")],
        f"b/a > {FULL_TIME_TARGET}",
        f"d1/d0 > {TRAIN_TIME_TARGET}",
        f"peak d1/d0 > {TRAIN_MEMORY_TARGET}",
    ]


# the environment variables that narrow the instructions of torch's kernels (oneDNN's, ATen's, MKL's) and gradscope's
_INSTRUCTION_VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "GRADSCOPE_NATIVE_CFLAGS",
)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown model")


def _commit() -> str:
    """The checkout's commit, marked when the library or the benchmarks' code differ from it; "unknown"
    outside a git checkout."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=Path(__file__).parent.parent, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = git("status", "--porcelain", "--", "gradscope", "benchmarks", ":(exclude)benchmarks/*.md")
    return commit + (" with uncommitted changes" if changed else "")


def _section(cell: str, results: list[Result], total: int, ratios: list[tuple[str, str]], run: list[str]) -> str:
    """One cell's section: the run that measured it, its summary row and every point."""
    return "\n".join(
        [
            f"## {cell}",
            "",
            *run,
            f"- points: {len(results)} of {total}",
            "",
            *_table(_summary_header(), [_summary_row(cell, results)]),
            "",
            *_table(_header(ratios), [_row(r, ratios) for r in results]),
        ]
    )


def _sections(text: str) -> dict[str, str]:
    """The cells' sections of a file this script wrote, by cell."""
    found: dict[str, str] = {}
    for part in ("\n" + text).split("\n## ")[1:]:
        name = part.split("\n", 1)[0]
        if name in TORCH_CELLS:
            found[name] = f"## {part}".rstrip("\n")
    return found


def _markdown(sections: dict[str, str]) -> str:
    """The whole file: column definitions and targets, a summary row per cell, then the cells' sections."""
    cells = [cell for cell in TORCH_CELLS if cell in sections]
    # a section's summary table comes before its table of points
    summaries = [next(line for line in sections[c].splitlines() if line.startswith(f"| {c} | ")) for c in cells]
    lines = [
        "# gradscope recording overhead over a grid",
        "",
        "Each cell's section below comes from one run of `benchmarks/grid.py`, named at its head (a run",
        "replaces the sections of the cells it measures). `benchmarks/gpu_check.sh` runs a slice of the grid on a",
        "GPU into `RESULTS-gpu.md`, whose sections name the card.",
        "",
        "## Columns",
        "",
        DEFINITIONS,
        "",
        "## Summary per cell",
        "",
        f"Targets: full recording b/a ≤ {FULL_TIME_TARGET}, summary-recorded training step d1/d0 ≤ "
        f"{TRAIN_TIME_TARGET}, its peak memory d1/d0 ≤ {TRAIN_MEMORY_TARGET}; the last three columns count the "
        "points above them.",
        "",
        *_table(_summary_header(), []),
        *summaries,
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(sections[c] for c in cells) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
    os.chmod(file.name, 0o644)  # a temporary file is private
    os.replace(file.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(TORCH_CELLS), choices=list(TORCH_CELLS))
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 256, 1000])
    parser.add_argument("--input", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 128, 512])
    parser.add_argument("--paths", nargs="+", default=["auto"], choices=PATHS, help="paths of (b) and (c); auto always")
    parser.add_argument("--rounds", type=int, default=5, help="at most; fewer for slow points")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "RESULTS.md"), help="Markdown file, - for stdout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:  # on a busy machine, fewer threads than cores avoid OpenMP's waits
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = list(dict.fromkeys(["auto", *args.paths]))
    ratios = _ratios(paths)
    grid = [
        Point(*values) for values in product(args.cells, args.layers, args.batch, args.steps, args.input, args.hidden)
    ]
    grid.sort(key=_work)  # cheapest first: an interrupted run has every cell at the smaller sizes
    # the CPU's model and vector instructions: torch.nn's oneDNN kernels and torch's BLAS differ most between CPUs
    machine = (
        f"{platform.processor() or platform.machine()} ({_cpu_model()}, {torch.backends.cpu.get_cpu_capability()}), "
        f"{os.cpu_count()} CPUs"
    )
    device_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    # a CPU without AVX-512 stood in for by one with it
    narrowed = [f"`{name}={os.environ[name]}`" for name in _INSTRUCTION_VARIABLES if os.environ.get(name)]
    run = [
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- commit: {_commit()}",
        f"- machine: {machine}, torch {torch.__version__}, torch threads: {torch.get_num_threads()}, "
        f"device {device}{device_name}",
        *([f"- instructions narrowed: {' '.join(narrowed)}"] if narrowed else []),
    ]
    out = None if args.out == "-" else Path(args.out)
    previous = _sections(out.read_text()) if out is not None and out.exists() else {}
    kept = {cell: section for cell, section in previous.items() if cell not in args.cells}
    log = sys.stderr if out is None else sys.stdout
    print("\n".join(_table(_header(ratios), [])), file=log, flush=True)
    results: list[Result] = []

    def markdown() -> str:
        measured = {
            cell: _section(cell, cell_results, sum(p.cell == cell for p in grid), ratios, run)
            for cell in args.cells
            if (cell_results := [r for r in results if r.point.cell == cell])
        }
        return _markdown(kept | measured)

    for point in grid:
        torch.manual_seed(args.seed)
        bench = Bench(point, paths, device)
        seconds = _time(bench, args.rounds, device)
        peak, retained, trace = (None, None, None) if args.no_memory else _memory(bench, device)
        results.append(Result(point, seconds, peak, retained, trace))
        print(_line(_row(results[-1], ratios)), file=log, flush=True)
        if out is not None:
            _write_atomically(out, markdown())
    if out is None:
        print(markdown(), end="")


if __name__ == "__main__":
    main()
