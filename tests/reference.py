"""An independent, deliberately plain unrolled implementation used as the reference in tests.

It does not import gradscope. Every gate is its own matmul on its own weight slice, written from the
seed notes' equations in torch's parameterisation, and every per-step state calls retain_grad(), so
after backward ``.grad`` on it is the total derivative through time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

ACT = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda v: v,
    "softsign": lambda v: v / (1 + v.abs()),
    "hardtanh": lambda v: v.clamp(-1, 1),
}


@dataclass
class DirectionSteps:
    x: Tensor  # the layer input as seen by this direction, [T, B, D], retain_grad
    h: list[Tensor] = field(default_factory=list)  # indexed by original t
    c: list[Tensor] = field(default_factory=list)
    gates: dict[str, list[Tensor]] = field(default_factory=dict)


def _lin(v: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    out = v @ w.t()
    return out if b is None else out + b


def _step(kind, p, x_t, h, c, opts):
    m = h.shape[-1]
    w_ih, w_hh, b_ih, b_hh = p

    def block(k):
        sl = slice(k * m, (k + 1) * m)
        return w_ih[sl], w_hh[sl], (None if b_ih is None else b_ih[sl]), (None if b_hh is None else b_hh[sl])

    if kind == "rnn":
        wi, wh, bi, bh = block(0)
        act = torch.tanh if opts.get("nonlinearity", "tanh") == "tanh" else torch.relu
        return act(_lin(x_t, wi, bi) + _lin(h, wh, bh)), None, {}
    if kind == "gru":
        (wir, whr, bir, bhr), (wiz, whz, biz, bhz), (win, whn, bin_, bhn) = block(0), block(1), block(2)
        r = torch.sigmoid(_lin(x_t, wir, bir) + _lin(h, whr, bhr))
        z = torch.sigmoid(_lin(x_t, wiz, biz) + _lin(h, whz, bhz))
        if opts.get("reset", "after") == "after":
            n = torch.tanh(_lin(x_t, win, bin_) + r * _lin(h, whn, bhn))
        else:
            n = torch.tanh(_lin(x_t, win, bin_) + _lin(r * h, whn, bhn))
        h_new = (1 - z) * n + z * h
        return h_new, None, {"reset": r, "update": z, "candidate": n}
    (wii, whi, bii, bhi), (wif, whf, bif, bhf), (wig, whg, big, bhg), (wio, who, bio, bho) = (
        block(0), block(1), block(2), block(3),
    )  # fmt: skip
    f_c = ACT[opts.get("cell_activation", "tanh")]
    f_h = ACT[opts.get("hidden_activation", "tanh")]
    i = torch.sigmoid(_lin(x_t, wii, bii) + _lin(h, whi, bhi))
    f = torch.sigmoid(_lin(x_t, wif, bif) + _lin(h, whf, bhf))
    g = f_c(_lin(x_t, wig, big) + _lin(h, whg, bhg))
    o = torch.sigmoid(_lin(x_t, wio, bio) + _lin(h, who, bho))
    c_new = f * c + i * g
    c_new.retain_grad()
    return o * f_h(c_new), c_new, {"input": i, "forget": f, "cell": g, "output": o}


def unrolled(kind: str, module, x: Tensor, h0: Tensor, c0: Tensor | None, opts: dict):
    """Run ``module``'s weights over time-major ``x`` [T, B, D] with initial states [L*K, B, M].

    Returns (output [T, B, K*M], h_n, c_n, steps) with steps[(layer, direction)] a DirectionSteps.
    Dropout is not applied (call in eval mode or with dropout=0).
    """
    directions = ("forward", "backward") if module.bidirectional else ("forward",)
    steps: dict[tuple[int, str], DirectionSteps] = {}
    h_n, c_n = [], []
    layer_input = x
    T = x.shape[0]
    for layer in range(module.num_layers):
        outs = []
        for d, direction in enumerate(directions):
            sfx = f"l{layer}" + ("_reverse" if direction == "backward" else "")
            p = (
                getattr(module, "weight_ih_" + sfx),
                getattr(module, "weight_hh_" + sfx),
                getattr(module, "bias_ih_" + sfx, None) if module.bias else None,
                getattr(module, "bias_hh_" + sfx, None) if module.bias else None,
            )
            x_in = layer_input.clone()
            if x_in.requires_grad:
                x_in.retain_grad()
            else:
                x_in.requires_grad_(True)
            rec = DirectionSteps(x=x_in, h=[None] * T, c=[None] * T)
            idx = layer * len(directions) + d
            h, c = h0[idx], (c0[idx] if c0 is not None else None)
            order = range(T) if direction == "forward" else reversed(range(T))
            for t in order:
                h, c, gates = _step(kind, p, x_in[t], h, c, opts)
                h.retain_grad()
                rec.h[t], rec.c[t] = h, c
                for name, value in gates.items():
                    rec.gates.setdefault(name, [None] * T)[t] = value
            steps[(layer, direction)] = rec
            outs.append(torch.stack(rec.h))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outs, dim=2)
    c_final = torch.stack(c_n) if kind == "lstm" else None
    return layer_input, torch.stack(h_n), c_final, steps
