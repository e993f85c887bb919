"""Recording overhead with each variant alone in its own process, under the allocator settings named.

Run: ``.venv/bin/python benchmarks/alone.py [--points lstm:1:32:100:8:128 ...] [--allocators default kept]``.

``grid.py`` interleaves its variants in one process, so what one call leaves in the allocator is there for the
next, whatever variant that is. A training loop runs one variant over and over, and there glibc's malloc can
behave differently: it hands the top of its heap back to the kernel whenever more than its trim threshold lies
free there (by default twice the largest block it has mapped for an allocation and freed), and the next call
faults those pages back in, one by one. Here each variant of ``grid.py`` (a, b, c, d0, d1 at one point) runs
``--calls`` times in a fresh process, and its median call is timed, under each of these allocator settings:

- ``default``: the environment as it is;
- ``kept``: ``GLIBC_TUNABLES`` with malloc's mmap and trim thresholds at their largest, so that glibc keeps what
  is freed (about what tcmalloc and jemalloc do);
- ``preload=PATH``: ``LD_PRELOAD`` another malloc, e.g. tcmalloc's ``libtcmalloc_minimal.so.4``.

Every variant runs ``--repeats`` times per allocator, the variants in alternating order; a time is the median of
those processes' medians, and the ratios are of those times. Results: a Markdown table (``--out``, default
``benchmarks/RESULTS-alone.md``; ``-`` prints it), rewritten after every point.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
from grid import TORCH_CELLS, Bench, Point, _commit, _cpu_model, _ratio, _seconds, _table, _write_atomically

VARIANTS = ("a", "b", "c", "d0", "d1")
RATIOS = (("b", "a"), ("c", "a"), ("d0", "a"), ("d1", "d0"))
ALLOCATORS = {
    "default": {},
    "kept": {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"},
}
DEFAULT_POINTS = [
    "lstm:1:32:100:8:64",
    "lstm:1:64:100:1:64",
    "lstm:1:32:100:8:128",
    "lstm:2:32:100:8:128",
    "lstm:1:32:256:8:128",
    "lstm:1:32:100:8:512",
    "gru:1:32:100:8:128",
    "rnn:1:32:100:8:128",
]


def _point(text: str) -> Point:
    """``cell:layers:B:T:D:M`` → a grid point."""
    parts = text.split(":")
    if len(parts) != 6 or parts[0] not in TORCH_CELLS or not all(p.isdigit() for p in parts[1:]):
        expected = f"cell:layers:B:T:D:M with cell in {list(TORCH_CELLS)}"
        raise argparse.ArgumentTypeError(f"a point is {expected}, got {text!r}")
    return Point(parts[0], *(int(p) for p in parts[1:]))


def _allocator(name: str) -> str:
    """An allocator setting's name, checked (see :func:`_environment`)."""
    if not name.startswith("preload=") and name not in ALLOCATORS:
        raise argparse.ArgumentTypeError(f"an allocator is one of {list(ALLOCATORS)} or preload=PATH, got {name!r}")
    return name


def _environment(name: str) -> dict[str, str]:
    """The environment variables of an allocator setting."""
    return {"LD_PRELOAD": name.split("=", 1)[1]} if name.startswith("preload=") else ALLOCATORS[name]


def _words(environment: dict[str, str]) -> str:
    return " ".join(f"`{k}={v}`" for k, v in environment.items()) or "the environment as found"


def _child(point: Point, variant: str, calls: int, seed: int) -> None:
    """Prints the median seconds of ``calls`` calls of one variant, after 3 calls to warm up."""
    torch.manual_seed(seed)
    cpu = torch.device("cpu")
    run = Bench(point, ["auto"], cpu).variants[variant]
    for _ in range(3):
        _seconds(run, cpu)
    print(statistics.median(_seconds(run, cpu) for _ in range(calls)))


def _alone(point: Point, variant: str, calls: int, seed: int, environment: dict[str, str]) -> float:
    p = point
    command = [sys.executable, __file__, "--child", f"{p.cell}:{p.layers}:{p.batch}:{p.steps}:{p.input}:{p.hidden}"]
    command += ["--variant", variant, "--calls", str(calls), "--seed", str(seed)]
    result = subprocess.run(command, env=os.environ | environment, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def _row(point: Point, allocator: str, seconds: dict[str, float]) -> list[str]:
    p = point
    sizes = [p.cell, str(p.layers), str(p.batch), str(p.steps), str(p.input), str(p.hidden)]
    return [*sizes, allocator, f"{seconds['a'] * 1e3:.1f}", *(_ratio(seconds[n] / seconds[d]) for n, d in RATIOS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", type=_point, default=[_point(p) for p in DEFAULT_POINTS])
    parser.add_argument(
        "--allocators", nargs="+", type=_allocator, default=["default", "kept"], help="default, kept, preload=PATH"
    )
    parser.add_argument("--calls", type=int, default=20, help="timed calls per process")
    parser.add_argument("--repeats", type=int, default=2, help="processes per variant and allocator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "RESULTS-alone.md"), help="Markdown, - for stdout")
    parser.add_argument("--child", type=_point, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.variant, args.calls, args.seed)
        return
    environments = {name: _environment(name) for name in args.allocators}
    header = ["cell", "layers", "B", "T", "D", "M", "allocator", "a ms", *(f"{n}/{d}" for n, d in RATIOS)]
    head = [
        "# gradscope recording overhead, each variant alone in its process",
        "",
        "Written by `benchmarks/alone.py` (its docstring says what it measures; `grid.py`'s columns). "
        "Times are medians; ratios are of the medians.",
        "",
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- commit: {_commit()}",
        f"- machine: {platform.processor() or platform.machine()} ({_cpu_model()}, "
        f"{torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"glibc {platform.libc_ver()[1] or 'not found'}",
        "- allocators: " + "; ".join(f"{n}: {_words(e)}" for n, e in environments.items()),
        "",
    ]
    rows: list[list[str]] = []
    out = None if args.out == "-" else Path(args.out)
    for point in args.points:
        times: dict[str, dict[str, list[float]]] = {name: {v: [] for v in VARIANTS} for name in environments}
        for repeat in range(args.repeats):
            for name, environment in environments.items():
                for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                    times[name][variant].append(_alone(point, variant, args.calls, args.seed, environment))
        for name in environments:
            rows.append(_row(point, name, {v: statistics.median(t) for v, t in times[name].items()}))
            print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr if out is None else sys.stdout, flush=True)
        text = "\n".join([*head, *_table(header, rows)]) + "\n"
        if out is not None:
            _write_atomically(out, text)
    if out is None:
        print(text, end="")


if __name__ == "__main__":
    main()
