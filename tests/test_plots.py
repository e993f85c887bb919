"""Plot functions: frames in, figures out; asserted on fig.data and fig.layout, never on images.

Hand-built frames (a few rows each, columns as in gradscope.storage.TABLES) pin values, filtering and
the handling of infinities; one small real run checks every function on what compare() writes.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from gradscope import analysis, plots
from gradscope.experiments import compare, run_summary
from gradscope.storage import TABLES

# ---- hand-built frames ----


def _base(cell: str, step: int, batch: str, quantity: str) -> float:
    """Decay per step of the hand-built curves: every (cell, step, batch, quantity) has its own."""
    value = {0: 0.5, 10: 0.6, 20: 0.7}[step] * (1.0 if batch == "probe" else 0.9)
    return value * (1.0 if quantity == "grad_x" else 0.95) * (1.0 if cell == "rnn" else 1.2)


CONFIG_STEPS = {("rnn", "last"): (0, 10), ("lstm", "max"): (0, 10, 20)}
"""rnn/last ends at step 10, lstm/max at step 20: step=None must pick each one's own last step."""


def curves_frame() -> pd.DataFrame:
    """Curves: rnn/last (steps 0, 10) and lstm/max (steps 0, 10, 20); probe and train batches; grad_x and
    grad_h; lags 0-3; relative = base ** lag (see _base); layer 0, forward."""
    rows = []
    for (cell, readout), steps in CONFIG_STEPS.items():
        for step in steps:
            for batch in ("probe", "train"):
                for quantity in ("grad_x", "grad_h"):
                    base = _base(cell, step, batch, quantity)
                    for lag in range(4):
                        rows.append((step, cell, readout, batch, 0, "forward", quantity, 3 - lag, lag, 2 * base**lag, base**lag))  # fmt: skip
    return pd.DataFrame(rows, columns=TABLES["curves"])


def fits_frame() -> pd.DataFrame:
    """Fits matching curves_frame: half_life = ln 2 / -ln(base); lstm/max at step 20 (probe, grad_x) is inf."""
    curves = curves_frame()
    rows = []
    for (step, cell, readout, batch, quantity), _ in curves.groupby(["step", "cell", "readout", "batch", "quantity"]):
        half_life = math.log(2) / -math.log(_base(cell, step, batch, quantity))
        if (cell, step, batch, quantity) == ("lstm", 20, "probe", "grad_x"):
            half_life = math.inf
        rows.append((step, cell, readout, batch, 0, "forward", quantity, math.log(2) / half_life, half_life, pd.NA, 1.0, "vanishing", 4))  # fmt: skip
    return pd.DataFrame(rows, columns=TABLES["fits"]).astype({"horizon": "Int64"})


GATES = {"gru": ("reset", "update", "candidate", "keep"), "lstm": ("input", "forget", "cell", "output", "keep")}


def gates_frame() -> pd.DataFrame:
    """Gates: gru/last and lstm/last at steps 0 and 5, t 0-4, probe and train; mean = 0.1 * gate index + step / 100
    + t / 1000 (+0.3 on train), q10/q90 = mean -/+ 0.05; saturated = t / 10, NaN for the GRU candidate."""
    rows = []
    for cell, gates in GATES.items():
        for step in (0, 5):
            for batch in ("probe", "train"):
                for k, gate in enumerate(gates):
                    for t in range(5):
                        mean = 0.1 * k + step / 100 + t / 1000 + (0.3 if batch == "train" else 0.0)
                        saturated = math.nan if gate == "candidate" else t / 10
                        rows.append((step, cell, "last", batch, 0, "forward", gate, t, mean, mean - 0.05, mean + 0.05, saturated))  # fmt: skip
    return pd.DataFrame(rows, columns=TABLES["gates"])


def time_constants_frame() -> pd.DataFrame:
    """Time constants of 8 units of gru/last and lstm/last at steps 0 (all tau 2) and 5; at step 5 lstm/last
    has two units with tau = inf (keep gate exactly 1)."""
    taus = {"gru": [1.5, 2, 3, 5, 10, 20, 50, 90], "lstm": [1.5, 2, 3, 5, 10, 20, math.inf, math.inf]}
    rows = []
    for cell, values in taus.items():
        for step in (0, 5):
            for unit, tau in enumerate(values if step == 5 else [2.0] * 8):
                rows.append((step, cell, "last", 0, "forward", unit, 1 - 1 / tau, tau))
    return pd.DataFrame(rows, columns=TABLES["time_constants"])


def jacobians_frame() -> pd.DataFrame:
    rows = [
        (step, cell, readout, 0, "forward", -0.1 * (k + 1) + step / 100, 0.9 + step / 100, 1.0 + step / 100)
        for k, (cell, readout) in enumerate([("rnn", "last"), ("gru", "last")])
        for step in (0, 10, 20)
    ]
    return pd.DataFrame(rows, columns=TABLES["jacobians"])


def metrics_frame() -> pd.DataFrame:
    """Metrics of rnn/last and gru/last at steps 0, 10, 20: train loss 1 / (step + 1), test loss 2 / (step + 1)."""
    rows = []
    for cell in ("rnn", "gru"):
        for step in (0, 10, 20):
            train, test = 1 / (step + 1), 2 / (step + 1)
            rows += [(step, cell, "last", "train", train, train), (step, cell, "last", "test", test, test)]
            rows.append((step, cell, "last", "gap", test - train, test - train))
    return pd.DataFrame(rows, columns=TABLES["metrics"])


def connectivity_frame() -> pd.DataFrame:
    """Connectivity of gru/last at steps 3 and 7 (T = 4): norm = step * 0.5 ** (t - s) for s <= t, 0 for s > t,
    and an exact 0 at (t=3, s=0) where the dependence has vanished."""
    rows = []
    for step in (3, 7):
        for t in range(4):
            for s in range(4):
                norm = 0.0 if s > t or (t, s) == (3, 0) else step * 0.5 ** (t - s)
                rows.append((step, "gru", "last", t, s, t - s, norm))
    return pd.DataFrame(rows, columns=TABLES["connectivity"])


def two_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The same frame twice, as runs "A" and "B", with a leading run column (as the dashboard combines runs)."""
    both = pd.concat([frame.assign(run="A"), frame.assign(run="B")], ignore_index=True)
    return both[["run", *frame.columns]]


def expected(frame: pd.DataFrame, sort: str, **equal: object) -> pd.DataFrame:
    """The rows of ``frame`` with the given column values, sorted by ``sort``."""
    rows = frame
    for column, value in equal.items():
        rows = rows[rows[column] == value]
    return rows.sort_values(sort)


def by_name(fig: go.Figure) -> dict[str, go.Scatter]:
    return {trace.name: trace for trace in fig.data}


def notes(fig: go.Figure) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


# ---- one small real run ----


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return compare(
        "recall", 6, cells=("rnn", "gru", "lstm"), readouts={"rnn": ["last"], "gru": ["last"], "lstm": ["last", "max"]},
        steps=4, record_every=2, hidden_size=8, batch_size=8, eval_size=32, probe_size=8, jacobian_samples=2,
        out=tmp_path_factory.mktemp("runs") / "r",
    )  # fmt: skip


def _identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


CALLS = {
    "forgetting_curves": lambda run, cut, **kw: plots.forgetting_curves(cut(run.curves), run.fits, **kw),
    "forgetting_heatmap": lambda run, cut, **kw: plots.forgetting_heatmap(cut(run.curves), cell="lstm", **kw),
    "half_life_over_training": lambda run, cut, **kw: plots.half_life_over_training(cut(run.fits), **kw),
    "gate_profiles": lambda run, cut, **kw: plots.gate_profiles(cut(run.gates), **kw),
    "keep_fraction": lambda run, cut, **kw: plots.keep_fraction(cut(run.gates), **kw),
    "gate_saturation": lambda run, cut, **kw: plots.gate_saturation(cut(run.gates), **kw),
    "time_constant_histogram": lambda run, cut, **kw: plots.time_constant_histogram(cut(run.time_constants), **kw),
    "jacobian_over_training": lambda run, cut, **kw: plots.jacobian_over_training(cut(run.jacobians), **kw),
    "learning_curves": lambda run, cut, **kw: plots.learning_curves(
        cut(run.metrics), baseline=run.info["task"]["baseline_loss"], **kw
    ),
    "generalisation_gap": lambda run, cut, **kw: plots.generalisation_gap(cut(run.metrics), **kw),
    "parameter_growth": lambda run, cut, **kw: plots.parameter_growth(
        cut(analysis.parameter_counts(3, 8, [5, 50, 500])), **kw
    ),
    "connectivity_heatmap": lambda run, cut, **kw: plots.connectivity_heatmap(cut(run.connectivity), cell="gru", **kw),
    "summary_table": lambda run, cut, **kw: plots.summary_table(cut(run_summary(run)), **kw),
}
REQUIRED = {  # one column each function needs from its main frame
    "forgetting_curves": "relative",
    "forgetting_heatmap": "lag",
    "half_life_over_training": "half_life",
    "gate_profiles": "q90",
    "keep_fraction": "gate",
    "gate_saturation": "saturated",
    "time_constant_histogram": "tau",
    "jacobian_over_training": "lyapunov_max",
    "learning_curves": "split",
    "generalisation_gap": "loss",
    "parameter_growth": "seq_len",
    "connectivity_heatmap": "norm",
    "summary_table": "cell",
}


def test_every_public_function_is_exercised():
    functions = {name for name in plots.__all__ if callable(getattr(plots, name)) and name.islower()}
    assert functions == set(CALLS) == set(REQUIRED)


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize(("theme", "template"), [("light", "plotly_white"), ("dark", "plotly_dark")])
def test_every_figure_on_the_real_run_takes_the_theme_and_is_not_shown(run, name, theme, template, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plot function called show()")

    monkeypatch.setattr(go.Figure, "show", refuse)
    fig = CALLS[name](run, _identity, theme=theme)
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    assert fig.layout.template == pio.templates[template]
    assert "no data" not in notes(fig)


@pytest.mark.parametrize("name", CALLS)
def test_every_axis_has_a_title_with_units(run, name):
    fig = CALLS[name](run, _identity)
    axes = [key for key in fig.layout.to_plotly_json() if key.startswith(("xaxis", "yaxis"))]
    if name == "summary_table":
        assert axes == [] or all(not fig.layout[a].title.text for a in axes)
        return
    titled = [fig.layout[a].title.text for a in axes if fig.layout[a].title.text]
    assert titled, name
    for text in titled:  # a unit in parentheses; "training step" is its own unit
        assert ("(" in text and ")" in text) or text == "training step", f"{name}: axis title {text!r} has no unit"


@pytest.mark.parametrize("name", CALLS)
def test_bad_theme_is_refused(run, name):
    with pytest.raises(ValueError, match=r"theme must be one of \['light', 'dark'\], got: 'sepia'"):
        CALLS[name](run, _identity, theme="sepia")


@pytest.mark.parametrize("name", CALLS)
def test_missing_columns_are_named(run, name):
    column = REQUIRED[name]
    with pytest.raises(ValueError, match=rf"missing \['{column}'\]"):
        CALLS[name](run, lambda frame: frame.drop(columns=[column]))


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_an_empty_selection_says_no_data(run, name, theme):
    fig = CALLS[name](run, lambda frame: frame.iloc[:0], theme=theme)
    assert len(fig.data) == 0
    assert [a.text for a in fig.layout.annotations] == ["no data"]
    assert fig.layout.template == pio.templates[plots.THEMES[theme]]


def test_not_a_frame_is_refused():
    with pytest.raises(ValueError, match="curves must be a pandas DataFrame.*got: dict"):
        plots.forgetting_curves({"lag": [0]})


def test_each_cell_keeps_its_colour_in_every_figure(run):
    figures = [CALLS[name](run, _identity) for name in CALLS if name not in ("summary_table",)]
    seen: dict[str, set[str]] = {}
    for fig in figures:
        for trace in fig.data:
            if isinstance(trace, go.Scatter) and trace.name:
                cell = trace.name.split(" · ")[0].split("/")[0]
                seen.setdefault(cell, set()).add(trace.line.color)
    assert seen == {
        "rnn": {plots.CELL_COLORS["rnn"]},
        "gru": {plots.CELL_COLORS["gru"]},
        "lstm": {plots.CELL_COLORS["lstm"]},
        "dense": {plots.NEUTRAL_COLOR},
    }


def _luminance(color: str) -> float:
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize("page", ["#FFFFFF", "#111111"])  # plotly_white and plotly_dark's paper colours
def test_line_colours_read_on_light_and_dark_pages(page):
    assert plots.CELL_COLORS == {"rnn": "#D55E00", "gru": "#009E73", "lstm": "#0072B2"}
    for color in [*plots.CELL_COLORS.values(), plots.NEUTRAL_COLOR]:
        light, dark = sorted([_luminance(color), _luminance(page)], reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 3.0, (color, page)  # WCAG contrast for graphics


def test_the_module_imports_no_dash_and_does_no_file_io():
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "math", "collections.abc", "dataclasses", "numpy", "pandas",
                        "plotly.graph_objects", "plotly.io", "plotly.subplots"}  # fmt: skip
    called = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not called & {"show", "write_html", "write_image", "to_parquet", "open"}


# ---- forgetting curves ----


def test_forgetting_curves_one_line_per_configuration_at_its_last_step():
    curves = curves_frame()
    fig = plots.forgetting_curves(curves)
    assert [t.name for t in fig.data] == ["rnn/last", "lstm/max"]
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    rnn, lstm = fig.data
    np.testing.assert_array_equal(rnn.x, [0, 1, 2, 3])
    last = expected(curves, "lag", cell="rnn", step=10, batch="probe", quantity="grad_x")
    np.testing.assert_allclose(rnn.y, last["relative"])
    np.testing.assert_allclose(
        lstm.y, expected(curves, "lag", cell="lstm", step=20, batch="probe", quantity="grad_x")["relative"]
    )
    assert rnn.line.color == plots.CELL_COLORS["rnn"] and rnn.line.dash == "solid"
    assert lstm.line.color == plots.CELL_COLORS["lstm"] and lstm.line.dash == plots.READOUT_DASHES["max"]
    assert "last step of each" in fig.layout.title.text


def test_forgetting_curves_axes():
    fig = plots.forgetting_curves(curves_frame(), quantity="grad_h")
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text == "lag (steps)"
    assert "relative ‖∂L/∂h_t‖" in fig.layout.yaxis.title.text
    assert plots.forgetting_curves(curves_frame(), log_y=False).layout.yaxis.type == "linear"


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"step": 0}, {"step": 0, "batch": "probe", "quantity": "grad_x"}),
        ({"step": 10, "batch": "train"}, {"step": 10, "batch": "train", "quantity": "grad_x"}),
        ({"step": 10, "quantity": "grad_h"}, {"step": 10, "batch": "probe", "quantity": "grad_h"}),
    ],
)
def test_forgetting_curves_select_step_batch_and_quantity(options, where):
    curves = curves_frame()
    fig = plots.forgetting_curves(curves, **options)
    for trace, cell in zip(fig.data, ["rnn", "lstm"], strict=True):
        np.testing.assert_allclose(trace.y, expected(curves, "lag", cell=cell, **where)["relative"])
    assert f"step {where['step']}" in fig.layout.title.text


def test_forgetting_curves_put_the_half_life_in_the_legend():
    fig = plots.forgetting_curves(curves_frame(), fits_frame())
    rnn_half_life = math.log(2) / -math.log(_base("rnn", 10, "probe", "grad_x"))
    assert [t.name for t in fig.data] == [f"rnn/last · t½ {rnn_half_life:.3g}", "lstm/max · t½ ∞"]
    step0 = plots.forgetting_curves(curves_frame(), fits_frame(), step=0)
    assert step0.data[1].name == "lstm/max · t½ 1.36"  # ln 2 / -ln 0.6: the fit of the same step, not the last


def test_forgetting_curves_refuse_unknown_quantity_batch_and_step():
    with pytest.raises(ValueError, match=r"quantity must be one of \['grad_x', 'grad_h', 'grad_c'\], got: 'grad_q'"):
        plots.forgetting_curves(curves_frame(), quantity="grad_q")
    with pytest.raises(ValueError, match=r"batch must be one of \['probe', 'train'\]"):
        plots.forgetting_curves(curves_frame(), batch="test")
    with pytest.raises(ValueError, match="step must be an int or None"):
        plots.forgetting_curves(curves_frame(), step="last")
    with pytest.raises(ValueError, match=r"fits needs columns .*missing \['half_life'\]"):
        plots.forgetting_curves(curves_frame(), fits_frame().drop(columns=["half_life"]))


def test_forgetting_curves_of_a_quantity_no_cell_has_say_no_data():
    fig = plots.forgetting_curves(curves_frame(), quantity="grad_c")  # valid, but only an LSTM's, and absent
    assert len(fig.data) == 0 and [a.text for a in fig.layout.annotations] == ["no data"]


def test_two_runs_get_prefixed_names_and_distinct_markers():
    fig = plots.forgetting_curves(two_runs(curves_frame()))
    assert [t.name for t in fig.data] == ["A · rnn/last", "A · lstm/max", "B · rnn/last", "B · lstm/max"]
    traces = by_name(fig)
    assert traces["A · rnn/last"].marker.symbol != traces["B · rnn/last"].marker.symbol
    assert traces["A · rnn/last"].marker.symbol == traces["A · lstm/max"].marker.symbol
    assert traces["A · rnn/last"].line.color == traces["B · rnn/last"].line.color == plots.CELL_COLORS["rnn"]
    assert "markers" in traces["B · rnn/last"].mode
    assert fig.layout.legend.title.text == "run · cell/readout"
    half_lives = by_name(plots.half_life_over_training(two_runs(fits_frame())))
    assert half_lives["A · rnn/last"].marker.symbol == traces["A · rnn/last"].marker.symbol  # same run, same marker


def test_a_single_run_column_does_not_prefix_names():
    fig = plots.forgetting_curves(curves_frame().assign(run="only"))
    assert [t.name for t in fig.data] == ["rnn/last", "lstm/max"]
    assert fig.data[0].mode == "lines"


def test_layers_are_selected_layer_0_forward_by_default():
    curves = curves_frame()
    deeper = curves.assign(layer=1, relative=curves["relative"] / 2)
    both = pd.concat([curves, deeper], ignore_index=True)
    fig = plots.forgetting_curves(both, step=10)
    np.testing.assert_allclose(
        fig.data[0].y, expected(curves, "lag", cell="rnn", step=10, batch="probe", quantity="grad_x")["relative"]
    )
    assert "layer 0 forward" in fig.layout.title.text
    second = plots.forgetting_curves(both, step=10, layer=1)
    np.testing.assert_allclose(second.data[0].y, fig.data[0].y / 2)
    assert "layer 1 forward" in second.layout.title.text
    assert len(plots.forgetting_curves(both, direction="backward").data) == 0
    only_second = plots.forgetting_curves(deeper, step=10)  # a caller that selected layer 1 itself
    np.testing.assert_allclose(only_second.data[0].y, second.data[0].y)
    assert "layer 1 forward" in only_second.layout.title.text
    with pytest.raises(ValueError, match=r"direction must be one of \['forward', 'backward'\]"):
        plots.forgetting_curves(both, direction="up")


def test_a_zero_gradient_on_the_log_axis_is_counted_in_a_note():
    curves = curves_frame()
    curves.loc[(curves["cell"] == "rnn") & (curves["lag"] == 3), "relative"] = 0.0
    assert "values of relative (a gradient that is exactly 0) ≤ 0 cannot be drawn" in notes(
        plots.forgetting_curves(curves)
    )
    assert notes(plots.forgetting_curves(curves, log_y=False)) == ""


# ---- heatmap over training ----


def test_forgetting_heatmap_is_log10_relative_over_step_and_lag():
    curves = curves_frame()
    fig = plots.forgetting_heatmap(curves, cell="lstm", readout="max")
    (heatmap,) = fig.data
    assert isinstance(heatmap, go.Heatmap)
    np.testing.assert_array_equal(heatmap.x, [0, 10, 20])
    np.testing.assert_array_equal(heatmap.y, [0, 1, 2, 3])
    rows = curves[(curves["cell"] == "lstm") & (curves["batch"] == "probe") & (curves["quantity"] == "grad_x")]
    grid = rows.pivot(index="lag", columns="step", values="relative")
    np.testing.assert_allclose(np.array(heatmap.z, dtype=float), np.log10(grid.to_numpy()))
    assert fig.layout.xaxis.title.text == "training step" and fig.layout.yaxis.title.text == "lag (steps)"


def test_forgetting_heatmap_floors_zeros_instead_of_minus_infinity():
    curves = curves_frame()
    curves.loc[curves["lag"] == 3, "relative"] = 0.0
    z = np.array(plots.forgetting_heatmap(curves, cell="rnn").data[0].z, dtype=float)
    assert np.isfinite(z).all()
    assert z[3].tolist() == [math.log10(plots.LOG_FLOOR)] * 2


def test_forgetting_heatmap_needs_one_run():
    both = two_runs(curves_frame())
    with pytest.raises(ValueError, match=r"several runs \['A', 'B'\]: pass run="):
        plots.forgetting_heatmap(both, cell="rnn")
    with pytest.raises(ValueError, match=r"run must be one of \['A', 'B'\], got: 'C'"):
        plots.forgetting_heatmap(both, cell="rnn", run="C")
    with pytest.raises(ValueError, match="no 'run' column"):
        plots.forgetting_heatmap(curves_frame(), cell="rnn", run="A")
    with pytest.raises(ValueError, match=r"cell must be one of \['rnn', 'gru', 'lstm'\]"):
        plots.forgetting_heatmap(both, cell="transformer", run="A")
    fig = plots.forgetting_heatmap(both, cell="rnn", run="B")
    assert "B" in fig.layout.title.text and np.array(fig.data[0].z).shape == (4, 2)


# ---- half-life over training, and infinities ----


def test_half_life_over_training_on_a_log_axis():
    fits = fits_frame()
    fig = plots.half_life_over_training(fits, quantity="grad_h", batch="train")
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis.title.text == "half-life t½ (steps)" and fig.layout.xaxis.title.text == "training step"
    rnn = by_name(fig)["rnn/last"]
    np.testing.assert_array_equal(rnn.x, [0, 10])
    np.testing.assert_allclose(rnn.y, expected(fits, "step", cell="rnn", batch="train", quantity="grad_h")["half_life"])
    assert "markers" in rnn.mode


def test_an_infinite_half_life_is_drawn_at_the_top_with_an_open_marker():
    fig = plots.half_life_over_training(fits_frame())
    lstm = by_name(fig)["lstm/max"]
    finite = expected(fits_frame(), "step", cell="lstm", batch="probe", quantity="grad_x")["half_life"].to_numpy()
    np.testing.assert_allclose(lstm.y[:2], finite[:2])
    top = lstm.y[2]
    assert math.isfinite(top) and top > max(max(t.y) for t in fig.data if t is not lstm)
    assert top > max(lstm.y[:2])
    assert lstm.marker.symbol[2] == "circle-open" and lstm.marker.symbol[0] == "circle"
    assert lstm.text[2] == "∞"
    assert "1 infinite half-lives" in notes(fig)
    assert fig.layout.yaxis.ticktext[-1] == "∞" and fig.layout.yaxis.tickvals[-1] == pytest.approx(top)
    assert math.log10(top) < fig.layout.yaxis.range[1]  # inside the visible range
    assert any(shape.y0 == pytest.approx(top) for shape in fig.layout.shapes)


def test_a_diverged_loss_is_drawn_not_dropped():
    metrics = metrics_frame()
    metrics.loc[(metrics["cell"] == "gru") & (metrics["split"] == "test") & (metrics["step"] == 20), "loss"] = math.inf
    fig = plots.learning_curves(metrics)
    test = by_name(fig)["gru/last · test"]
    assert test.text[-1] == "∞" and test.marker.symbol[-1].endswith("-open") and math.isfinite(test.y[-1])
    assert "1 infinite losses" in notes(fig)


# ---- gates ----


def test_gate_profiles_one_panel_per_gate_with_a_band():
    gates = gates_frame()
    fig = plots.gate_profiles(gates)
    titles = [a.text for a in fig.layout.annotations if a.text.startswith(("GRU", "LSTM"))]
    assert titles == [
        "GRU reset",
        "GRU update",
        "GRU candidate",
        "LSTM input",
        "LSTM forget",
        "LSTM cell",
        "LSTM output",
    ]
    assert len(fig.data) == 2 * 7  # a band and a line per configuration and gate; no "keep"
    bands, lines = fig.data[0::2], fig.data[1::2]
    assert all(b.fill == "toself" and b.showlegend is False for b in bands)
    assert [line.showlegend for line in lines] == [True, False, False, True, False, False, False]
    forget_band, forget = fig.data[8], fig.data[9]
    rows = expected(gates, "t", cell="lstm", gate="forget", step=5, batch="probe")
    np.testing.assert_allclose(forget.y, rows["mean"])
    np.testing.assert_allclose(forget_band.y, [*rows["q90"], *rows["q10"][::-1]])
    assert forget.line.color == plots.CELL_COLORS["lstm"]
    assert fig.layout.xaxis.title.text == "t (step)" and fig.layout.yaxis.title.text == "gate value (unitless)"


def test_gate_profiles_select_step_and_batch():
    gates = gates_frame()
    fig = plots.gate_profiles(gates, step=0, batch="train")
    np.testing.assert_allclose(
        fig.data[1].y, expected(gates, "t", cell="gru", gate="reset", step=0, batch="train")["mean"]
    )
    assert "step 0" in fig.layout.title.text and "train batch" in fig.layout.title.text


def test_keep_fraction_shares_one_axis_from_0_to_1():
    gates = gates_frame()
    fig = plots.keep_fraction(gates)
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["gru/last", "lstm/last"]
    assert len(fig.data) == 4  # with their bands
    np.testing.assert_allclose(
        lines[1].y, expected(gates, "t", cell="lstm", gate="keep", step=5, batch="probe")["mean"]
    )
    low, high = fig.layout.yaxis.range
    assert low == 0 and high >= 1
    assert fig.layout.yaxis.title.text == "kept fraction per step (0–1)"
    assert all(t.xaxis in (None, "x") for t in fig.data)


def test_gate_saturation_drops_undefined_rows():
    gates = gates_frame()
    fig = plots.gate_saturation(gates)
    titles = [a.text for a in fig.layout.annotations if a.text.startswith(("GRU", "LSTM"))]
    assert "GRU candidate" not in titles and len(titles) == 6
    assert len(fig.data) == 6 and all(t.fill is None for t in fig.data)
    np.testing.assert_allclose(fig.data[0].y, [0, 0.1, 0.2, 0.3, 0.4])
    assert fig.layout.yaxis.range[0] <= 0 and fig.layout.yaxis.range[1] >= 1


# ---- time constants ----


def test_time_constant_histogram_counts_units_in_log_bins():
    fig = plots.time_constant_histogram(time_constants_frame())
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "τ (steps)"
    assert fig.layout.yaxis.title.text == "units (count)"
    gru, lstm = fig.data
    assert gru.name == "gru/last" and gru.line.shape == "hv"
    assert sum(y for y in gru.y if y is not None) == 8
    edges = [x for x in gru.x[1:] if x is not None]
    ratios = np.diff(np.log10(edges))
    np.testing.assert_allclose(ratios, ratios[0])  # log-spaced
    at_step_0 = plots.time_constant_histogram(time_constants_frame(), step=0).data[0]
    assert max(at_step_0.y) == 8  # all eight units at tau = 2


def test_an_infinite_time_constant_is_counted_visibly():
    fig = plots.time_constant_histogram(time_constants_frame())
    lstm = by_name(fig)["lstm/last"]
    assert lstm.y[-1] == 2 and lstm.marker.symbol[-1] == "circle-open" and lstm.text[-1].startswith("τ = ∞")
    assert lstm.x[-1] > max(x for x in lstm.x[:-2] if x is not None)
    assert sum(y for y in lstm.y[:-2] if y is not None) == 6
    assert fig.layout.xaxis.ticktext[-1] == "∞"
    assert "2 units with τ = ∞" in notes(fig)


# ---- Jacobians, learning curves, gap ----


def test_jacobian_over_training_two_panels_with_reference_lines():
    jacobians = jacobians_frame()
    fig = plots.jacobian_over_training(jacobians)
    assert len(fig.data) == 4
    top = [t for t in fig.data if t.yaxis == "y"]
    bottom = [t for t in fig.data if t.yaxis == "y2"]
    assert [t.name for t in top] == [t.name for t in bottom] == ["rnn/last", "gru/last"]
    np.testing.assert_allclose(top[0].y, expected(jacobians, "step", cell="rnn")["lyapunov_max"])
    np.testing.assert_allclose(bottom[1].y, expected(jacobians, "step", cell="gru")["spectral_norm_mean"])
    assert {(s.yref, s.y0) for s in fig.layout.shapes} == {("y", 0.0), ("y2", 1.0)}
    assert "λ_max" in fig.layout.yaxis.title.text and fig.layout.xaxis2.title.text == "training step"


def test_learning_curves_train_lighter_test_solid_and_the_baseline():
    metrics = metrics_frame()
    fig = plots.learning_curves(metrics, baseline=1.5)
    assert [t.name for t in fig.data] == ["rnn/last · train", "rnn/last · test", "gru/last · train", "gru/last · test"]
    traces = by_name(fig)
    assert traces["rnn/last · train"].opacity < 1 and traces["rnn/last · test"].opacity == 1
    assert traces["rnn/last · train"].line.color == traces["rnn/last · test"].line.color
    np.testing.assert_allclose(traces["gru/last · test"].y, [2, 2 / 11, 2 / 21])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.title.text == "loss (task units)"
    assert [s.y0 for s in fig.layout.shapes] == [1.5]
    (label,) = [a for a in fig.layout.annotations if "trivial predictor" in a.text]
    assert label.y == pytest.approx(math.log10(1.5))  # annotations on a log axis are placed in log10 units
    assert len(plots.learning_curves(metrics).layout.shapes) == 0
    with pytest.raises(ValueError, match="baseline must be a finite float or None, got: 'high'"):
        plots.learning_curves(metrics, baseline="high")


def test_generalisation_gap_plots_the_gap_rows():
    metrics = metrics_frame()
    fig = plots.generalisation_gap(metrics)
    assert [t.name for t in fig.data] == ["rnn/last", "gru/last"]
    np.testing.assert_allclose(fig.data[0].y, expected(metrics, "step", cell="rnn", split="gap")["loss"])
    assert fig.layout.yaxis.type != "log" and "test − train loss" in fig.layout.yaxis.title.text
    assert [s.y0 for s in fig.layout.shapes] == [0.0]


# ---- parameters, connectivity, summary ----


def test_parameter_growth_log_log_with_dense_in_grey():
    counts = analysis.parameter_counts(3, 8, [5, 50, 500])
    fig = plots.parameter_growth(counts)
    assert [t.name for t in fig.data] == ["rnn", "gru", "lstm", "dense"]
    traces = by_name(fig)
    assert traces["dense"].line.color == plots.NEUTRAL_COLOR and traces["gru"].line.color == plots.CELL_COLORS["gru"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    np.testing.assert_array_equal(traces["dense"].x, [5, 50, 500])
    np.testing.assert_allclose(traces["dense"].y, counts[counts["model"] == "dense"]["parameters"])
    assert len(set(traces["lstm"].y)) == 1  # a recurrent layer does not grow with T
    assert "M = 8" in fig.layout.title.text
    mixed = pd.concat([counts, analysis.parameter_counts(3, 16, [5])], ignore_index=True)
    with pytest.raises(ValueError, match=r"counts must hold one \(input_size, hidden_size, num_layers\), got 2"):
        plots.parameter_growth(mixed)


def test_connectivity_heatmap_s_against_t_at_the_last_step():
    frame = connectivity_frame()
    fig = plots.connectivity_heatmap(frame, cell="gru")
    (heatmap,) = fig.data
    np.testing.assert_array_equal(heatmap.x, [0, 1, 2, 3])
    np.testing.assert_array_equal(heatmap.y, [0, 1, 2, 3])
    z = np.array(heatmap.z, dtype=float)
    assert z[2, 1] == pytest.approx(math.log10(7 * 0.5))  # t = 2, s = 1 at step 7, the last
    assert np.isnan(z[0, 1]) and np.isnan(z[1, 3])  # s > t: structurally zero, left blank
    assert z[3, 0] == pytest.approx(math.log10(7 * plots.LOG_FLOOR))  # a vanished dependence is floored
    assert np.asarray(heatmap.customdata, dtype=float)[3, 0] == 0  # hover shows the stored value, not the floor
    assert "%{customdata" in heatmap.hovertemplate
    assert (
        fig.layout.xaxis.title.text == "input step s (step)" and fig.layout.yaxis.title.text == "output step t (step)"
    )
    step3 = np.array(plots.connectivity_heatmap(frame, cell="gru", step=3).data[0].z, dtype=float)
    assert step3[0, 0] == pytest.approx(math.log10(3))
    assert len(plots.connectivity_heatmap(frame, cell="lstm").data) == 0


def test_summary_table_formats_values_and_colours_cells():
    summary = pd.DataFrame(
        {
            "cell": ["rnn", "lstm"],
            "readout": ["last", "max"],
            "step": [300, 300],
            "test_loss": [0.123456, 12345.678],
            "half_life": [math.inf, math.nan],
            "horizon": pd.array([12, pd.NA], dtype="Int64"),
        }
    )
    fig = plots.summary_table(summary, theme="dark")
    (table,) = fig.data
    assert isinstance(table, go.Table)
    assert table.header.values == ("cell", "readout", "step", "test loss", "t½ (steps)", "horizon (steps)")
    cells = table.cells.values
    assert [list(column) for column in cells] == [
        ["rnn", "lstm"],
        ["last", "max"],
        ["300", "300"],
        ["0.1235", "1.235e+04"],
        ["∞", "–"],
        ["12", "–"],
    ]
    colours = table.cells.font.color
    assert list(colours[0]) == [plots.CELL_COLORS["rnn"], plots.CELL_COLORS["lstm"]]
    assert colours[1] == pio.templates["plotly_dark"].layout.font.color
    assert table.cells.fill.color == pio.templates["plotly_dark"].layout.paper_bgcolor


def test_summary_table_of_a_real_run(run):
    fig = plots.summary_table(run_summary(run).assign(run="r"))
    (table,) = fig.data
    assert len(table.cells.values[0]) == 4
    assert "run" in table.header.values
