r"""How quickly a recurrent layer forgets its early inputs, measured from recorded traces.

Every function is pure: traces (or a model and an input) in, a pandas DataFrame with documented columns
or a small frozen dataclass out. The measures are meant to agree with one another on the cases that
have closed forms (see the tests):

- the *forgetting curve* of a gradient against lag and its exponential fit (rate, half-life, horizon);
- the *time constants* of the gates, :math:`\tau = 1 / (1 - \bar k)` with :math:`\bar k` the mean
  fraction of the state kept per step (Tallec & Ollivier 2018);
- the *Jacobian spectrum* of one step :math:`\partial h_t / \partial h_{t-1}` and the *Lyapunov
  exponents* of their product, with Pascanu et al.'s (2013) bound for the tanh RNN;
- Distill's *connectivity* :math:`\lVert \partial y_t / \partial x_s \rVert` of a model;
- *parameter counts* of the three cells and of a dense layer over the flattened sequence.

"Lag" always counts steps back from the end of the sequence in the direction the layer runs:
``T - 1 - t`` for the forward direction, ``t`` for the backward one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from gradscope.cells import input_projection
from gradscope.trace import KEEP_GATE, LayerSummary, LayerTrace, Trace

__all__ = [
    "ForgettingFit",
    "TimeConstantSummary",
    "connectivity",
    "fit_forgetting",
    "forgetting_curve",
    "gate_time_constants",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "pascanu_bound",
    "parameter_counts",
    "summarize",
    "summarize_time_constants",
]

GRADIENTS = ("grad_x", "grad_h", "grad_c")
HORIZON_LEVEL = 1e-3
"""A gradient is "forgotten" once its relative norm falls below this level (the memory horizon)."""

AnyTrace = Trace | LayerTrace | LayerSummary


def _layer(trace: AnyTrace, name: str | None, layer: int, direction: str) -> LayerTrace | LayerSummary:
    if isinstance(trace, (LayerTrace, LayerSummary)):
        return trace
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a Trace, LayerTrace or LayerSummary, got: {type(trace).__name__}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got: {direction!r}")
    return trace.layer(name, layer, direction)


def _full(lt: LayerTrace | LayerSummary, what: str) -> LayerTrace:
    if not isinstance(lt, LayerTrace):
        raise ValueError(f"{what} needs the recorded tensors: record with detail='full', not 'summary'")
    return lt


# ---- forgetting curves ----


def forgetting_curve(
    trace: AnyTrace,
    quantity: str = "grad_x",
    name: str | None = None,
    layer: int = 0,
    direction: str = "forward",
) -> pd.DataFrame:
    r"""The size of a recorded gradient at every step, against how far back that step lies.

    .. math::
        \mathrm{norm}_t = \frac{1}{B} \sum_b \lVert g_{b,t} \rVert_2, \qquad
        \mathrm{relative}_t = \mathrm{norm}_t / \max_s \mathrm{norm}_s

    with :math:`g = \partial L / \partial x_t` (``"grad_x"``), :math:`\partial L / \partial h_t`
    (``"grad_h"``) or :math:`\partial L / \partial c_t` (``"grad_c"``, LSTM). With the loss on the last
    step only, the curve is exactly how the influence of step t on the loss fades with the lag; with a
    loss on every step, each step's gradient also holds what was injected there.

    Args:
        trace: a :class:`Trace` (with ``name``, ``layer``, ``direction`` picking the layer), or one
            :class:`LayerTrace` / :class:`LayerSummary`.
        quantity: ``"grad_x"``, ``"grad_h"`` or ``"grad_c"``.

    Returns:
        DataFrame with columns ``t``, ``lag``, ``norm``, ``relative``, one row per step, sorted by lag.
        An all-zero gradient gives ``relative`` 0 everywhere (and :func:`fit_forgetting` then refuses it).

    Example::

        curve = forgetting_curve(rec.trace, "grad_h")
        fit_forgetting(curve).half_life
    """
    if quantity not in GRADIENTS:
        raise ValueError(f"quantity must be one of {GRADIENTS}, got: {quantity!r}")
    lt = _layer(trace, name, layer, direction)
    if quantity == "grad_c" and lt.cell != "lstm":
        raise ValueError(f"grad_c exists for the LSTM only; this layer is a {lt.cell.upper()}")
    if isinstance(lt, LayerTrace):
        grad = getattr(lt, quantity)
        norms = None if grad is None else torch.linalg.vector_norm(grad, dim=-1).mean(0)
    else:
        norms = lt.stats[quantity][:, 0] if quantity in lt.stats else None
    if norms is None:
        raise ValueError(
            f"the trace of {lt.module!r} layer {lt.layer} {lt.direction} has no {quantity}: "
            "call loss.backward() inside the record() block"
        )
    norm = norms.detach().to("cpu", torch.float64).numpy()
    steps = len(norm)
    t = np.arange(steps)
    lag = steps - 1 - t if lt.direction == "forward" else t
    peak = norm.max()
    relative = norm / peak if peak > 0 else np.zeros_like(norm)
    frame = pd.DataFrame({"t": t, "lag": lag, "norm": norm, "relative": relative})
    return frame.sort_values("lag", ignore_index=True)


@dataclass(frozen=True)
class ForgettingFit:
    r"""An exponential fit :math:`\mathrm{norm} \approx A e^{-\mathrm{rate} \cdot \mathrm{lag}}`.

    Attributes:
        rate: decay per step (natural log); negative when the gradient grows with lag.
        half_life: :math:`\ln 2 / \mathrm{rate}` in steps; ``inf`` when the gradient does not decay.
        horizon: the first lag at which ``relative`` falls below :data:`HORIZON_LEVEL` (1e-3), measured
            on the curve itself, not the fit; None if it never does within the sequence.
        r2: coefficient of determination of the fit in log space (1.0 for a perfect fit, including a
            perfectly flat curve).
        regime: ``"vanishing"`` (rate > 0), ``"exploding"`` (rate < 0), or ``"stable"`` when over the
            fitted range of lags the fitted norm changes by less than a factor of 2
            (:math:`|\mathrm{rate}| \cdot \mathrm{span} < \ln 2`).
        points: how many points of the curve were fitted.
    """

    rate: float
    half_life: float
    horizon: int | None
    r2: float
    regime: str
    points: int


def fit_forgetting(curve: pd.DataFrame, floor: float = 1e-6) -> ForgettingFit:
    r"""Least-squares fit of :math:`\log \mathrm{norm}` against lag, over the points with relative > floor.

    Points at or below ``floor`` are left out: there the gradient has vanished into rounding noise and
    would flatten the fit.

    Args:
        curve: a frame from :func:`forgetting_curve` (columns ``lag``, ``norm``, ``relative``).
        floor: relative level below which points are not fitted.

    Raises:
        ValueError: when fewer than two distinct lags lie above ``floor`` (a curve too short, or an
            all-zero gradient).
    """
    missing = {"lag", "norm", "relative"} - set(curve.columns)
    if missing:
        raise ValueError(f"curve must have columns lag, norm, relative (from forgetting_curve); missing {missing}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got: {floor}")
    ordered = curve.sort_values("lag")
    kept = ordered[(ordered["relative"] > floor) & (ordered["norm"] > 0)]
    if kept["lag"].nunique() < 2:
        raise ValueError(
            f"cannot fit a decay: {len(kept)} of {len(curve)} points lie above relative {floor:g} "
            "(at least two distinct lags are needed; an all-zero gradient has none)"
        )
    lag = kept["lag"].to_numpy(dtype=np.float64)
    log_norm = np.log(kept["norm"].to_numpy(dtype=np.float64))
    slope, intercept = np.polyfit(lag, log_norm, 1)
    residual = log_norm - (slope * lag + intercept)
    total = float(((log_norm - log_norm.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    rate = float(-slope)
    half_life = math.log(2) / rate if rate > 0 else math.inf
    below = ordered.loc[ordered["relative"] < HORIZON_LEVEL, "lag"]
    horizon = int(below.iloc[0]) if len(below) else None
    span = float(lag.max() - lag.min())
    if abs(rate) * span < math.log(2):
        regime = "stable"
    else:
        regime = "vanishing" if rate > 0 else "exploding"
    return ForgettingFit(rate, half_life, horizon, r2, regime, len(kept))


# ---- gate time constants ----


def gate_time_constants(
    trace: AnyTrace, name: str | None = None, layer: int = 0, direction: str = "forward"
) -> pd.DataFrame:
    r"""Each unit's characteristic forgetting time from its gate, :math:`\tau = 1 / (1 - \bar k)`.

    :math:`\bar k` is the unit's mean over batch and steps of the fraction of its previous state kept
    per step (LSTM forget gate :math:`f`, GRU update gate :math:`z`). A state multiplied by :math:`k`
    every step decays as :math:`k^{\mathrm{lag}}`, whose time constant is
    :math:`-1/\ln k \approx 1/(1-k)` (Tallec & Ollivier 2018).

    Returns:
        DataFrame with columns ``unit``, ``keep`` (:math:`\bar k`), ``tau`` (``inf`` where
        :math:`\bar k = 1`), one row per hidden unit.
    """
    lt = _full(_layer(trace, name, layer, direction), "gate_time_constants")
    if lt.cell not in KEEP_GATE:
        raise ValueError("a simple RNN has no gate that keeps its state: gate time constants need a GRU or LSTM")
    keep = lt.keep.to("cpu", torch.float64).mean((0, 1)).numpy()
    with np.errstate(divide="ignore"):
        tau = np.where(keep < 1, 1.0 / (1.0 - keep), np.inf)
    return pd.DataFrame({"unit": np.arange(len(keep)), "keep": keep, "tau": tau})


@dataclass(frozen=True)
class TimeConstantSummary:
    """Median and quartiles of the units' time constants τ (steps)."""

    median: float
    q25: float
    q75: float


def summarize_time_constants(time_constants: pd.DataFrame) -> TimeConstantSummary:
    """Median and quartiles of the ``tau`` column of :func:`gate_time_constants`."""
    if "tau" not in time_constants or time_constants.empty:
        raise ValueError("expected the non-empty frame of gate_time_constants, with a 'tau' column")
    q25, median, q75 = np.quantile(time_constants["tau"].to_numpy(), [0.25, 0.5, 0.75])
    return TimeConstantSummary(float(median), float(q25), float(q75))


# ---- Jacobians of one step ----


def _step_jacobians(lt: LayerTrace, samples: Sequence[int] | None) -> Iterator[tuple[int, Tensor]]:
    r"""Yield ``(t, J_t)`` in the order the layer ran, ``J_t`` of shape ``[S, N, N]``.

    :math:`J_t = \partial s_t / \partial s_{t-1}` at the recorded states, with the state ``s`` being
    ``h`` (``N = M``), or ``(h, c)`` for the LSTM (``N = 2M``); x_t is held fixed. Computed exactly by
    differentiating the layer's own step function (``torch.func.jacrev``, vectorised over samples).
    """
    w_ih, w_hh, b_ih, b_hh = lt.weights
    index = torch.arange(lt.batch_size) if samples is None else torch.as_tensor(list(samples), dtype=torch.long)
    if index.numel() == 0 or index.min() < 0 or index.max() >= lt.batch_size:
        raise ValueError(f"samples must index the batch of {lt.batch_size}, got: {index.tolist()}")
    x, h, h0 = lt.x[index], lt.h[index], lt.h0[index]
    lstm = lt.cell == "lstm"
    c, c0 = (lt.c[index], lt.c0[index]) if lstm else (None, None)
    width = h.shape[-1]

    def one_step(state: Tensor, gi: Tensor) -> Tensor:
        h_prev, c_prev = (state[:width], state[width:]) if lstm else (state, None)
        h_new, c_new, _ = lt.step(gi[None], h_prev[None], None if c_prev is None else c_prev[None], w_hh, b_hh)
        return torch.cat([h_new[0], c_new[0]]) if lstm else h_new[0]

    jacobian = torch.func.vmap(torch.func.jacrev(one_step))
    steps = lt.seq_len
    order = range(steps) if lt.direction == "forward" else range(steps - 1, -1, -1)
    with torch.no_grad():
        gi_all = input_projection(x, w_ih, b_ih)  # [S, T, G*M]
    for t in order:
        prev = t - 1 if lt.direction == "forward" else t + 1
        inside = 0 <= prev < steps
        h_prev = h[:, prev] if inside else h0
        state = h_prev if not lstm else torch.cat([h_prev, c[:, prev] if inside else c0], dim=-1)
        yield t, jacobian(state, gi_all[:, t]).detach()


def jacobian_spectrum(
    trace: AnyTrace,
    name: str | None = None,
    layer: int = 0,
    direction: str = "forward",
    samples: Sequence[int] | None = None,
) -> pd.DataFrame:
    r"""Singular values of the one-step Jacobian :math:`\partial h_t / \partial h_{t-1}` at every recorded step.

    For the LSTM the step is the joint map :math:`(h_{t-1}, c_{t-1}) \mapsto (h_t, c_t)`, a
    :math:`2M \times 2M` Jacobian. Exact at the recorded states (see :func:`_step_jacobians`).

    Args:
        samples: batch indices to analyse (default: the whole batch). Cost grows as samples × T × N³.

    Returns:
        DataFrame with columns ``sample``, ``t``, ``k`` (0 = largest), ``singular_value``.
    """
    lt = _full(_layer(trace, name, layer, direction), "jacobian_spectrum")
    chosen = list(range(lt.batch_size)) if samples is None else list(samples)
    rows = []
    for t, jac in _step_jacobians(lt, chosen):
        values = torch.linalg.svdvals(jac).to("cpu", torch.float64).numpy()  # [S, N]
        count, n = values.shape
        rows.append(
            pd.DataFrame(
                {
                    "sample": np.repeat(chosen, n),
                    "t": t,
                    "k": np.tile(np.arange(n), count),
                    "singular_value": values.reshape(-1),
                }
            )
        )
    return pd.concat(rows, ignore_index=True).sort_values(["sample", "t", "k"], ignore_index=True)


def lyapunov_exponents(
    trace: AnyTrace,
    name: str | None = None,
    layer: int = 0,
    direction: str = "forward",
    samples: Sequence[int] | None = None,
) -> pd.DataFrame:
    r"""Lyapunov exponents of the product of one-step Jacobians along the recorded trajectory (QR method).

    .. math::
        Q_0 = I, \quad J_t Q_{t-1} = Q_t R_t, \quad
        \lambda_k = \frac{1}{T} \sum_t \ln \lvert (R_t)_{kk} \rvert

    :math:`\lambda_k` is the mean log growth per step of the k-th direction: negative exponents mean
    perturbations of the state (and gradients through it) shrink by :math:`e^{\lambda}` per step.

    Returns:
        DataFrame with columns ``sample``, ``k`` (0 = largest exponent), ``exponent`` (per step, natural
        log). A Jacobian with an exactly zero direction gives ``-inf`` for that exponent.
    """
    lt = _full(_layer(trace, name, layer, direction), "lyapunov_exponents")
    chosen = list(range(lt.batch_size)) if samples is None else list(samples)
    q = None
    total = None
    for _, jac in _step_jacobians(lt, chosen):
        jac = jac.to(torch.float64)
        if q is None:
            q = torch.eye(jac.shape[-1], dtype=torch.float64).expand_as(jac)
            total = torch.zeros(jac.shape[:-1], dtype=torch.float64)
        q, r = torch.linalg.qr(jac @ q)
        total = total + torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs())
    exponents = (total / lt.seq_len).sort(dim=-1, descending=True).values.numpy()  # [S, N]
    count, n = exponents.shape
    return pd.DataFrame(
        {"sample": np.repeat(chosen, n), "k": np.tile(np.arange(n), count), "exponent": exponents.reshape(-1)}
    )


def pascanu_bound(
    trace: AnyTrace,
    name: str | None = None,
    layer: int = 0,
    direction: str = "forward",
    samples: Sequence[int] | None = None,
) -> pd.DataFrame:
    r"""Check Pascanu, Mikolov & Bengio's (2013) bound on a simple RNN's recorded trajectory.

    For :math:`h_t = \phi(W_{ih} x_t + W_{hh} h_{t-1} + b)` with :math:`|\phi'| \le 1` (tanh, relu),
    each step's Jacobian is :math:`\mathrm{diag}(\phi') W_{hh}`, so

    .. math::
        \Big\lVert \frac{\partial h_{T-1}}{\partial h_{T-1-\mathrm{lag}}} \Big\rVert_2
        \le \sigma_{\max}(W_{hh})^{\mathrm{lag}}

    and no measured gradient decay can be slower than :math:`\sigma_{\max}^{\mathrm{lag}}`.

    Returns:
        DataFrame with columns ``lag`` (0 … T−1), ``measured`` (the largest over the samples of the
        spectral norm of the Jacobian product, 1 at lag 0), ``bound`` (:math:`\sigma_{\max}^{lag}`) and
        ``holds`` (measured ≤ bound, with a relative tolerance of 1e-6 for rounding).
    """
    lt = _full(_layer(trace, name, layer, direction), "pascanu_bound")
    if lt.cell != "rnn":
        raise ValueError(f"the bound applies to the simple RNN; this layer is a {lt.cell.upper()}")
    sigma = torch.linalg.matrix_norm(lt.weights[1].to(torch.float64), ord=2).item()
    jacobians = [jac.to(torch.float64) for _, jac in _step_jacobians(lt, samples)]
    product = torch.eye(jacobians[0].shape[-1], dtype=torch.float64).expand_as(jacobians[0])
    measured = [1.0]
    for jac in reversed(jacobians[1:]):  # from the last step backwards: dh_{T-1}/dh_{T-1-lag}
        product = product @ jac
        measured.append(torch.linalg.matrix_norm(product, ord=2).max().item())
    lag = np.arange(len(measured))
    bound = sigma**lag
    measured_arr = np.asarray(measured)
    holds = measured_arr <= bound * (1 + 1e-6) + 1e-12
    return pd.DataFrame({"lag": lag, "measured": measured_arr, "bound": bound, "holds": holds})


# ---- connectivity ----


def connectivity(
    model: Callable[[Tensor], Tensor | tuple],
    x: Tensor,
    *,
    batch_first: bool = True,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    r"""Distill's "connectivity": how much each output step depends on each input step.

    .. math::
        C_{t,s} = \frac{1}{B} \sum_b \Big\lVert \frac{\partial y_{b,t}}{\partial x_{b,s}} \Big\rVert_F

    the Frobenius norm of the ``K × D`` Jacobian block, averaged over the batch (samples do not interact
    in a recurrent model). The ``T·K`` vector-Jacobian products run as one batched backward
    (``is_grads_batched``, torch's vmap) rather than a Python loop, where every op of the model supports
    it; otherwise it falls back to a loop with a warning.

    Args:
        model: maps ``x`` to a sequence output ``[B, T, K]`` (or ``[B, T]``); when it returns a tuple,
            as torch's recurrent layers do, its first element is used.
        x: ``[B, T, D]`` (``[T, B, D]`` with ``batch_first=False``, for model and output alike).
        chunk_size: how many output components to backpropagate at once (default: all).

    Returns:
        DataFrame with columns ``t`` (output step), ``s`` (input step), ``lag`` (t − s) and ``norm``;
        T² rows.
    """
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, Tensor) else f"{x.dim()}-d {x.dtype} tensor"
        raise ValueError(f"x must be a 3-d floating-point tensor [B, T, D] (or [T, B, D]), got a {got}")
    x = x.detach().requires_grad_(True)
    y = model(x)
    if isinstance(y, tuple):
        y = y[0]
    if not isinstance(y, Tensor) or y.dim() not in (2, 3) or y.shape[:2] != x.shape[:2]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"the model must return a sequence output shaped like x's first two dimensions, got {got}")
    if y.dim() == 2:
        y = y.unsqueeze(-1)
    steps_dim = 1 if batch_first else 0
    steps, width = y.shape[steps_dim], y.shape[2]
    outputs = steps * width
    # one-hot cotangents: output component (t, k) of every sample at once
    basis = torch.eye(outputs, dtype=y.dtype, device=y.device).reshape(outputs, steps, width)
    basis = basis.unsqueeze(2 - steps_dim).expand(outputs, *y.shape)
    size = chunk_size or outputs
    grads = []
    for lo in range(0, outputs, size):
        chunk = basis[lo : lo + size]
        try:
            (g,) = torch.autograd.grad(y, x, chunk, retain_graph=True, is_grads_batched=True)
        except RuntimeError as error:
            warnings.warn(
                f"batched gradients are not supported by this model ({error}); looping over outputs",
                stacklevel=2,
            )
            g = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0] for v in chunk])
        grads.append(g)
    jac = torch.cat(grads)  # [T*K, *x.shape]
    if not batch_first:
        jac = jac.transpose(1, 2)  # [T*K, B, T, D]
    jac = jac.reshape(steps, width, *jac.shape[1:])  # [T, K, B, T_in, D]
    values = torch.linalg.vector_norm(jac, dim=(1, 4)).mean(1).detach().to("cpu", torch.float64).numpy()
    t, s = np.meshgrid(np.arange(steps), np.arange(values.shape[1]), indexing="ij")
    return pd.DataFrame({"t": t.ravel(), "s": s.ravel(), "lag": (t - s).ravel(), "norm": values.ravel()})


# ---- parameter counts ----

_TORCH_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def parameter_counts(
    input_size: int, hidden_size: int, seq_len: int | Iterable[int], num_layers: int = 1
) -> pd.DataFrame:
    r"""Parameters of an RNN, GRU, LSTM and a dense layer over the flattened sequence, as torch builds them.

    With torch's two bias vectors, one recurrent layer has :math:`G (MD + M^2 + 2M)` parameters with
    G = 1 (RNN), 3 (GRU), 4 (LSTM), and further layers read M (not D) features. None of this depends on
    T: the same weights serve every step. A dense layer reading the flattened ``T × D`` sequence into M
    units has :math:`TDM + M`, growing with T (the seed's "is it clear why?"); for ``num_layers > 1`` it
    is followed by ``num_layers − 1`` dense ``M → M`` layers.

    Args:
        seq_len: one length or several (one block of rows per length).

    Returns:
        DataFrame with columns ``model`` (rnn, gru, lstm, dense), ``seq_len``, ``input_size``,
        ``hidden_size``, ``num_layers``, ``parameters``.
    """
    lengths = [seq_len] if isinstance(seq_len, int) else list(seq_len)
    for value, what in [(input_size, "input_size"), (hidden_size, "hidden_size"), (num_layers, "num_layers")]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive int, got: {value!r}")
    if not lengths or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in lengths):
        raise ValueError(f"seq_len must be a positive int or a non-empty iterable of them, got: {seq_len!r}")

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    recurrent = {
        cell: count(cls(input_size, hidden_size, num_layers, device="meta")) for cell, cls in _TORCH_CELLS.items()
    }
    rows = []
    for n in lengths:
        dense = [nn.Linear(n * input_size, hidden_size, device="meta")]
        dense += [nn.Linear(hidden_size, hidden_size, device="meta") for _ in range(num_layers - 1)]
        counts = {**recurrent, "dense": count(nn.Sequential(*dense))}
        rows += [
            {
                "model": model,
                "seq_len": n,
                "input_size": input_size,
                "hidden_size": hidden_size,
                "num_layers": num_layers,
                "parameters": value,
            }
            for model, value in counts.items()
        ]
    return pd.DataFrame(rows)


# ---- the first table ----


def summarize(
    traces: Mapping[str, Trace],
    quantity: str = "grad_x",
    name: str | None = None,
    layer: int = 0,
    direction: str = "forward",
    floor: float = 1e-6,
    samples: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per labelled trace (e.g. RNN, GRU, LSTM): how fast it forgets, by every measure.

    Args:
        traces: label → :class:`Trace` recorded with ``detail="full"``.
        quantity, name, layer, direction: which curve to fit (see :func:`forgetting_curve`).
        floor: passed to :func:`fit_forgetting`.
        samples: batch indices for the Lyapunov exponents (default: all).

    Returns:
        DataFrame indexed by ``label`` with columns ``cell``, ``rate``, ``half_life``, ``horizon``,
        ``regime``, ``r2``, ``median_tau`` (NaN for the RNN, which has no gate), ``lyapunov_max`` (mean
        over samples of the largest exponent), ``parameters`` (of the recorded module, all layers and
        directions).
    """
    rows = []
    for label, trace in traces.items():
        lt = _full(_layer(trace, name, layer, direction), "summarize")
        fit = fit_forgetting(forgetting_curve(lt, quantity), floor)
        median_tau = summarize_time_constants(gate_time_constants(lt)).median if lt.cell in KEEP_GATE else math.nan
        exponents = lyapunov_exponents(lt, samples=samples)
        lyapunov_max = float(exponents.groupby("sample")["exponent"].max().mean())
        parameters = _module_parameters(trace, lt.module) if isinstance(trace, Trace) else _layer_parameters(lt)
        rows.append(
            {
                "label": label,
                "cell": lt.cell,
                "rate": fit.rate,
                "half_life": fit.half_life,
                "horizon": fit.horizon,
                "regime": fit.regime,
                "r2": fit.r2,
                "median_tau": median_tau,
                "lyapunov_max": lyapunov_max,
                "parameters": parameters,
            }
        )
    if not rows:
        raise ValueError("summarize needs at least one labelled trace")
    return pd.DataFrame(rows).set_index("label")


def _layer_parameters(lt: LayerTrace) -> int:
    return sum(w.numel() for w in lt.weights if w is not None)


def _module_parameters(trace: Trace, module: str) -> int:
    return sum(_layer_parameters(_full(trace.layer(*key), "summarize")) for key in trace.keys() if key[0] == module)
