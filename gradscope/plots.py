r"""Figures of a run's tables: a long-form DataFrame in, a :class:`plotly.graph_objects.Figure` out.

Every function takes frames exactly as a run stores them (the columns of :data:`gradscope.storage.TABLES`;
only the columns it reads are required), optionally with an extra string column ``run`` naming the run
when several runs are compared (as the dashboard's ``combine`` builds it). Rows are selected inside the
functions (by quantity, batch, step, layer ...), so callers pass whole tables. Nothing here imports Dash,
reads or writes files, or shows a figure: the same functions serve the dashboard, the HTML report and
notebooks.

Conventions shared by every figure:

- one trace (or one band and one line) per configuration (run, cell, readout), named ``"lstm/max"``, or
  ``"runA · lstm/max"`` when the ``run`` column holds several runs;
- colour by cell (:data:`CELL_COLORS`, Okabe–Ito, at least 3:1 contrast against both the light and the
  dark page), line style by readout (:data:`READOUT_DASHES`), marker symbol by run
  (:data:`RUN_SYMBOLS`, in order of appearance; markers are drawn when several runs are shown);
- ``theme="light"`` or ``"dark"`` picks the plotly template (:data:`THEMES`);
- an empty selection gives a figure with no traces and the annotation ``"no data"``;
- ``step=None`` is the last step present for each configuration;
- ``layer=None`` / ``direction=None`` pick layer 0 (the lowest present) and ``"forward"`` (when present):
  the layer whose ``grad_x`` is the gradient with respect to the task's inputs;
- infinite values (a half-life of a gradient that does not decay, a diverged loss) are never dropped:
  they are drawn just beyond the finite values, on a dotted line labelled ∞, with an open marker, their
  hover text says ∞, and a note under the figure says how many there are. NaN values leave a gap.
- on a log axis, values ≤ 0 cannot be drawn; a note under the figure counts them.

Example::

    run = gradscope.load_run("runs/adding")
    forgetting_curves(run.curves, run.fits, quantity="grad_h").show()
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

__all__ = [
    "CELL_COLORS",
    "NEUTRAL_COLOR",
    "READOUT_DASHES",
    "RUN_SYMBOLS",
    "THEMES",
    "connectivity_heatmap",
    "forgetting_curves",
    "forgetting_heatmap",
    "gate_profiles",
    "gate_saturation",
    "generalisation_gap",
    "half_life_over_training",
    "jacobian_over_training",
    "keep_fraction",
    "learning_curves",
    "parameter_growth",
    "summary_table",
    "time_constant_histogram",
]

CELL_COLORS: dict[str, str] = {"rnn": "#D55E00", "gru": "#009E73", "lstm": "#0072B2"}
"""One colour per cell type in every figure (Okabe–Ito: vermillion, bluish green, blue)."""
NEUTRAL_COLOR = "#7F7F7F"
"""The dense baseline, reference lines, and any cell not in :data:`CELL_COLORS`."""
READOUT_DASHES: dict[str, str] = {"last": "solid", "max": "dash", "mean": "dot", "sequence": "dashdot"}
"""One line style per readout."""
RUN_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")
"""Marker symbol of the k-th run in a frame (cycled)."""
THEMES: dict[str, str] = {"light": "plotly_white", "dark": "plotly_dark"}
"""``theme`` argument → plotly template."""

QUANTITIES = {"grad_x": "∂L/∂x_t", "grad_h": "∂L/∂h_t", "grad_c": "∂L/∂c_t"}
BATCHES = ("probe", "train")
DIRECTIONS = ("forward", "backward")
GATE_ORDER = ("reset", "update", "candidate", "input", "forget", "cell", "output")
LOG_FLOOR = 1e-12
"""Heatmaps on a log colour scale floor values at this fraction of their largest value (zeros included)."""
_INFINITE_PAD = 0.15  # where ±inf is drawn: this fraction of the finite span beyond the finite values
_BAND_ALPHA = 0.18
_TRAIN_OPACITY = 0.45


# ---- checking arguments ----


def _template(theme: str) -> str:
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {list(THEMES)}, got: {theme!r}")
    return THEMES[theme]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """ValueError unless ``frame`` is a DataFrame holding ``columns``; names the missing ones."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame with columns {list(columns)}, got: {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing} (got columns {list(frame.columns)})")


def _choice(value: object, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got: {value!r}")


def _check_step(step: object) -> None:
    if step is not None and (not isinstance(step, (int, np.integer)) or isinstance(step, bool)):
        raise ValueError(f"step must be an int or None (the last step), got: {step!r}")


def _check_layer(layer: object, direction: object) -> None:
    if layer is not None and (not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or layer < 0):
        raise ValueError(f"layer must be a non-negative int or None (layer 0), got: {layer!r}")
    if direction is not None:
        _choice(direction, DIRECTIONS, "direction")


# ---- selecting rows ----


def _where(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows whose columns equal the given values."""
    keep = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        keep &= (frame[column] == value).to_numpy(dtype=bool, na_value=False)
    return frame[keep]


def _config_keys(frame: pd.DataFrame) -> list[str]:
    return (["run"] if "run" in frame.columns else []) + ["cell", "readout"]


def _at_step(frame: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """Rows of ``step``, or of each configuration's last step when ``step`` is None."""
    if step is not None:
        return frame[frame["step"] == step]
    if frame.empty:
        return frame
    last = frame.groupby(_config_keys(frame), sort=False)["step"].transform("max")
    return frame[frame["step"] == last]


def _at_layer(frame: pd.DataFrame, layer: int | None, direction: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of one layer and direction (see the module docstring) and a label naming them when it matters.

    Frames without ``layer`` / ``direction`` columns are taken as layer 0, forward.
    """
    several = False
    if "layer" in frame.columns:
        present = sorted(set(frame["layer"].dropna().tolist()))
        several |= len(present) > 1
        layer = layer if layer is not None else (0 if 0 in present or not present else present[0])
        frame = frame[frame["layer"] == layer]
    elif layer not in (None, 0):
        frame = frame.iloc[:0]
    if "direction" in frame.columns:
        present = sorted(set(frame["direction"].dropna().tolist()))
        several |= len(present) > 1
        if direction is None:
            direction = "forward" if "forward" in present or not present else present[0]
        frame = frame[frame["direction"] == direction]
    elif direction not in (None, "forward"):
        frame = frame.iloc[:0]
    layer = 0 if layer is None else layer
    direction = "forward" if direction is None else direction
    label = f"layer {layer} {direction}" if several or layer != 0 or direction != "forward" else ""
    return frame, label


def _one_run(frame: pd.DataFrame, run: str | None) -> pd.DataFrame:
    runs = _runs(frame)
    if run is None:
        if len(runs) > 1:
            raise ValueError(f"the frame holds several runs {runs}: pass run= one of them")
        return frame
    if "run" not in frame.columns:
        raise ValueError(f"run={run!r} was given but the frame has no 'run' column")
    if run not in runs:
        raise ValueError(f"run must be one of {runs}, got: {run!r}")
    return frame[frame["run"] == run]


def _runs(frame: pd.DataFrame) -> list[str | None]:
    """The runs of a frame in order of appearance; ``[None]`` without a ``run`` column."""
    return list(dict.fromkeys(frame["run"].tolist())) if "run" in frame.columns else [None]


def _step_label(frame: pd.DataFrame, step: int | None) -> str:
    steps = sorted(set(frame["step"].tolist())) if "step" in frame.columns else []
    if step is not None or len(steps) == 1:
        return f"step {step if step is not None else steps[0]}"
    return "last step of each"


# ---- styling ----


@dataclass(frozen=True)
class _Series:
    """One configuration's rows and how its traces look."""

    run: str | None
    parts: tuple[str, ...]
    name: str
    color: str
    dash: str
    symbol: str
    marked: bool  # several runs: markers distinguish them
    rows: pd.DataFrame


def _series(frame: pd.DataFrame, runs: list[str | None], by: Sequence[str] = ("cell", "readout")) -> Iterator[_Series]:
    """The rows of each (run, *by) configuration, in order of appearance, with their style.

    ``runs`` are those of the whole frame as passed (before filtering), so that a run keeps its marker
    and its name prefix in every figure of the same tables.
    """
    has_run = "run" in frame.columns
    keys = (["run"] if has_run else []) + list(by)
    multi = len(runs) > 1
    for key, rows in frame.groupby(keys, sort=False):
        run = key[0] if has_run else None
        parts = tuple(str(p) for p in (key[1:] if has_run else key))
        label = "/".join(parts)
        yield _Series(
            run=run,
            parts=parts,
            name=f"{run} · {label}" if multi else label,
            color=CELL_COLORS.get(parts[0], NEUTRAL_COLOR),
            dash=READOUT_DASHES.get(parts[1], "solid") if len(parts) > 1 else "solid",
            symbol=RUN_SYMBOLS[runs.index(run) % len(RUN_SYMBOLS)] if run in runs else RUN_SYMBOLS[0],
            marked=multi,
            rows=rows,
        )


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _format(value: object, digits: int = 4) -> str:
    """Floats to ``digits`` significant digits; ``–`` for NA/NaN, ``∞`` / ``−∞`` for infinities; others as str."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{float(value):.{digits}g}"
    return "–" if pd.isna(value) else str(value)


# ---- infinite values ----


@dataclass(frozen=True)
class _Caps:
    """Where −inf and +inf are drawn on one axis, and the axis range (in axis units) showing them."""

    low: float
    high: float
    range: tuple[float, float]
    finite: tuple[float, float]  # the finite values' extent, in axis units


def _caps(values: np.ndarray, log: bool) -> _Caps:
    """Caps :data:`_INFINITE_PAD` of the finite span beyond the finite values (in decades on a log axis)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if log:
        finite = np.log10(finite[finite > 0])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = hi - lo if hi > lo else (0.5 if log else max(abs(hi), 1.0))
    pad = _INFINITE_PAD * span
    low, high = lo - pad, hi + pad
    has_low, has_high = bool(np.any(values == -np.inf)), bool(np.any(values == np.inf))
    axis = (lo - pad * (1.6 if has_low else 1.0), hi + pad * (1.6 if has_high else 1.0))
    if log:
        return _Caps(10**low, 10**high, axis, (lo, hi))
    return _Caps(low, high, axis, (lo, hi))


def _show_infinite(
    fig: go.Figure, values: np.ndarray, caps: _Caps, log: bool, notes: list[str], what: str, **cell: int
) -> None:
    """Fix the y range to show the caps, draw them as dotted lines labelled ∞, and add a note."""
    values = np.asarray(values, dtype=float)
    count = int(np.isinf(values).sum())
    if not count:
        return
    fig.update_yaxes(range=list(caps.range), autorange=False, **cell)
    if log:  # plotly's own ticks would label the space above the finite values as if it held numbers
        ticks = _log_ticks(np.array([caps.range[0], caps.finite[1]]))
        tickvals = [10.0**v for v in ticks.get("tickvals", [])] + [caps.high]
        fig.update_yaxes(tickvals=tickvals, ticktext=[*ticks.get("ticktext", []), "∞"], **cell)
    for sign, y in ((1, caps.high), (-1, caps.low)):
        if np.any(values == sign * np.inf):
            _reference(fig, y, "∞" if sign > 0 else "−∞", log=log, **cell)
    notes.append(f"{count} infinite {what} drawn as open markers on the dotted ∞ line")


def _reference(fig: go.Figure, y: float, label: str = "", *, log: bool = False, **cell: int) -> None:
    """A dotted horizontal line at data value ``y`` with its label at the right end.

    The label is placed in axis units (log10 of ``y`` on a log axis), which ``add_hline``'s own
    annotation does not do.
    """
    fig.add_hline(y=y, line_dash="dot", line_color=NEUTRAL_COLOR, line_width=1.5, **cell)
    if label:
        fig.add_annotation(text=label, x=1, xref="x domain", y=math.log10(y) if log else y, yref="y",
                           xanchor="right", yanchor="bottom", showarrow=False, font={"color": NEUTRAL_COLOR},
                           **cell)  # fmt: skip


def _count_unplottable(values: np.ndarray, log: bool, notes: list[str], what: str) -> None:
    values = np.asarray(values, dtype=float)
    if log:
        count = int((values <= 0).sum())
        if count:
            notes.append(f"{count} {what} ≤ 0 cannot be drawn on the log axis")


def _line(
    series: _Series,
    x: Sequence,
    y: Sequence,
    *,
    caps: _Caps | None = None,
    markers: bool = False,
    name: str | None = None,
    hover: str = "",
    opacity: float = 1.0,
    showlegend: bool = True,
    legendgroup: str | None = None,
) -> go.Scatter:
    """One configuration's line; ±inf values moved to ``caps`` with an open marker, hover text keeping ∞."""
    y = np.asarray(y, dtype=float)
    infinite = np.isinf(y)
    shown = y.copy()
    if infinite.any():
        caps = caps if caps is not None else _caps(y, log=False)
        shown[y == np.inf], shown[y == -np.inf] = caps.high, caps.low
    size = 7 if markers or series.marked else 0
    marker: dict = {"symbol": series.symbol, "size": size, "color": series.color}
    if infinite.any():
        marker["symbol"] = [f"{series.symbol}-open" if inf else series.symbol for inf in infinite]
        marker["size"] = [11 if inf else size for inf in infinite]
        marker["line"] = {"width": 2, "color": series.color}
    elif not markers and series.marked:
        marker["maxdisplayed"] = 30  # dense curves: enough markers to tell runs apart
    if not infinite.any():  # hover formats the numbers itself: no per-point strings to build and send
        hover = hover.replace("%{text}", "%{y:.4~g}")
    return go.Scatter(
        x=np.asarray(x),
        y=shown,
        text=[_format(v) for v in y] if infinite.any() else None,
        mode="lines+markers" if size or infinite.any() else "lines",
        name=name or series.name,
        line={"color": series.color, "dash": series.dash, "width": 2},
        marker=marker,
        opacity=opacity,
        legendgroup=legendgroup or series.name,
        showlegend=showlegend,
        hovertemplate=hover + "<extra>%{fullData.name}</extra>",
    )


# ---- figures ----


def _figure(
    fig: go.Figure | None,
    theme: str,
    title: str,
    x_title: str | None = None,
    y_title: str | None = None,
    notes: Sequence[str] = (),
    legend_title: str | None = None,
) -> go.Figure:
    """Apply the template, titles and notes; with ``fig`` None, the empty figure saying "no data"."""
    empty = fig is None
    fig = go.Figure() if empty else fig
    fig.update_layout(template=_template(theme), title={"text": title})
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    if legend_title:
        fig.update_layout(legend_title_text=legend_title)
    if empty:
        fig.add_annotation(text="no data", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font={"size": 18})  # fmt: skip
    if notes:
        fig.add_annotation(text="<br>".join(notes), x=0, y=0, xref="paper", yref="paper", xanchor="left",
                           yanchor="top", yshift=-60, showarrow=False, align="left", font={"size": 11})  # fmt: skip
        fig.update_layout(margin={"b": 90 + 16 * len(notes)})
    return fig


def _legend_title(runs: list[str | None], what: str = "cell/readout") -> str:
    return f"run · {what}" if len(runs) > 1 else what


def forgetting_curves(
    curves: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    *,
    quantity: str = "grad_x",
    step: int | None = None,
    batch: str = "probe",
    log_y: bool = True,
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""How fast the gradient fades with lag: ``relative`` against ``lag``, one line per configuration.

    ``relative`` is :math:`\lVert \partial L / \partial x_t \rVert` (or ``h_t``, ``c_t``) divided by its
    largest value over t (dimensionless); ``lag`` is in steps. The y axis is log (linear with
    ``log_y=False``); on it a pure exponential decay is a straight line.

    Args:
        curves: the ``curves`` table; needs ``step, cell, readout, batch, quantity, lag, relative``.
        fits: the ``fits`` table (needs ``step, cell, readout, batch, quantity, half_life``); when given,
            each legend name ends with the fitted half-life of the same step, batch and quantity, e.g.
            ``"lstm/last · t½ 59.5"`` (``∞`` for a gradient that does not decay).
        quantity: ``"grad_x"``, ``"grad_h"`` or ``"grad_c"`` (LSTM only).
        step: the training step; None is each configuration's last.
        batch: ``"probe"`` (fixed batch) or ``"train"`` (that step's training batch).
    """
    _template(theme)
    _require(curves, ("step", "cell", "readout", "batch", "quantity", "lag", "relative"), "curves")
    if fits is not None:
        _require(fits, ("step", "cell", "readout", "batch", "quantity", "half_life"), "fits")
    _choice(quantity, tuple(QUANTITIES), "quantity")
    _choice(batch, BATCHES, "batch")
    _check_step(step)
    _check_layer(layer, direction)
    symbol = QUANTITIES[quantity]
    runs = _runs(curves)
    rows, where = _at_layer(_where(curves, quantity=quantity, batch=batch), layer, direction)
    rows = _at_step(rows, step)
    title = f"Forgetting curves of {symbol} · {batch} batch · {_step_label(rows, step)}"
    title += f" · {where}" if where else ""
    x_title, y_title = "lag (steps)", f"relative ‖{symbol}‖ (÷ largest over t)"
    if rows.empty:
        return _figure(None, theme, title, x_title, y_title)
    if fits is not None:
        fits, _ = _at_layer(_where(fits, quantity=quantity, batch=batch), layer, direction)
    fig, notes = go.Figure(), []
    for s in _series(rows, runs):
        rows_s = s.rows.sort_values("lag")
        name = s.name
        if fits is not None:
            keys = {"cell": s.parts[0], "readout": s.parts[1], "step": rows_s["step"].iloc[0]}
            if s.run is not None and "run" in fits.columns:
                keys["run"] = s.run
            match = _where(fits, **keys)["half_life"]
            name += f" · t½ {_format(float(match.iloc[0]), digits=3) if len(match) else '–'}"
        hover = "lag %{x} steps<br>relative %{text}"
        fig.add_trace(_line(s, rows_s["lag"], rows_s["relative"], name=name, hover=hover, legendgroup=s.name))
    _count_unplottable(rows["relative"], log_y, notes, "values of relative (a gradient that is exactly 0)")
    fig.update_yaxes(type="log" if log_y else "linear", exponentformat="power")
    return _figure(fig, theme, title, x_title, y_title, notes, _legend_title(runs))


def _log_ticks(z: np.ndarray) -> dict[str, list]:
    """Colour bar ticks for ``z = log10(value)`` labelled with the values: decades, or 1-2-5 when narrow."""
    finite = z[np.isfinite(z)]
    if not finite.size:
        return {}
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo >= 2:
        ticks = [float(k) for k in range(math.ceil(lo), math.floor(hi) + 1)]
    else:
        values = [m * 10.0**k for k in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
        ticks = [math.log10(v) for v in values if lo - 1e-9 <= math.log10(v) <= hi + 1e-9] or [lo]
    return {"tickvals": ticks, "ticktext": [_format(10.0**t) for t in ticks]}


def _log_heatmap(
    frame: pd.DataFrame, x: str, y: str, value: str, *, label: str, hover: str, mask: pd.DataFrame | None = None
) -> go.Heatmap:
    """``z = log10(value)`` on a (y, x) grid, floored at :data:`LOG_FLOOR` × the largest value; NaN where masked.

    The colour bar is labelled with values (not logarithms); the hover text gives the stored value.
    """
    if frame.duplicated([y, x]).any():
        raise ValueError(f"several rows share the same ({y}, {x}): select one configuration and one run")
    grid = frame.pivot(index=y, columns=x, values=value).sort_index().sort_index(axis=1)
    values = grid.to_numpy(dtype=float)
    largest = np.nanmax(values) if np.isfinite(values).any() else 1.0
    floor = LOG_FLOOR * largest if largest > 0 else LOG_FLOOR
    with np.errstate(invalid="ignore"):
        z = np.log10(np.clip(values, floor, None))
    z[np.isnan(values)] = np.nan
    if mask is not None:
        z[mask.reindex(index=grid.index, columns=grid.columns).to_numpy(dtype=bool)] = np.nan
    return go.Heatmap(
        x=grid.columns.to_numpy(),
        y=grid.index.to_numpy(),
        z=z,
        customdata=values,
        colorscale="Viridis",
        colorbar={"title": {"text": label}, **_log_ticks(z)},
        hovertemplate=hover.replace("%{text}", "%{customdata:.4~g}") + "<extra></extra>",
    )


def forgetting_heatmap(
    curves: pd.DataFrame,
    *,
    cell: str,
    readout: str = "last",
    quantity: str = "grad_x",
    batch: str = "probe",
    run: str | None = None,
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""How the memory horizon grows as the model learns: ``log10(relative)`` over (training step, lag).

    x = training step, y = lag (steps), colour = :math:`\log_{10}` of ``relative`` (the colour bar is
    labelled with values). Values below :data:`LOG_FLOOR` (zeros included) are floored there
    rather than becoming −inf; the hover text gives the stored value.

    Args:
        curves: the ``curves`` table; needs ``step, cell, readout, batch, quantity, lag, relative``.
        cell, readout: the one configuration shown.
        run: which run, when the frame has a ``run`` column with several runs (required then).
    """
    _template(theme)
    _require(curves, ("step", "cell", "readout", "batch", "quantity", "lag", "relative"), "curves")
    _choice(cell, tuple(CELL_COLORS), "cell")
    _choice(readout, tuple(READOUT_DASHES), "readout")
    _choice(quantity, tuple(QUANTITIES), "quantity")
    _choice(batch, BATCHES, "batch")
    _check_layer(layer, direction)
    symbol = QUANTITIES[quantity]
    rows = _where(_one_run(curves, run), cell=cell, readout=readout, quantity=quantity, batch=batch)
    rows, where = _at_layer(rows, layer, direction)
    title = f"Forgetting over training: {symbol} of {cell}/{readout} · {batch} batch"
    title += (f" · {run}" if run is not None else "") + (f" · {where}" if where else "")
    if rows.empty:
        return _figure(None, theme, title, "training step", "lag (steps)")
    hover = "step %{x}<br>lag %{y} steps<br>relative %{text}"
    trace = _log_heatmap(rows, "step", "lag", "relative", label=f"relative ‖{symbol}‖", hover=hover)
    return _figure(go.Figure(trace), theme, title, "training step", "lag (steps)")


def half_life_over_training(
    fits: pd.DataFrame,
    *,
    quantity: str = "grad_x",
    batch: str = "probe",
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""The fitted half-life :math:`\ln 2 / \mathrm{rate}` (steps) against training step, log y axis.

    One line per configuration. A half-life of ``inf`` (the gradient does not decay over the sequence)
    is drawn on a dotted ∞ line above the finite values with an open marker; NaN (no fit) leaves a gap.

    Args:
        fits: the ``fits`` table; needs ``step, cell, readout, batch, quantity, half_life``.
    """
    _template(theme)
    _require(fits, ("step", "cell", "readout", "batch", "quantity", "half_life"), "fits")
    _choice(quantity, tuple(QUANTITIES), "quantity")
    _choice(batch, BATCHES, "batch")
    _check_layer(layer, direction)
    runs = _runs(fits)
    rows, where = _at_layer(_where(fits, quantity=quantity, batch=batch), layer, direction)
    title = f"Half-life of {QUANTITIES[quantity]} over training · {batch} batch" + (f" · {where}" if where else "")
    x_title, y_title = "training step", "half-life t½ (steps)"
    if rows.empty:
        return _figure(None, theme, title, x_title, y_title)
    fig, notes = go.Figure(), []
    values = rows["half_life"].to_numpy(dtype=float)
    caps = _caps(values, log=True)
    for s in _series(rows, runs):
        rows_s = s.rows.sort_values("step")
        hover = "step %{x}<br>t½ %{text} steps"
        fig.add_trace(_line(s, rows_s["step"], rows_s["half_life"], caps=caps, markers=True, hover=hover))
    fig.update_yaxes(type="log", exponentformat="power")
    _show_infinite(fig, values, caps, True, notes, "half-lives (gradient does not decay)")
    _count_unplottable(values, True, notes, "half-lives")
    return _figure(fig, theme, title, x_title, y_title, notes, _legend_title(runs))


def _panels(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(cell, gate) panels: one row per cell type, its gates in :data:`GATE_ORDER`."""
    found = list(dict.fromkeys(zip(rows["cell"].tolist(), rows["gate"].tolist(), strict=True)))
    cell_rank = {c: i for i, c in enumerate(CELL_COLORS)}
    gate_rank = {g: i for i, g in enumerate(GATE_ORDER)}
    return sorted(found, key=lambda p: (cell_rank.get(p[0], len(cell_rank)), p[0], gate_rank.get(p[1], 99), p[1]))


def _gate_figure(
    gates: pd.DataFrame,
    *,
    value: str,
    band: bool,
    keep: bool,
    step: int | None,
    batch: str,
    layer: int | None,
    direction: str | None,
    theme: str,
    title: str,
    y_title: str,
    y_range: tuple[float, float] | None,
) -> go.Figure:
    """Gate statistics against t: one panel per (cell, gate), or the ``keep`` gate on one axis."""
    _template(theme)
    needed = ("step", "cell", "readout", "batch", "gate", "t", value) + (("q10", "q90") if band else ())
    _require(gates, needed, "gates")
    _choice(batch, BATCHES, "batch")
    _check_step(step)
    _check_layer(layer, direction)
    runs = _runs(gates)
    rows = _where(gates, batch=batch)
    rows = rows[rows["gate"] == "keep"] if keep else rows[rows["gate"] != "keep"]
    rows = rows[rows[value].notna()]
    rows, where = _at_layer(rows, layer, direction)
    rows = _at_step(rows, step)
    title = f"{title} · {batch} batch · {_step_label(rows, step)}" + (f" · {where}" if where else "")
    if rows.empty:
        return _figure(None, theme, title, "t (step)", y_title)
    if keep:
        fig, places = go.Figure(), {("", "keep"): {}}
    else:
        panels = _panels(rows)
        cells = list(dict.fromkeys(c for c, _ in panels))
        ncols = max(sum(1 for c, _ in panels if c == cell) for cell in cells)
        grid: dict[tuple[str, str], dict[str, int]] = {}
        for cell in cells:
            for k, panel in enumerate(p for p in panels if p[0] == cell):
                grid[panel] = {"row": cells.index(cell) + 1, "col": k + 1}
        titles = [""] * (len(cells) * ncols)
        height = 300 * len(cells) + 120
        for (cell, gate), at in grid.items():
            titles[(at["row"] - 1) * ncols + at["col"] - 1] = f"{cell.upper()} {gate}"
        fig = make_subplots(rows=len(cells), cols=ncols, subplot_titles=titles, shared_yaxes=y_range is not None,
                            horizontal_spacing=0.06, vertical_spacing=min(0.3, 140 / height))  # fmt: skip
        fig.update_layout(height=height)
        places = grid
    shown: set[str] = set()
    for (cell, gate), at in places.items():
        selected = rows if keep else _where(rows, cell=cell, gate=gate)
        for s in _series(selected, runs):
            rows_s = s.rows.sort_values("t")
            if band:
                t = rows_s["t"].to_numpy()
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([t, t[::-1]]),
                        y=np.concatenate([rows_s["q90"].to_numpy(float), rows_s["q10"].to_numpy(float)[::-1]]),
                        fill="toself",
                        fillcolor=_rgba(s.color, _BAND_ALPHA),
                        line={"width": 0, "color": s.color},
                        mode="lines",
                        name=f"{s.name} 10–90 % of units",
                        legendgroup=s.name,
                        showlegend=False,
                        hoverinfo="skip",
                    ),
                    **at,
                )
            hover = f"{gate}<br>t %{{x}}<br>{value} %{{text}}"
            line = _line(s, rows_s["t"], rows_s[value], hover=hover, showlegend=s.name not in shown)
            fig.add_trace(line, **at)
            shown.add(s.name)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_xaxes(title_text="t (step)")
    fig.update_yaxes(title_text=y_title, **({} if keep else {"col": 1}))
    notes = ["band: 10–90 % of units (quantiles of each unit's batch-mean gate value)"] if band else []
    return _figure(fig, theme, title, notes=notes, legend_title=_legend_title(runs))


def gate_profiles(
    gates: pd.DataFrame,
    *,
    step: int | None = None,
    batch: str = "probe",
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    """Each gate's mean value against t (step), with the 10–90 % band across units, one panel per gate.

    Panels: one row per cell type (GRU: reset, update, candidate; LSTM: input, forget, cell, output);
    the ``keep`` gate is left to :func:`keep_fraction`. Per configuration a filled band trace (q10 to q90)
    and a line trace (mean). Gate values are unitless (sigmoid gates in [0, 1], tanh in [−1, 1]).

    Args:
        gates: the ``gates`` table; needs ``step, cell, readout, batch, gate, t, mean, q10, q90``.
    """
    return _gate_figure(gates, value="mean", band=True, keep=False, step=step, batch=batch, layer=layer,
                        direction=direction, theme=theme, title="Gate values along the sequence",
                        y_title="gate value (unitless)", y_range=None)  # fmt: skip


def keep_fraction(
    gates: pd.DataFrame,
    *,
    step: int | None = None,
    batch: str = "probe",
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    """The fraction of the state kept per step (gate ``keep``: LSTM f, GRU z) against t, all cells on one axis.

    Mean line and 10–90 % band across units per configuration; y axis [0, 1]. The simple RNN has no such
    gate and no trace.

    Args:
        gates: the ``gates`` table; needs ``step, cell, readout, batch, gate, t, mean, q10, q90``.
    """
    return _gate_figure(gates, value="mean", band=True, keep=True, step=step, batch=batch, layer=layer,
                        direction=direction, theme=theme, title="Fraction of the state kept per step",
                        y_title="kept fraction per step (0–1)", y_range=(0.0, 1.02))  # fmt: skip


def gate_saturation(
    gates: pd.DataFrame,
    *,
    step: int | None = None,
    batch: str = "probe",
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    """The saturated fraction of each gate (values in the outer tenth of its range) against t, one panel per gate.

    Rows with NaN ``saturated`` (unbounded activations) are dropped; ``keep`` is left out (it repeats the
    LSTM forget / GRU update gate). y axis [0, 1].

    Args:
        gates: the ``gates`` table; needs ``step, cell, readout, batch, gate, t, saturated``.
    """
    return _gate_figure(gates, value="saturated", band=False, keep=False, step=step, batch=batch, layer=layer,
                        direction=direction, theme=theme, title="Gate saturation along the sequence",
                        y_title="saturated fraction (0–1)", y_range=(-0.02, 1.02))  # fmt: skip


def time_constant_histogram(
    time_constants: pd.DataFrame,
    *,
    step: int | None = None,
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""Histogram of the units' time constants :math:`\tau = 1 / (1 - \bar k)` (steps), log x axis.

    Counts in log-spaced bins (5 per decade, shared by every configuration) drawn as one step outline per
    configuration, so that several overlap legibly; x = τ (steps, log axis), y = units. Units with τ = inf
    (keep gate exactly 1) are counted at a point beyond the last bin, on a dotted ∞ line, with an open
    marker; NaN τ and τ ≤ 0 (impossible from a gate in [0, 1]) are counted in a note.

    Args:
        time_constants: the ``time_constants`` table; needs ``step, cell, readout, tau``.
    """
    _template(theme)
    _require(time_constants, ("step", "cell", "readout", "tau"), "time_constants")
    _check_step(step)
    _check_layer(layer, direction)
    runs = _runs(time_constants)
    rows, where = _at_layer(time_constants, layer, direction)
    rows = _at_step(rows, step)
    title = f"Time constants of the units · {_step_label(rows, step)}" + (f" · {where}" if where else "")
    x_title, y_title = "τ (steps)", "units (count)"
    if rows.empty:
        return _figure(None, theme, title, x_title, y_title)
    taus = rows["tau"].to_numpy(dtype=float)
    finite = taus[np.isfinite(taus) & (taus > 0)]
    lo = math.floor(math.log10(finite.min())) if finite.size else 0
    hi = math.ceil(math.log10(finite.max())) if finite.size else 1
    hi = max(hi, lo + 1)
    edges = np.logspace(lo, hi, 5 * (hi - lo) + 1)
    infinity = 10 ** (hi + 0.3)
    fig, notes = go.Figure(), []
    for s in _series(rows, runs):
        tau = s.rows["tau"].to_numpy(dtype=float)
        counts, _ = np.histogram(tau[np.isfinite(tau) & (tau > 0)], bins=edges)
        x = [edges[0], *edges]
        y = [0, *counts, 0]
        right = [edges[1], *edges[1:], edges[-1]]
        n_inf = int(np.isposinf(tau).sum())
        size = 7 if s.marked else 0
        symbols, sizes = [s.symbol] * len(x), [size] * len(x)
        if n_inf:
            x += [None, infinity]
            y += [None, n_inf]
            right += [None, math.inf]
            symbols += [s.symbol, f"{s.symbol}-open"]
            sizes += [0, 11]
        text = [
            "τ = ∞ (keep = 1)" if r == math.inf else (f"τ in [{_format(a)}, {_format(r)})" if r else "")
            for a, r in zip(x, right, strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                text=text,
                mode="lines+markers" if any(sizes) else "lines",
                line={"color": s.color, "dash": s.dash, "width": 2, "shape": "hv"},
                marker={"symbol": symbols, "size": sizes, "color": s.color, "line": {"width": 2, "color": s.color}},
                name=s.name,
                legendgroup=s.name,
                hovertemplate="%{text}<br>%{y} units<extra>%{fullData.name}</extra>",
            )
        )
    n_inf = int(np.isposinf(taus).sum())
    axis_hi = math.log10(infinity) + 0.15 if n_inf else hi
    fig.update_xaxes(type="log", range=[lo, axis_hi], exponentformat="power")
    if n_inf:
        decades = [10.0**k for k in range(lo, hi + 1)]
        fig.update_xaxes(tickvals=[*decades, infinity], ticktext=[*(_format(d) for d in decades), "∞"])
        fig.add_vline(x=infinity, line_dash="dot", line_color=NEUTRAL_COLOR, line_width=1.5)
        fig.add_annotation(text="∞", x=math.log10(infinity), y=1, yref="y domain", xanchor="left", yanchor="top",
                           showarrow=False, font={"color": NEUTRAL_COLOR})  # fmt: skip
        notes.append(f"{n_inf} units with τ = ∞ (keep gate = 1) drawn as open markers on the dotted ∞ line")
    dropped = int(len(taus) - finite.size - n_inf)
    if dropped:
        notes.append(f"{dropped} units with τ NaN or ≤ 0 are not drawn")
    return _figure(fig, theme, title, x_title, y_title, notes, _legend_title(runs))


def _lines_over_steps(
    frame: pd.DataFrame,
    panels: Sequence[tuple[str, str, float | None]],
    *,
    theme: str,
    title: str,
    log_y: bool,
    runs: list[str | None],
) -> go.Figure:
    """One subplot per (column, y title, reference y) in ``panels``: that column against training step."""
    fig = (
        make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.08)
        if len(panels) > 1
        else go.Figure()
    )
    notes: list[str] = []
    for k, (column, y_title, reference) in enumerate(panels):
        cell = {"row": k + 1, "col": 1} if len(panels) > 1 else {}
        values = frame[column].to_numpy(dtype=float)
        caps = _caps(values, log_y)
        for s in _series(frame, runs):
            rows_s = s.rows.sort_values("step")
            hover = f"step %{{x}}<br>{column} %{{text}}"
            fig.add_trace(_line(s, rows_s["step"], rows_s[column], caps=caps, markers=True, hover=hover,
                                showlegend=k == 0), **cell)  # fmt: skip
        if log_y:
            fig.update_yaxes(type="log", exponentformat="power", **cell)
        fig.update_yaxes(title_text=y_title, **cell)
        if reference is not None:
            _reference(fig, reference, **cell)
        _show_infinite(fig, values, caps, log_y, notes, f"values of {column}", **cell)
        _count_unplottable(values, log_y, notes, f"values of {column}")
    if len(panels) > 1:
        fig.update_layout(height=260 * len(panels) + 140)
        fig.update_xaxes(title_text="training step", row=len(panels), col=1)
    else:
        fig.update_xaxes(title_text="training step")
    return _figure(fig, theme, title, notes=notes, legend_title=_legend_title(runs))


def jacobian_over_training(
    jacobians: pd.DataFrame,
    *,
    layer: int | None = None,
    direction: str | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""Two panels against training step: the largest Lyapunov exponent and the mean Jacobian spectral norm.

    Top: ``lyapunov_max`` (per step, natural log of the growth factor; > 0 perturbations grow, < 0 they
    shrink), with a dotted y = 0 reference line. Bottom: ``spectral_norm_mean``, the mean over steps of
    :math:`\lVert \partial h_t / \partial h_{t-1} \rVert_2` (unitless), with a dotted y = 1 line.

    Args:
        jacobians: the ``jacobians`` table; needs ``step, cell, readout, lyapunov_max, spectral_norm_mean``.
    """
    _template(theme)
    _require(jacobians, ("step", "cell", "readout", "lyapunov_max", "spectral_norm_mean"), "jacobians")
    _check_layer(layer, direction)
    runs = _runs(jacobians)
    rows, where = _at_layer(jacobians, layer, direction)
    title = "Step Jacobians over training" + (f" · {where}" if where else "")
    if rows.empty:
        return _figure(None, theme, title, "training step", "λ_max (per step)")
    panels = [
        ("lyapunov_max", "λ_max (ln growth per step)", 0.0),
        ("spectral_norm_mean", "mean ‖∂h_t/∂h_t−1‖₂ (×)", 1.0),
    ]
    return _lines_over_steps(rows, panels, theme=theme, title=title, log_y=False, runs=runs)


def learning_curves(metrics: pd.DataFrame, *, baseline: float | None = None, theme: str = "light") -> go.Figure:
    """Train and test loss against training step, one pair of lines per configuration, log y axis.

    Test loss is drawn solid (the readout's line style), training loss the same but lighter. With
    ``baseline`` (the task's ``baseline_loss``: the loss of the trivial predictor) a dotted horizontal
    line labelled "trivial predictor". A diverged (infinite) loss is drawn on a dotted ∞ line.

    Args:
        metrics: the ``metrics`` table; needs ``step, cell, readout, split, loss``.
        baseline: a finite float, or None.
    """
    _template(theme)
    _require(metrics, ("step", "cell", "readout", "split", "loss"), "metrics")
    if baseline is not None and (
        not isinstance(baseline, (int, float, np.integer, np.floating))
        or isinstance(baseline, bool)
        or not math.isfinite(baseline)
    ):
        raise ValueError(f"baseline must be a finite float or None, got: {baseline!r}")
    runs = _runs(metrics)
    rows = metrics[metrics["split"].isin(["train", "test"]).to_numpy(dtype=bool, na_value=False)]
    title, x_title, y_title = "Learning curves", "training step", "loss (task units)"
    if rows.empty:
        return _figure(None, theme, title, x_title, y_title)
    values = rows["loss"].to_numpy(dtype=float)
    caps = _caps(np.append(values, baseline) if baseline is not None else values, log=True)
    fig, notes = go.Figure(), []
    for s in _series(rows, runs):
        for split, opacity in (("train", _TRAIN_OPACITY), ("test", 1.0)):
            at = s.rows[s.rows["split"] == split].sort_values("step")
            if at.empty:
                continue
            hover = f"step %{{x}}<br>{split} loss %{{text}}"
            fig.add_trace(_line(s, at["step"], at["loss"], caps=caps, markers=True, name=f"{s.name} · {split}",
                                hover=hover, opacity=opacity))  # fmt: skip
    fig.update_yaxes(type="log", exponentformat="power")
    if baseline is not None:
        _reference(fig, baseline, f"trivial predictor ({_format(float(baseline))})", log=True)
    _show_infinite(fig, values, caps, True, notes, "losses (diverged)")
    _count_unplottable(values, True, notes, "losses")
    return _figure(fig, theme, title, x_title, y_title, notes, _legend_title(runs, "cell/readout · split"))


def generalisation_gap(metrics: pd.DataFrame, *, theme: str = "light") -> go.Figure:
    """The generalisation gap, test − train loss (rows with split ``"gap"``), against training step.

    Linear y axis with a dotted y = 0 line; above it the model does worse on held-out data.

    Args:
        metrics: the ``metrics`` table; needs ``step, cell, readout, split, loss``.
    """
    _template(theme)
    _require(metrics, ("step", "cell", "readout", "split", "loss"), "metrics")
    runs = _runs(metrics)
    rows = _where(metrics, split="gap")
    title = "Generalisation gap (test − train loss)"
    if rows.empty:
        return _figure(None, theme, title, "training step", "test − train loss (task units)")
    panels = [("loss", "test − train loss (task units)", 0.0)]
    return _lines_over_steps(rows, panels, theme=theme, title=title, log_y=False, runs=runs)


def parameter_growth(counts: pd.DataFrame, *, theme: str = "light") -> go.Figure:
    """Parameters against sequence length for the RNN, GRU, LSTM and a dense layer, log-log.

    The recurrent layers reuse their weights at every step, so their lines are flat; a dense layer over
    the flattened ``T × D`` sequence grows linearly with T. Dense is drawn in :data:`NEUTRAL_COLOR`.

    Args:
        counts: from :func:`gradscope.analysis.parameter_counts` with several ``seq_len``; needs
            ``model, seq_len, parameters``, for one (input_size, hidden_size, num_layers) where those
            columns are present.
    """
    _template(theme)
    _require(counts, ("model", "seq_len", "parameters"), "counts")
    sizes = [c for c in ("input_size", "hidden_size", "num_layers") if c in counts.columns]
    title, x_title, y_title = "Parameters against sequence length", "sequence length T (steps)", "parameters (count)"
    if counts.empty:
        return _figure(None, theme, title, x_title, y_title)
    if sizes:
        combos = counts[sizes].drop_duplicates()
        if len(combos) > 1:
            raise ValueError(
                f"counts must hold one ({', '.join(sizes)}), got {len(combos)}: {combos.to_dict('records')}"
            )
        first = combos.iloc[0]
        short = {"input_size": "D", "hidden_size": "M", "num_layers": "layers"}
        title += " (" + ", ".join(f"{short[c]} = {int(first[c])}" for c in sizes) + ")"
    runs = _runs(counts)
    fig = go.Figure()
    for s in _series(counts, runs, by=("model",)):
        rows_s = s.rows.sort_values("seq_len")
        hover = "T = %{x}<br>%{text} parameters"
        fig.add_trace(_line(s, rows_s["seq_len"], rows_s["parameters"], markers=True, hover=hover))
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return _figure(fig, theme, title, x_title, y_title, legend_title=_legend_title(runs, "model"))


def connectivity_heatmap(
    connectivity: pd.DataFrame,
    *,
    cell: str,
    readout: str = "last",
    run: str | None = None,
    step: int | None = None,
    theme: str = "light",
) -> go.Figure:
    r"""How much each output step depends on each input step: :math:`\lVert \partial h_t / \partial x_s \rVert_F`.

    x = input step s, y = output step t (both in steps), colour = :math:`\log_{10}` of ``norm`` (the colour
    bar is labelled with values). Entries with s > t that are exactly 0 (the future cannot affect the
    past in a forward layer) are left blank; every other value is floored at :data:`LOG_FLOOR` × the
    largest entry, so a vanished dependence shows as the darkest colour instead of −inf. The hover text
    gives the stored value.

    Args:
        connectivity: the ``connectivity`` table; needs ``step, cell, readout, t, s, norm``.
        cell, readout: the one configuration shown.
        run: which run, when the frame has a ``run`` column with several runs (required then).
        step: the training step; None is the last one stored.
    """
    _template(theme)
    _require(connectivity, ("step", "cell", "readout", "t", "s", "norm"), "connectivity")
    _choice(cell, tuple(CELL_COLORS), "cell")
    _choice(readout, tuple(READOUT_DASHES), "readout")
    _check_step(step)
    rows = _at_step(_where(_one_run(connectivity, run), cell=cell, readout=readout), step)
    title = f"Connectivity ‖∂h_t/∂x_s‖ of {cell}/{readout} · {_step_label(rows, step)}"
    title += f" · {run}" if run is not None else ""
    x_title, y_title = "input step s (step)", "output step t (step)"
    if rows.empty:
        return _figure(None, theme, title, x_title, y_title)
    masked = ((rows["s"] > rows["t"]) & (rows["norm"] == 0)).astype(float)
    causal = rows.assign(masked=masked).pivot(index="t", columns="s", values="masked").fillna(0.0) > 0
    hover = "output t %{y}<br>input s %{x}<br>norm %{text}"
    trace = _log_heatmap(rows, "s", "t", "norm", label="‖∂h_t/∂x_s‖", hover=hover, mask=causal)
    fig = go.Figure(trace)
    return _figure(fig, theme, title, x_title, y_title)


_SUMMARY_HEADERS = {
    "test_loss": "test loss",
    "baseline_loss": "baseline loss",
    "loss_ratio": "test / baseline",
    "test_metric": "test metric",
    "gap": "gap (test − train)",
    "half_life": "t½ (steps)",
    "horizon": "horizon (steps)",
    "median_tau": "median τ (steps)",
    "lyapunov_max": "λ_max (per step)",
}


def summary_table(summary: pd.DataFrame, *, theme: str = "light") -> go.Figure:
    """The run summary as a table figure: one row per configuration, every column of ``summary``.

    Floats are shown with 4 significant digits, NA / NaN as ``–``, infinities as ``∞`` / ``−∞``; the
    ``cell`` column's text takes the cell's colour (:data:`CELL_COLORS`). Headers with units where the
    column has one (``half_life`` → "t½ (steps)").

    Args:
        summary: from :func:`gradscope.experiments.run_summary` (optionally with a ``run`` column);
            needs ``cell, readout``.
    """
    template = _template(theme)
    _require(summary, ("cell", "readout"), "summary")
    title = "Summary at the last step"
    if summary.empty:
        return _figure(None, theme, title)
    layout = pio.templates[template].layout
    page, text, rule = layout.paper_bgcolor, layout.font.color, layout.xaxis.gridcolor
    columns = list(summary.columns)
    values = [[_format(v) for v in summary[c].tolist()] for c in columns]
    cell_colors = [CELL_COLORS.get(str(c), NEUTRAL_COLOR) for c in summary["cell"].tolist()]
    # cells filled with the page colour: CELL_COLORS keep their contrast (the dark template's blue-grey fill would not)
    headers = [_SUMMARY_HEADERS.get(c, c) for c in columns]
    words = [max((len(w) for w in str(h).split()), default=1) for h in headers]
    widths = [max(w, *(len(v) for v in column)) + 1 for w, column in zip(words, values, strict=True)]
    table = go.Table(
        columnwidth=widths,
        header={"values": headers, "align": "left", "fill": {"color": rule},
                "font": {"color": text}, "line": {"color": rule}},
        cells={"values": values, "align": "left", "fill": {"color": page}, "line": {"color": rule},
               "font": {"color": [cell_colors if c == "cell" else text for c in columns]}},
    )  # fmt: skip
    fig = go.Figure(table)
    fig.update_layout(height=200 + 30 * len(summary))
    return _figure(fig, theme, title)
