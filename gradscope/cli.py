"""The ``gradscope`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import gradscope

_CELLS = {"rnn": gradscope.RNN, "gru": gradscope.GRU, "lstm": gradscope.LSTM}


def _demo(args: argparse.Namespace) -> int:
    """Record one recurrent layer on random data and print its per-step gradient norms."""
    import torch

    torch.manual_seed(args.seed)
    layer = _CELLS[args.cell](args.input_size, args.hidden_size, batch_first=True)
    head = torch.nn.Linear(args.hidden_size, 1)
    x = torch.randn(args.batch_size, args.seq_len, args.input_size)
    target = x[:, 0, :1]  # the answer is in the first step: can its gradient reach back there?
    with gradscope.record(layer) as rec:
        out, _ = layer(x)
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), target)
        loss.backward()
    frame = rec.trace.to_frame()
    table = frame[frame["kind"] == "norm"].pivot(index="t", columns="quantity", values="mean")
    columns = [q for q in ("grad_x", "grad_h", "grad_c") if q in table]
    table = table[columns]
    keep = frame[frame["quantity"] == "keep"].set_index("t")["mean"]
    if not keep.empty:
        table["keep"] = keep
    table.insert(0, "lag", table.index.max() - table.index)
    print(
        f"{args.cell.upper()}(input_size={args.input_size}, hidden_size={args.hidden_size}), "
        f"B={args.batch_size}, T={args.seq_len}, loss on the last step = {loss.item():.4f}"
    )
    print("batch mean of the L2 norm of each gradient at step t (keep: mean kept fraction):")
    print(table.to_string(float_format=lambda v: f"{v:.3e}"))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradscope",
        description="Per-timestep gradient-flow diagnostics for RNN, GRU and LSTM layers.",
    )
    parser.add_argument("--version", action="version", version=f"gradscope {gradscope.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="record a layer on random data and print its per-step gradient norms")
    demo.add_argument("--cell", choices=sorted(_CELLS), default="lstm")
    demo.add_argument("--seq-len", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--input-size", type=int, default=4)
    demo.add_argument("--hidden-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
