"""The Dash app: layout, URL state, and thin callbacks that load runs and call gradscope.plots.

Every callback body is an ordinary function of the control values (``render_*``, ``control_state``),
unit-testable without a browser; :func:`create_app` only wires them to components.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from gradscope import plots
from gradscope.experiments import run_parameter_counts, run_summary
from gradscope.report import render_report
from gradscope.storage import combine_runs as combine
from gradscope.storage import select_rows as select
from gradscope_dashboard import ids
from gradscope_dashboard.data import Loaded, RunStore

__all__ = [
    "DEFAULTS",
    "control_state",
    "create_app",
    "export_report",
    "render_dynamics",
    "render_gates",
    "render_heatmaps",
    "render_learning",
    "render_memory",
]

DEFAULTS: dict[str, Any] = {
    "quantity": "grad_x",
    "layer": 0,
    "direction": "forward",
    "yscale": "log",
    "batch": "probe",
    "theme": "light",
}
"""Control values used when the URL does not set them."""
QUANTITIES = {"grad_x": "∂L/∂x_t", "grad_h": "∂L/∂h_t", "grad_c": "∂L/∂c_t (LSTM)"}
REFRESH_MS = 2000


def _assets_folder() -> str:
    """``assets/``: inside the installed package (a wheel), or at the top of the checkout (editable)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "assets", here.parents[1] / "assets"):
        if (folder / "gradscope.css").is_file():
            return str(folder)
    raise FileNotFoundError(f"the dashboard's assets (gradscope.css) are missing beside {here}")


def _config_key(cell: str, readout: str) -> str:
    return f"{cell}/{readout}"


def _empty(message: str, theme: str) -> go.Figure:
    figure = go.Figure(layout={"template": "plotly_dark" if theme == "dark" else "plotly_white"})
    figure.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


# ---- the plain functions behind the callbacks ----


def control_state(store: RunStore, selected: list[str] | None, configs: list[str] | None) -> dict[str, Any]:
    """What the controls can offer for the selected runs, and which messages to show.

    Returns a dict with ``run_options``, ``config_options``, ``configs`` (the current choice kept,
    or every configuration when nothing valid is chosen), ``heatmap_options`` (``run|cell/readout``),
    ``steps``, ``layers``, ``directions``,
    ``messages`` and ``live`` (whether a selected run is still being written).
    """
    loaded = store.load(selected)
    available: list[str] = []
    heatmaps: list[str] = []
    steps: set[int] = set()
    layers: set[int] = {0}
    directions: set[str] = {"forward"}
    for run in loaded.runs:
        for cell, readout in run.params[["cell", "readout"]].drop_duplicates().itertuples(index=False):
            key = _config_key(cell, readout)
            heatmaps.append(f"{run.name}|{key}")
            if key not in available:
                available.append(key)
        steps.update(int(s) for s in run.metrics["step"].unique())
        layers.update(int(v) for v in run.fits["layer"].unique())
        directions.update(run.fits["direction"].unique())
    kept = [c for c in configs or [] if c in available]
    messages = list(loaded.errors)
    for run in loaded.runs:
        if run.status in ("running", "interrupted"):
            done = max(run.metrics["step"], default=None)
            messages.append(f"{run.name}: {run.status} (last completed record step: {done})")
    return {
        "run_options": store.names(),
        "config_options": available,
        "configs": kept or available,
        "heatmap_options": heatmaps,
        "steps": sorted(steps),
        "layers": sorted(layers),
        "directions": sorted(directions),
        "messages": messages,
        "live": any(run.status == "running" for run in loaded.runs),
    }


def render_memory(
    loaded: Loaded, configs: list[str], quantity: str, step: int | None, layer: int, direction: str,
    yscale: str, batch: str, theme: str,
) -> tuple[go.Figure, go.Figure]:  # fmt: skip
    """Forgetting curves at the chosen step, and half-life over training."""
    where = {"layer": layer, "direction": direction, "batch": batch, "quantity": quantity}
    curves = combine(loaded.runs, "curves", configs, step=step, **where)
    fits = combine(loaded.runs, "fits", configs, **where)
    if curves.empty:
        return _empty("no run selected", theme), _empty("no run selected", theme)
    return (
        plots.forgetting_curves(curves, fits, quantity=quantity, step=step, batch=batch, log_y=yscale == "log",
                                theme=theme),
        plots.half_life_over_training(fits, quantity=quantity, batch=batch, theme=theme),
    )  # fmt: skip


def render_heatmaps(
    loaded: Loaded, heatmap_config: str | None, quantity: str, layer: int, direction: str, batch: str, theme: str
) -> tuple[go.Figure, go.Figure]:
    """Forgetting over training (lag × step) and connectivity, for one run's configuration."""
    if not heatmap_config or heatmap_config.count("|") != 1:
        return _empty("choose a configuration", theme), _empty("choose a configuration", theme)
    run_name, key = heatmap_config.split("|")
    runs = [run for run in loaded.runs if run.name == run_name]
    cell, _, readout = key.partition("/")
    curves = combine(runs, "curves", [key], layer=layer, direction=direction, batch=batch, quantity=quantity)
    connectivity = combine(runs, "connectivity", [key])
    heatmap = (
        plots.forgetting_heatmap(curves, cell=cell, readout=readout, quantity=quantity, batch=batch, theme=theme)
        if not curves.empty
        else _empty("no data", theme)
    )
    conn = (
        plots.connectivity_heatmap(connectivity, cell=cell, readout=readout, theme=theme)
        if not connectivity.empty
        else _empty("this run has no connectivity (stored after the last step, for T ≤ 200)", theme)
    )
    return heatmap, conn


GATE_FIGURES = {"profiles": plots.gate_profiles, "keep": plots.keep_fraction, "saturation": plots.gate_saturation}


def render_gates(
    loaded: Loaded, which: str, configs: list[str], step: int | None, layer: int, direction: str, batch: str,
    theme: str,
) -> go.Figure:  # fmt: skip
    """One gate figure: ``"profiles"`` (means with their 10–90 % band), ``"keep"`` (the kept fraction of
    every cell on one axis) or ``"saturation"``. Each has its own callback, so each redraws alone."""
    gates = combine(loaded.runs, "gates", configs, step=step, batch=batch, layer=layer, direction=direction)
    if gates.empty:
        return _empty("no gated cell selected (the simple RNN has no gates)", theme)
    return GATE_FIGURES[which](gates, step=step, batch=batch, theme=theme)


def render_dynamics(
    loaded: Loaded, configs: list[str], step: int | None, layer: int, direction: str, theme: str
) -> tuple[go.Figure, go.Figure]:
    """Time constants τ per unit, and Jacobian summaries over training."""
    taus = combine(loaded.runs, "time_constants", configs, step=step, layer=layer, direction=direction)
    jacobians = combine(loaded.runs, "jacobians", configs, layer=layer, direction=direction)
    return (
        plots.time_constant_histogram(taus, step=step, theme=theme)
        if not taus.empty
        else _empty("no gated cell selected", theme),
        plots.jacobian_over_training(jacobians, theme=theme) if not jacobians.empty else _empty("no data", theme),
    )


def render_learning(
    loaded: Loaded, configs: list[str], theme: str
) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure]:
    """Learning curves with the task baseline, the generalisation gap, parameter counts, summary table."""
    metrics = combine(loaded.runs, "metrics", configs)
    if metrics.empty:
        empty = _empty("no run selected", theme)
        return empty, empty, empty, empty
    baselines = {run.info["task"]["baseline_loss"] for run in loaded.runs}
    baseline = baselines.pop() if len(baselines) == 1 else None
    summaries = []
    for run in loaded.runs:
        if not run.metrics.empty:
            summaries.append(run_summary(run).assign(run=run.name))
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["run", *summary.columns[:-1]]]
    summary = select(summary, configs).reset_index(drop=True)
    return (
        plots.learning_curves(metrics, baseline=baseline, theme=theme),
        plots.generalisation_gap(metrics, theme=theme),
        plots.parameter_growth(run_parameter_counts(loaded.runs[0]), theme=theme),
        plots.summary_table(summary, theme=theme),
    )


# ---- layout ----


def _initial(args: Mapping[str, list[str]]) -> dict[str, Any]:
    def one(key: str) -> str | None:
        values = args.get(key)
        return values[0] if values else None

    state = {key: one(key) or value for key, value in DEFAULTS.items()}
    state["runs"] = [r for r in (one("runs") or "").split(",") if r]
    state["configs"] = [c for c in (one("configs") or "").split(",") if c]
    state["step"] = int(one("step")) if (one("step") or "").isdigit() else None
    state["heatmap"] = one("heatmap")
    state["layer"] = int(state["layer"]) if str(state["layer"]).isdigit() else 0
    return state


def _radio(component_id: str, options: Mapping[str, str], value: str) -> dcc.RadioItems:
    return dcc.RadioItems(
        id=component_id,
        options=[{"label": label, "value": key} for key, label in options.items()],
        value=value,
        inline=True,
        className="radio",
    )


def _graph(component_id: str, title: str, explanation: str, wide: bool = False) -> html.Section:
    return html.Section(
        [html.H3(title), html.P(explanation, className="explain"), dcc.Graph(id=component_id)],
        className="panel wide" if wide else "panel",
    )


def _controls(state: dict[str, Any], store: RunStore | None) -> list:
    """The control panel set to ``state`` (from :func:`_initial`), offering the runs in ``store``.

    Runs the URL asks for that are not run directories under the root are not selected; each is named
    in a message (the store's refusal for names that could lead outside the root).
    """
    names = store.names() if store is not None else []
    refused = []
    for name in state["runs"]:
        if name not in names:
            try:
                store.resolve(name) if store is not None else None
                refused.append(f"{name}: there is no run of that name under the runs root")
            except ValueError as error:
                refused.append(str(error))
    runs = [name for name in state["runs"] if name in names] or names[:1]
    direction = {"forward": "forward", "backward": "backward"}
    return [
        dcc.Interval(id=ids.INTERVAL, interval=REFRESH_MS, disabled=True),  # with the inputs it ticks beside
        dcc.Store(id=ids.REFUSED, data=refused),
        html.Label(["Runs", dcc.Dropdown(id=ids.RUNS, options=names, value=runs, multi=True)]),
        html.Label(["Cells and readouts", dcc.Checklist(id=ids.CONFIGS, options=[], value=state["configs"],
                                                        inline=True)]),
        html.Label(["Gradient", _radio(ids.QUANTITY, QUANTITIES, state["quantity"])]),
        html.Label(["Batch", _radio(ids.BATCH, {"probe": "fixed probe", "train": "training"}, state["batch"])]),
        html.Label(["Layer", dcc.Dropdown(id=ids.LAYER, options=[state["layer"]], value=state["layer"],
                                          clearable=False)]),
        html.Label(["Direction", _radio(ids.DIRECTION, direction, state["direction"])]),
        html.Label(["Gradient axis", _radio(ids.YSCALE, {"log": "log", "linear": "linear"}, state["yscale"])]),
        html.Label(["Theme", _radio(ids.THEME, {"light": "light", "dark": "dark"}, state["theme"])]),
        html.Label(["Training step", dcc.Slider(id=ids.STEP, min=0, max=1, step=None, value=state["step"],
                                                marks={})], className="wide"),
        html.Label(["Heatmaps of", dcc.Dropdown(id=ids.HEATMAP_CONFIG, options=[], value=state["heatmap"],
                                                clearable=False)]),
        html.Button("Export report", id=ids.EXPORT, className="button", title="one offline HTML file of this "
                    "selection"),
        dcc.Download(id=ids.DOWNLOAD),
    ]  # fmt: skip


def _layout() -> html.Div:
    """The page; the controls are filled in from the URL once it is known (see :func:`create_app`)."""
    return html.Div(
        id=ids.THEME_ROOT,
        className="theme-light",
        children=[
            dcc.Location(id=ids.URL, refresh=False),
            html.Header(
                [
                    html.Img(src=dash.get_asset_url("logo.svg"), alt="gradscope", className="logo"),
                    html.H1("gradscope"),
                    html.Span("how RNN, GRU and LSTM forget, step by step", className="tagline"),
                ]
            ),
            html.Div(id=ids.MESSAGES, className="messages", role="status"),
            html.Div(id=ids.CONTROLS, className="controls"),
            html.Main(
                [
                    _graph(ids.SUMMARY, "Summary", "Final test loss against the trivial predictor's, gradient "
                           "half-life and horizon of ∂L/∂x_t, median gate time constant τ and parameters.", wide=True),
                    _graph(ids.CURVES, "Forgetting curves", "Relative gradient norm against lag: how much of "
                           "the loss's gradient reaches a step that lies `lag` steps back. The legend gives the "
                           "fitted half-life."),
                    _graph(ids.HALF_LIFE, "Half-life over training", "How far back the gradient reaches as "
                           "the model learns."),
                    _graph(ids.HEATMAP, "Forgetting over training", "Log relative gradient at each lag (rows) "
                           "and training step (columns): the memory horizon as it grows."),
                    _graph(ids.GATES, "Gates", "Mean gate value at each step with the 10–90 % band across "
                           "units."),
                    _graph(ids.KEEP, "Kept fraction", "Fraction of the previous state kept per step: LSTM "
                           "forget gate f, GRU update gate z, on one axis."),
                    _graph(ids.SATURATION, "Saturation", "Fraction of gate values below 0.1 or above 0.9."),
                    _graph(ids.TAU, "Time constants", "τ = 1 / (1 − mean kept fraction) per unit, in steps."),
                    _graph(ids.JACOBIANS, "Jacobians", "Largest Lyapunov exponent and spectral norm of the "
                           "one-step Jacobian ∂h_t/∂h_{t−1} over training."),
                    _graph(ids.LEARNING, "Learning", "Training and held-out loss, with the trivial "
                           "predictor's loss."),
                    _graph(ids.GAP, "Generalisation gap", "Held-out minus training loss: does the cell with "
                           "more parameters overfit more?"),
                    _graph(ids.PARAMETERS, "Parameters", "Weights shared across time: the recurrent counts do "
                           "not grow with T, a dense layer over the flattened sequence does."),
                    _graph(ids.CONNECTIVITY, "Connectivity", "‖∂h_t/∂x_s‖ of the trained layer: how much each "
                           "state depends on each earlier input."),
                ]
            ),
        ],
    )  # fmt: skip


# ---- wiring ----


def _search(runs, configs, quantity, step, layer, direction, yscale, batch, theme, heatmap) -> str:
    query = {
        "runs": ",".join(runs or []),
        "configs": ",".join(configs or []),
        "quantity": quantity,
        "layer": layer,
        "direction": direction,
        "yscale": yscale,
        "batch": batch,
        "theme": theme,
    }
    if step is not None:
        query["step"] = step
    if heatmap:
        query["heatmap"] = heatmap
    return "?" + urlencode({k: v for k, v in query.items() if v not in (None, "")})


def create_app(runs_root: str | Path) -> dash.Dash:
    """The dashboard over the run directories directly under ``runs_root``.

    Only those directories are ever read (see :class:`RunStore`); a run that cannot be read shows a
    message on the page while the others keep working.
    """
    store = RunStore(runs_root)
    app = dash.Dash(
        __name__,
        assets_folder=_assets_folder(),
        title="gradscope",
        update_title=None,
        suppress_callback_exceptions=False,
    )
    app.layout = _layout
    app.validation_layout = html.Div([_layout(), *_controls(_initial({}), None)])

    # The URL sets the controls once, when the page opens (its path is set then and never changes);
    # afterwards the controls write the URL. Reading `search` as State keeps the two from looping.
    @app.callback(Output(ids.CONTROLS, "children"), Input(ids.URL, "pathname"), State(ids.URL, "search"))
    def _restore(_pathname, search):
        return _controls(_initial(parse_qs((search or "").lstrip("?"))), store)

    controls = [
        Input(ids.RUNS, "value"), Input(ids.CONFIGS, "value"), Input(ids.QUANTITY, "value"),
        Input(ids.STEP, "value"), Input(ids.LAYER, "value"), Input(ids.DIRECTION, "value"),
        Input(ids.YSCALE, "value"), Input(ids.BATCH, "value"), Input(ids.THEME, "value"),
        Input(ids.HEATMAP_CONFIG, "value"),
    ]  # fmt: skip

    @app.callback(Output(ids.URL, "search"), controls)
    def _keep_url(*values):  # the selection lives in the URL: share it, reload it
        return _search(*values)

    @app.callback(Output(ids.THEME_ROOT, "className"), Input(ids.THEME, "value"))
    def _theme(theme):
        return f"theme-{theme}"

    @app.callback(
        Output(ids.RUNS, "options"), Output(ids.CONFIGS, "options"), Output(ids.CONFIGS, "value"),
        Output(ids.STEP, "min"), Output(ids.STEP, "max"), Output(ids.STEP, "marks"), Output(ids.STEP, "value"),
        Output(ids.LAYER, "options"), Output(ids.HEATMAP_CONFIG, "options"), Output(ids.HEATMAP_CONFIG, "value"),
        Output(ids.MESSAGES, "children"), Output(ids.INTERVAL, "disabled"),
        Input(ids.RUNS, "value"), Input(ids.INTERVAL, "n_intervals"),
        State(ids.CONFIGS, "value"), State(ids.HEATMAP_CONFIG, "value"), State(ids.STEP, "value"),
        State(ids.REFUSED, "data"),
    )  # fmt: skip
    def _offer(runs, _tick, configs, heatmap, step, refused):
        state = control_state(store, runs, configs)
        steps = state["steps"] or [0]
        marks = {int(s): str(s) for s in steps}
        heat_options = state["heatmap_options"]
        heatmap = heatmap if heatmap in heat_options else (heat_options[0] if heat_options else None)
        messages = [html.P(m, className="message") for m in [*(refused or []), *state["messages"]]]
        step = step if step in steps else max(steps)  # the chosen step stays; none chosen: the latest
        return (state["run_options"], state["config_options"], state["configs"], min(steps), max(steps), marks,
                step, state["layers"], heat_options, heatmap, messages, not state["live"])  # fmt: skip

    tick = Input(ids.INTERVAL, "n_intervals")

    @app.callback(
        Output(ids.CURVES, "figure"), Output(ids.HALF_LIFE, "figure"),
        Input(ids.RUNS, "value"), Input(ids.CONFIGS, "value"), Input(ids.QUANTITY, "value"),
        Input(ids.STEP, "value"), Input(ids.LAYER, "value"), Input(ids.DIRECTION, "value"),
        Input(ids.YSCALE, "value"), Input(ids.BATCH, "value"), Input(ids.THEME, "value"), tick,
    )  # fmt: skip
    def _memory(runs, configs, quantity, step, layer, direction, yscale, batch, theme, _tick):
        return render_memory(store.load(runs), configs, quantity, step, layer, direction, yscale, batch, theme)

    @app.callback(
        Output(ids.HEATMAP, "figure"), Output(ids.CONNECTIVITY, "figure"),
        Input(ids.RUNS, "value"), Input(ids.HEATMAP_CONFIG, "value"), Input(ids.QUANTITY, "value"),
        Input(ids.LAYER, "value"), Input(ids.DIRECTION, "value"), Input(ids.BATCH, "value"),
        Input(ids.THEME, "value"), tick,
    )  # fmt: skip
    def _heatmaps(runs, heatmap, quantity, layer, direction, batch, theme, _tick):
        return render_heatmaps(store.load(runs), heatmap, quantity, layer, direction, batch, theme)

    for which, graph_id in (("profiles", ids.GATES), ("keep", ids.KEEP), ("saturation", ids.SATURATION)):

        @app.callback(
            Output(graph_id, "figure"),
            Input(ids.RUNS, "value"), Input(ids.CONFIGS, "value"), Input(ids.STEP, "value"),
            Input(ids.LAYER, "value"), Input(ids.DIRECTION, "value"), Input(ids.BATCH, "value"),
            Input(ids.THEME, "value"), tick,
        )  # fmt: skip
        def _gates(runs, configs, step, layer, direction, batch, theme, _tick, which=which):
            return render_gates(store.load(runs), which, configs, step, layer, direction, batch, theme)

    @app.callback(
        Output(ids.TAU, "figure"), Output(ids.JACOBIANS, "figure"),
        Input(ids.RUNS, "value"), Input(ids.CONFIGS, "value"), Input(ids.STEP, "value"),
        Input(ids.LAYER, "value"), Input(ids.DIRECTION, "value"), Input(ids.THEME, "value"), tick,
    )  # fmt: skip
    def _dynamics(runs, configs, step, layer, direction, theme, _tick):
        return render_dynamics(store.load(runs), configs, step, layer, direction, theme)

    @app.callback(
        Output(ids.LEARNING, "figure"), Output(ids.GAP, "figure"), Output(ids.PARAMETERS, "figure"),
        Output(ids.SUMMARY, "figure"),
        Input(ids.RUNS, "value"), Input(ids.CONFIGS, "value"), Input(ids.THEME, "value"), tick,
    )  # fmt: skip
    def _learning(runs, configs, theme, _tick):
        return render_learning(store.load(runs), configs, theme)

    @app.callback(
        Output(ids.DOWNLOAD, "data"), Input(ids.EXPORT, "n_clicks"),
        State(ids.RUNS, "value"), State(ids.CONFIGS, "value"), State(ids.THEME, "value"),
        prevent_initial_call=True,
    )  # fmt: skip
    def _export(_clicks, runs, configs, theme):
        return export_report(store, runs, configs, theme)

    return app


def export_report(store: RunStore, runs: list[str] | None, configs: list[str] | None, theme: str) -> dict | None:
    """The offline report of the current selection, as a download (the same file ``gradscope report`` writes)."""
    loaded = store.load(runs)
    if not loaded.runs:
        return None
    document = render_report(loaded.runs, theme=theme, configs=configs, skipped=loaded.errors)
    return dcc.send_string(document, "gradscope-report.html")
