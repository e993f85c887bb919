"""Forward + backward time of recorded gradscope layers relative to torch.nn's, interleaved in one process.

Run: ``.venv/bin/python benchmarks/recording_overhead.py [--batch 64 --steps 256 --input 8 --hidden 128]``.
Prints, per cell, the median time ratio to torch.nn of (1) the gradscope layer unrecorded, (2) with
``record(detail="full")``, (3) the same followed by reading the trace (which derives the gates) and (4)
with ``record(detail="summary")``. Ratios, not absolute times, are what
to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
from _timing import timed
from torch import nn

import gradscope

CELLS = {"rnn": (nn.RNN, gradscope.RNN), "gru": (nn.GRU, gradscope.GRU), "lstm": (nn.LSTM, gradscope.LSTM)}


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    out, _ = module(x)
    out.sum().backward()


def _recorded(module: nn.Module, x: torch.Tensor, detail: str, read: bool = False) -> None:
    with gradscope.record(module, detail=detail) as rec:
        _fwd_bwd(module, x)
    if read:  # full detail derives gates and LSTM cell states when the trace is first read
        list(rec.trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--input", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.input)
    print(
        f"B={args.batch} T={args.steps} D={args.input} M={args.hidden}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    print("cell  | gradscope | full recording | full recording + reading the trace | summary recording")
    for cell in args.cells:
        torch_cls, ours_cls = CELLS[cell]
        reference = torch_cls(args.input, args.hidden, batch_first=True)
        ours = ours_cls.from_torch(reference)

        variants = {
            "torch": partial(_fwd_bwd, reference, x),
            "plain": partial(_fwd_bwd, ours, x),
            "full": partial(_recorded, ours, x, "full"),
            "full+read": partial(_recorded, ours, x, "full", True),
            "summary": partial(_recorded, ours, x, "summary"),
        }
        for fn in variants.values():  # warm up
            fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn))
        base = statistics.median(times["torch"])
        ratios = {name: statistics.median(t) / base for name, t in times.items()}
        print(
            f"{cell:5s} | {ratios['plain']:9.2f} | {ratios['full']:14.2f} | {ratios['full+read']:33.2f} | "
            f"{ratios['summary']:17.2f}"
        )


if __name__ == "__main__":
    main()
