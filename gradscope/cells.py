"""One time step of each recurrent cell, as pure functions of (input projection, state, weights).

These functions are the only place where the cell equations of gradscope live. Layers, the recorder and
(later) the analysis all call them. Weights use torch.nn's packing: the rows of ``w_hh`` are the gate
blocks (r, z, n) for a GRU and (i, f, g, o) for an LSTM, each ``M`` rows tall.

Every step takes ``gi``, the input projection :math:`W_{ih} x_t + b_{ih}` of shape ``[B, G*M]`` (G gate
blocks), computed for all steps at once by :func:`input_projection`: one large matmul instead of T
small ones. Where ``b_hh`` only adds to ``gi`` (RNN, LSTM) a caller may fold it into ``gi`` and pass
``b_hh=None``: the result is the same up to rounding.

Shapes use ``B`` batch, ``D`` input features, ``M`` hidden units; any leading dimensions in place of
``B`` work too (the recorder evaluates all steps at once with ``[T * B, ...]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "GATE_NAMES",
    "activation",
    "gru_cell",
    "input_projection",
    "lstm_cell",
    "rnn_cell",
]


def _identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": _identity,
    "softsign": F.softsign,
    "hardtanh": F.hardtanh,
}
"""Activations an LSTM accepts for its candidate (``f_c``) and cell-output (``f_h``) functions."""

GATE_NAMES: dict[str, tuple[str, ...]] = {
    "rnn": (),
    "gru": ("reset", "update", "candidate"),
    "lstm": ("input", "forget", "cell", "output"),
}
"""Post-activation gate values each cell returns, in torch's packing order."""


def activation(name: str, *, what: str = "activation") -> Callable[[Tensor], Tensor]:
    """Look up an activation by name, with an error listing the valid names."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of {sorted(ACTIVATIONS)}, got: {name!r}")
    return ACTIVATIONS[name]


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    r"""The input part of every gate for every step at once: :math:`W_{ih} x_t + b_{ih}`.

    Args:
        x: inputs ``[..., D]`` (any leading dimensions, e.g. ``[T, B, D]``).
        w_ih: ``[G*M, D]``. b_ih: ``[G*M]`` or None.

    Returns:
        ``[..., G*M]``.
    """
    return F.linear(x, w_ih, b_ih)


def _recurrent(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    return F.linear(h, w_hh, b_hh)


def _preactivation(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """``gi + W_hh h + b_hh`` with one fused multiply-add (and one add when b_hh is given)."""
    pre = torch.addmm(gi, h, w_hh.t())
    return pre if b_hh is None else pre + b_hh


def rnn_cell(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str = "tanh") -> Tensor:
    r"""One step of the simple (Elman) RNN.

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \quad \phi \in \{\tanh, \mathrm{relu}\}

    This is the seed's :math:`h_t = \tanh(W_{xh}^T x_t + W_{hh}^T h_{t-1} + b_h)` with torch's
    row-major weights (:math:`W_{ih} = W_{xh}^T`) and the bias split in two.

    Args:
        gi: input projection ``[B, M]``. h: previous state ``[B, M]``.
        w_hh: ``[M, M]``. b_hh: ``[M]`` or None.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``h_t`` of shape ``[B, M]``.
    """
    pre = _preactivation(gi, h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def gru_cell(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, reset: str = "after"
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    r"""One step of the GRU, with the reset gate after (torch, cuDNN) or before (Cho et al. 2014) the matmul.

    .. math::
        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
            \quad \text{(reset="after")} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
            \quad \text{(reset="before")} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Here :math:`z_t` weights the *old* state (torch and Keras). The seed notes (and Chung et al. 2014)
    write :math:`h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t`: their :math:`z` is this
    :math:`1 - z`.

    Args:
        gi: input projection ``[B, 3M]`` (blocks r, z, n). h: ``[B, M]``.
        w_hh: ``[3M, M]``. b_hh: ``[3M]`` or None.
        reset: ``"after"`` or ``"before"``.

    Returns:
        ``(h_t, (r_t, z_t, n_t))``, each ``[B, M]``.
    """
    m = h.shape[-1]
    gi_rz, gi_n = gi[..., : 2 * m], gi[..., 2 * m :]
    if reset == "after":
        gh = _recurrent(h, w_hh, b_hh)
        r, z = torch.sigmoid(gi_rz + gh[..., : 2 * m]).chunk(2, -1)
        n = torch.tanh(torch.addcmul(gi_n, r, gh[..., 2 * m :]))
    else:
        b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * m], b_hh[2 * m :])
        r, z = torch.sigmoid(gi_rz + _recurrent(h, w_hh[: 2 * m], b_rz)).chunk(2, -1)
        n = torch.tanh(gi_n + _recurrent(r * h, w_hh[2 * m :], b_n))
    # lerp takes one dtype: under autocast n and z are in the lower one, h in the state's
    return torch.lerp(n.to(h.dtype), h, z.to(h.dtype)), (r, z, n)


def lstm_cell(
    gi: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    cell_activation: str = "tanh",
    hidden_activation: str = "tanh",
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    r"""One step of the LSTM with the seed's two activations :math:`f_c` (candidate) and :math:`f_h` (output).

    .. math::
        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t &= f_c(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot f_h(c_t)

    ``cell_activation="tanh", hidden_activation="tanh"`` is torch's (and Keras') LSTM.

    Args:
        gi: input projection ``[B, 4M]`` (blocks i, f, g, o). h, c: ``[B, M]``.
        w_hh: ``[4M, M]``. b_hh: ``[4M]`` or None.
        cell_activation, hidden_activation: names from :data:`ACTIVATIONS`.

    Returns:
        ``(h_t, c_t, (i_t, f_t, g_t, o_t))``, each ``[B, M]``.
    """
    m = h.shape[-1]
    pre = _preactivation(gi, h, w_hh, b_hh)
    # one sigmoid over all four blocks (the g block's is unused) costs less than three separate ones
    i, f, _, o = torch.sigmoid(pre).chunk(4, -1)
    g = ACTIVATIONS[cell_activation](pre[..., 2 * m : 3 * m])
    c_new = torch.addcmul(f * c, i, g)
    h_new = o * ACTIVATIONS[hidden_activation](c_new)
    return h_new, c_new, (i, f, g, o)
