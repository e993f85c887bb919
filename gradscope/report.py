"""The offline report: a whole comparison in one self-contained, interactive HTML file.

The figures are the dashboard's, built by the same :mod:`gradscope.plots` functions. Nothing is fetched
when the file opens: plotly.js is embedded once, gzip-compressed (about 1.4 MB instead of 4.8 MB) and
unpacked by the browser's own ``DecompressionStream`` (Chrome 80, Firefox 113, Safari 16.4 and later);
styles are inline, fonts are the system's, and the equations are plain HTML.

``write_report(runs, path)`` from Python, ``gradscope report RUN [RUN ...] -o report.html`` from the
shell.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from gradscope import __version__, plots
from gradscope.experiments import run_parameter_counts, run_summary
from gradscope.storage import Run, atomic_write, combine_runs, load_run

__all__ = ["Figure", "StaticExport", "report_figures", "render_report", "write_report", "write_static"]


@dataclass(frozen=True)
class Figure:
    """One figure of the report: where it goes, its title, what it shows, and the figure itself."""

    slug: str
    title: str
    explanation: str
    figure: go.Figure


def _configs(runs: Sequence[Run]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        for pair in run.params[["cell", "readout"]].drop_duplicates().itertuples(index=False, name=None):
            seen[(str(pair[0]), str(pair[1]))] = None
    return list(seen)


def report_figures(runs: Sequence[Run], *, theme: str = "light", configs: Sequence[str] | None = None) -> list[Figure]:
    """Every figure of the report, in order, for ``runs`` side by side (layer 0, forward, probe batch).

    Args:
        configs: ``"cell/readout"`` keys to show (default: every one in the runs).
    """
    chosen = list(configs) if configs is not None else [f"{c}/{r}" for c, r in _configs(runs)]
    first = {"layer": 0, "direction": "forward"}

    def table(name: str, **equal: object) -> pd.DataFrame:
        return combine_runs(list(runs), name, chosen, **equal)

    fits = table("fits", batch="probe", **first)
    curves = table("curves", batch="probe", **first)
    gates = table("gates", batch="probe", **first)
    metrics = table("metrics")
    baselines = {run.info["task"]["baseline_loss"] for run in runs}
    figures = [
        Figure("curves-x", "Forgetting curves of ∂L/∂x_t", "How much of the loss's gradient reaches an input that "
               "lies `lag` steps back, relative to the largest; the legend gives the fitted half-life.",
               plots.forgetting_curves(curves, fits, quantity="grad_x", theme=theme)),
        Figure("curves-h", "Forgetting curves of ∂L/∂h_t", "The same for the total gradient of the hidden state.",
               plots.forgetting_curves(curves, fits, quantity="grad_h", theme=theme)),
        Figure("half-life", "Half-life over training", "How far back the gradient reaches as the model learns.",
               plots.half_life_over_training(fits, theme=theme)),
        Figure("learning", "Learning", "Training and held-out loss, with the trivial predictor's loss.",
               plots.learning_curves(metrics, baseline=baselines.pop() if len(baselines) == 1 else None,
                                     theme=theme)),
        Figure("gap", "Generalisation gap", "Held-out minus training loss: does the cell with more parameters "
               "overfit more?", plots.generalisation_gap(metrics, theme=theme)),
        Figure("gates", "Gates", "Mean gate value at each step, with the 10–90 % band across units, at the last "
               "record step.", plots.gate_profiles(gates, theme=theme)),
        Figure("keep", "Kept fraction", "Fraction of the previous state kept per step (LSTM f, GRU z), all cells "
               "on one axis.", plots.keep_fraction(gates, theme=theme)),
        Figure("saturation", "Saturation", "Fraction of gate values below 0.1 or above 0.9.",
               plots.gate_saturation(gates, theme=theme)),
        Figure("tau", "Time constants", "τ = 1 / (1 − mean kept fraction) of every unit, in steps.",
               plots.time_constant_histogram(table("time_constants", **first), theme=theme)),
        Figure("jacobians", "Jacobians", "Largest Lyapunov exponent and mean spectral norm of the one-step "
               "Jacobian over training.", plots.jacobian_over_training(table("jacobians", **first), theme=theme)),
        Figure("parameters", "Parameters", "Weights shared across time: recurrent counts do not grow with T, a "
               "dense layer over the flattened sequence does.",
               plots.parameter_growth(run_parameter_counts(runs[0]), theme=theme)),
    ]  # fmt: skip
    for run in runs:
        for cell, readout in _configs([run]):
            if f"{cell}/{readout}" not in chosen:
                continue
            own = combine_runs([run], "curves", [f"{cell}/{readout}"], batch="probe", quantity="grad_x", **first)
            figures.append(Figure(
                f"heatmap-{run.name}-{cell}-{readout}", f"Forgetting over training · {run.name} · {cell}/{readout}",
                "Log relative gradient of ∂L/∂x_t at each lag and training step: the memory horizon as it grows.",
                plots.forgetting_heatmap(own, cell=cell, readout=readout, theme=theme),
            ))  # fmt: skip
            connectivity = combine_runs([run], "connectivity", [f"{cell}/{readout}"])
            if not connectivity.empty:
                figures.append(Figure(
                    f"connectivity-{run.name}-{cell}-{readout}", f"Connectivity · {run.name} · {cell}/{readout}",
                    "‖∂h_t/∂x_s‖ of the trained layer: how much each state depends on each earlier input.",
                    plots.connectivity_heatmap(connectivity, cell=cell, readout=readout, theme=theme),
                ))  # fmt: skip
    return figures


# ---- HTML ----

_STYLE = """
:root { color-scheme: light; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --panel: #f6f8fa; --border: #d0d7de; }
body.dark { color-scheme: dark; --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --panel: #161b22; --border: #30363d; }
body { margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem 3rem; background: var(--bg); color: var(--fg);
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .muted { color: var(--muted); }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; }
.panel { background: var(--panel); border: 1px solid var(--border); border-radius: 8px; padding: 0.75rem 1rem; }
table { border-collapse: collapse; font-size: 0.9rem; } th, td { padding: 0.25rem 0.6rem; text-align: left;
  border-bottom: 1px solid var(--border); } th { font-weight: 600; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(38rem, 1fr)); gap: 1rem; }
.figure { min-height: 420px; } .warning { background: #fff8c5; color: #3b2300; padding: 0.5rem 0.75rem;
  border-radius: 6px; } .eq { font-family: "STIX Two Math", "Cambria Math", serif; margin: 0.2rem 0 0.2rem 1rem; }
details { margin: 0.4rem 0; }
"""

_EQUATIONS = """
<h3>Simple recurrent unit</h3>
<p class="eq">h<sub>t</sub> = tanh(W<sub>xh</sub><sup>T</sup> x<sub>t</sub> + W<sub>hh</sub><sup>T</sup> h<sub>t−1</sub>
 + b<sub>h</sub>)</p>
<h3>Gated recurrent unit (the seed notes' form)</h3>
<p class="eq">z<sub>t</sub> = σ(W<sub>xz</sub><sup>T</sup> x<sub>t</sub> + W<sub>hz</sub><sup>T</sup> h<sub>t−1</sub>
 + b<sub>z</sub>) &nbsp; r<sub>t</sub> = σ(W<sub>xr</sub><sup>T</sup> x<sub>t</sub> + W<sub>hr</sub><sup>T</sup>
 h<sub>t−1</sub> + b<sub>r</sub>)</p>
<p class="eq">h<sub>t</sub> = (1 − z<sub>t</sub>) ⊙ h<sub>t−1</sub> + z<sub>t</sub> ⊙ tanh(W<sub>xh</sub><sup>T</sup>
 x<sub>t</sub> + W<sub>hh</sub><sup>T</sup>(r<sub>t</sub> ⊙ h<sub>t−1</sub>) + b<sub>h</sub>)</p>
<p>torch (and gradscope's default, <code>reset="after"</code>) applies r<sub>t</sub> after the recurrent matmul,
r<sub>t</sub> ⊙ (W<sub>hn</sub> h<sub>t−1</sub> + b<sub>hn</sub>), and writes the update the other way round:
its z is the seed's 1 − z, the fraction of the old state kept.</p>
<h3>Long short-term memory</h3>
<p class="eq">f<sub>t</sub>, i<sub>t</sub>, o<sub>t</sub> = σ(W<sub>x·</sub><sup>T</sup> x<sub>t</sub> +
 W<sub>h·</sub><sup>T</sup> h<sub>t−1</sub> + b<sub>·</sub>)</p>
<p class="eq">c<sub>t</sub> = f<sub>t</sub> ⊙ c<sub>t−1</sub> + i<sub>t</sub> ⊙ f<sub>c</sub>(W<sub>xc</sub><sup>T</sup>
 x<sub>t</sub> + W<sub>hc</sub><sup>T</sup> h<sub>t−1</sub> + b<sub>c</sub>) &nbsp;&nbsp;
 h<sub>t</sub> = o<sub>t</sub> ⊙ f<sub>h</sub>(c<sub>t</sub>)</p>
<p>f<sub>c</sub> and f<sub>h</sub> are tanh in torch and Keras; gradscope lets them be chosen apart.</p>
"""

_METRICS = """
<dl>
<dt>Forgetting curve</dt><dd>The batch mean of ‖∂L/∂x<sub>t</sub>‖ (or ∂L/∂h<sub>t</sub>, ∂L/∂c<sub>t</sub>) at every
step, against its lag (steps back from the end), relative to the largest. The gradient is exact: the total
derivative through time, recorded while the model trains.</dd>
<dt>Rate and half-life</dt><dd>A least-squares fit of log norm against lag over the points above 10<sup>−6</sup>
relative: norm ≈ A e<sup>−rate · lag</sup>; half-life = ln 2 / rate steps (∞ when the gradient does not decay).</dd>
<dt>Horizon</dt><dd>The first lag at which the relative gradient falls below 10<sup>−3</sup>: beyond it, the early
input has practically no say in the loss. "–" when that never happens within the sequence.</dd>
<dt>Time constant τ</dt><dd>τ = 1 / (1 − k̄), k̄ the unit's mean fraction of state kept per step (LSTM forget gate,
GRU update gate in torch's form): the characteristic forgetting time (Tallec &amp; Ollivier 2018).</dd>
<dt>Lyapunov exponent</dt><dd>The mean log growth per step of perturbations of the state along the recorded
trajectory (QR method on the product of one-step Jacobians ∂h<sub>t</sub>/∂h<sub>t−1</sub>): negative means
perturbations, and gradients through the state, shrink by e<sup>λ</sup> per step.</dd>
<dt>Connectivity</dt><dd>‖∂h<sub>t</sub>/∂x<sub>s</sub>‖: how much the state at t depends on the input at s.</dd>
<dt>Baseline loss</dt><dd>The loss of the task's trivial predictor (e.g. predicting 1 in the adding problem,
1/6): a model no better than it has learned nothing from the past.</dd>
</dl>
"""

_BOOT = """
(async () => {
  const packed = document.getElementById('plotly-js-gzip').textContent.trim();
  const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  (0, eval)(await new Response(stream).text());
  for (const el of document.querySelectorAll('div.figure')) {
    const figure = JSON.parse(document.getElementById(el.id + '-data').textContent);
    await Plotly.newPlot(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
  }
  document.body.dataset.rendered = document.querySelectorAll('div.figure').length;
})();
"""


def _packed_plotly() -> str:
    return base64.b64encode(gzip.compress(plotly.offline.get_plotlyjs().encode(), 9, mtime=0)).decode()


def _cell(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return "∞" if value == math.inf else f"{value:.4g}"
    return html.escape(str(value))


def _summary_table(runs: Sequence[Run], chosen: set[str]) -> str:
    columns = ["run", "cell", "readout", "step", "test_loss", "baseline_loss", "loss_ratio", "test_metric", "gap",
               "half_life", "horizon", "regime", "median_tau", "lyapunov_max", "parameters"]  # fmt: skip
    rows = []
    for run in runs:
        if run.metrics.empty:
            continue
        summary = run_summary(run).assign(run=run.name)
        for record in summary.to_dict("records"):
            if f"{record['cell']}/{record['readout']}" not in chosen:
                continue
            cells = "".join(
                f'<td data-column="{c}" data-value="{html.escape(repr(record[c]))}">{_cell(record[c])}</td>'
                for c in columns
            )
            rows.append(f"<tr>{cells}</tr>")
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _run_panel(run: Run) -> str:
    info = run.info
    rows = [("status", run.status), ("task", info["task"]["name"]), ("gradscope", info.get("gradscope")),
            ("torch", info.get("torch")), ("created", info.get("created")),
            ("updated", info.get("updated"))]  # fmt: skip
    rows += [(key, json.dumps(value)) for key, value in sorted(run.config.items())]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<section class="panel run"><h3>{html.escape(run.name)}</h3><table>{body}</table></section>'


def _json_script(figure: go.Figure) -> str:
    return figure.to_json().replace("</", "<\\/")


def render_report(
    runs: Sequence[Run],
    *,
    theme: str = "light",
    configs: Sequence[str] | None = None,
    skipped: Sequence[str] = (),
) -> str:
    """The whole report as one HTML string (see the module docstring); ``skipped`` names runs left out."""
    if not runs:
        raise ValueError("a report needs at least one run that can be read")
    figures = report_figures(runs, theme=theme, configs=configs)
    chosen = set(configs) if configs is not None else {f"{c}/{r}" for c, r in _configs(runs)}
    names = ", ".join(html.escape(run.name) for run in runs)
    warnings_html = "".join(f'<p class="warning">skipped: {html.escape(s)}</p>' for s in skipped)
    blocks = []
    for index, fig in enumerate(figures):
        blocks.append(
            f'<section class="panel"><h3>{html.escape(fig.title)}</h3><p class="muted">{html.escape(fig.explanation)}'
            f'</p><div class="figure" id="figure-{index}" data-slug="{html.escape(fig.slug)}"></div>'
            f'<script type="application/json" id="figure-{index}-data">{_json_script(fig.figure)}</script></section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gradscope {__version__}"><meta name="gradscope-figures" content="{len(figures)}">
<title>gradscope report: {names}</title><style>{_STYLE}</style></head>
<body class="{"dark" if theme == "dark" else "light"}">
<h1>gradscope report</h1><p class="muted">{names} · gradscope {__version__} · how RNN, GRU and LSTM forget</p>
{warnings_html}
<h2>Summary</h2><p class="muted">At each configuration's last record step; half-life, horizon and regime of
∂L/∂x<sub>t</sub> of layer 0 on the fixed probe batch.</p>{_summary_table(runs, chosen)}
<h2>Runs</h2><div class="runs">{"".join(_run_panel(run) for run in runs)}</div>
<h2>Figures</h2><div class="figures">{"".join(blocks)}</div>
<h2>What the numbers mean</h2>{_METRICS}
<h2>The cells</h2>{_EQUATIONS}
<script type="application/octet-stream" id="plotly-js-gzip">{_packed_plotly()}</script>
<script>{_BOOT}</script>
</body></html>
"""


def _read(runs: Sequence[Run | str | os.PathLike]) -> tuple[list[Run], list[str]]:
    loaded, skipped = [], []
    for item in runs:
        if isinstance(item, Run):
            loaded.append(item)
            continue
        try:
            loaded.append(load_run(item))
        except ValueError as error:
            if len(runs) == 1:
                raise
            warnings.warn(f"skipping {item}: {error}", stacklevel=3)
            skipped.append(f"{item}: {error}")
    return loaded, skipped


def write_report(
    runs: Sequence[Run | str | os.PathLike],
    path: str | os.PathLike,
    *,
    theme: str = "light",
    configs: Sequence[str] | None = None,
) -> Path:
    """Write the report of ``runs`` (Run objects or run directories) to ``path``, atomically.

    An existing file is replaced only once the new one is complete. With one run that cannot be read,
    ValueError names it; with several, unreadable ones are skipped with a warning that the report also
    lists. Returns the path written.
    """
    loaded, skipped = _read(list(runs))
    document = render_report(loaded, theme=theme, configs=configs, skipped=skipped)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(document, encoding="utf-8"))
    return path


@dataclass(frozen=True)
class StaticExport:
    """What :func:`write_static` did: the files written, or why there are none."""

    files: list[Path]
    problem: str | None


def write_static(
    runs: Sequence[Run], directory: str | os.PathLike, *, formats: Sequence[str] = ("png", "svg"), theme: str = "light"
) -> StaticExport:
    """Each report figure as a static image (needs kaleido and a Chrome or Chromium it can start).

    Never raises for a missing exporter: the returned :class:`StaticExport` says what went wrong.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        import kaleido  # noqa: F401  (plotly's static exporter)
    except ImportError:
        return StaticExport([], "no static exporter: install kaleido (pip install kaleido) and Chrome or Chromium")
    for fig in report_figures(runs, theme=theme):
        for fmt in formats:
            target = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', fig.slug)}.{fmt}"
            try:
                fig.figure.write_image(target, format=fmt)
            except Exception as error:  # kaleido reports a missing browser in several ways
                return StaticExport(written, f"static export failed ({type(error).__name__}: {error})")
            written.append(target)
    return StaticExport(written, None)
