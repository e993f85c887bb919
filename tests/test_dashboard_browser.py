"""The dashboard in headless Chromium (dash[testing]'s dash_duo): rendering, controls, URL, refresh, refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from dash.testing.wait import until
from selenium.webdriver.common.keys import Keys

from gradscope_dashboard import create_app, ids

GRAPH_JS = """
const el = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');
if (!el || !el._fullData || !el._fullLayout) { return null; }
const data = el._fullData, layout = el._fullLayout;
const size = (a) => (a && a.length !== undefined ? a.length : 0);
return {
  names: data.map(d => d.name || ''),
  types: data.map(d => d.type),
  points: data.map(d => (d.type === 'table' ? size(d.cells.values[0]) : size(d.x))),
  ys: data.map(d => (d.y ? Array.from(d.y).slice(0, 50) : [])),
  ytype: layout.yaxis ? layout.yaxis.type : null,
  ytitle: layout.yaxis && layout.yaxis.title ? layout.yaxis.title.text : null,
  paper: layout.paper_bgcolor,
  annotations: (layout.annotations || []).map(a => a.text),
};
"""


@pytest.fixture(autouse=True)
def _browser_required():
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        message = (
            "chromium and chromedriver are needed for the browser tests (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def graph(dash_duo, graph_id, condition=lambda g: g is not None and len(g["names"]) > 0, timeout=20):
    """The rendered figure of a dcc.Graph once ``condition`` holds (a dict from GRAPH_JS)."""
    result = {}

    def ready():
        result["g"] = dash_duo.driver.execute_script(GRAPH_JS, graph_id)
        return condition(result["g"])

    until(ready, timeout=timeout, msg=f"{graph_id} never satisfied the condition; last seen: {result.get('g')}")
    return result["g"]


def wait_url(dash_duo, fragment, timeout=10):
    until(lambda: fragment in dash_duo.driver.current_url, timeout=timeout,
          msg=f"the URL never contained {fragment!r}: {dash_duo.driver.current_url}")  # fmt: skip


def open_page(dash_duo, root, query):
    dash_duo.start_server(create_app(root))
    dash_duo.wait_for_page(url=f"{dash_duo.server_url}/{query}")


def test_page_loads_and_every_graph_renders(dash_duo, runs_root):
    open_page(dash_duo, runs_root, "?runs=alpha")
    curves = graph(dash_duo, ids.CURVES)
    assert len(curves["names"]) == 4 and curves["ytype"] == "log"
    assert any("lstm/max" in name for name in curves["names"])
    expected_types = {
        ids.HALF_LIFE: "scatter", ids.HEATMAP: "heatmap", ids.GATES: "scatter", ids.KEEP: "scatter",
        ids.SATURATION: "scatter", ids.TAU: "scatter", ids.JACOBIANS: "scatter", ids.LEARNING: "scatter",
        ids.GAP: "scatter", ids.PARAMETERS: "scatter", ids.CONNECTIVITY: "heatmap", ids.SUMMARY: "table",
    }  # fmt: skip
    for graph_id, trace_type in expected_types.items():
        figure = graph(dash_duo, graph_id)
        assert trace_type in figure["types"], (graph_id, figure["types"])
    assert len(graph(dash_duo, ids.PARAMETERS)["names"]) == 4
    assert graph(dash_duo, ids.SUMMARY)["points"][0] == 4  # one row per (cell, readout)
    assert dash_duo.get_logs() == []


def test_each_control_changes_the_figures(dash_duo, runs_root):
    open_page(dash_duo, runs_root, "?runs=alpha")
    before = graph(dash_duo, ids.CURVES)

    dash_duo.find_element(f"#{ids.QUANTITY} input[value='grad_h']").click()
    after = graph(dash_duo, ids.CURVES, lambda g: g and g["ytitle"] != before["ytitle"])
    assert "h" in after["ytitle"]
    wait_url(dash_duo, "quantity=grad_h")

    dash_duo.find_element(f"#{ids.YSCALE} input[value='linear']").click()
    graph(dash_duo, ids.CURVES, lambda g: g and g["ytype"] == "linear")

    dash_duo.find_element(f"#{ids.CONFIGS} input[value='rnn/last']").click()
    graph(dash_duo, ids.CURVES, lambda g: g and len(g["names"]) == 3)
    graph(dash_duo, ids.LEARNING, lambda g: g and not any("rnn" in n for n in g["names"]))

    shown = graph(dash_duo, ids.CURVES)
    dash_duo.find_element(f"#{ids.BATCH} input[value='train']").click()
    graph(dash_duo, ids.CURVES, lambda g: g and g["ys"] != shown["ys"])

    shown = graph(dash_duo, ids.CURVES)
    dash_duo.select_dcc_dropdown(f"#{ids.LAYER}", index=1)
    graph(dash_duo, ids.CURVES, lambda g: g and g["ys"] != shown["ys"])
    wait_url(dash_duo, "layer=1")

    shown = graph(dash_duo, ids.CURVES)
    wait_url(dash_duo, "step=4")  # the latest record step until another is chosen
    dash_duo.find_element(f"#{ids.STEP} [role='slider']").send_keys(Keys.HOME)  # the first record step
    graph(dash_duo, ids.CURVES, lambda g: g and g["ys"] != shown["ys"])
    wait_url(dash_duo, "step=0")

    light = graph(dash_duo, ids.CURVES)["paper"]
    dash_duo.find_element(f"#{ids.THEME} input[value='dark']").click()
    graph(dash_duo, ids.CURVES, lambda g: g and g["paper"] != light)
    assert "theme-dark" in dash_duo.find_element(f"#{ids.THEME_ROOT}").get_attribute("class")

    dash_duo.select_dcc_dropdown(f"#{ids.LAYER}", index=0)  # beta has one layer
    dash_duo.select_dcc_dropdown(f"#{ids.RUNS}", value="beta")
    both = graph(dash_duo, ids.CURVES, lambda g: g and len(g["names"]) == 3 + 2)
    assert sum(name.startswith("beta · ") for name in both["names"]) == 2
    wait_url(dash_duo, "runs=alpha%2Cbeta")

    shown = graph(dash_duo, ids.CURVES)
    dash_duo.find_element(f"#{ids.DIRECTION} input[value='backward']").click()  # only beta runs both ways
    graph(dash_duo, ids.CURVES, lambda g: g and len(g["names"]) == 2 and g["ys"] != shown["ys"])
    wait_url(dash_duo, "direction=backward")

    dash_duo.select_dcc_dropdown(f"#{ids.HEATMAP_CONFIG}", value="beta|gru/last")
    wait_url(dash_duo, "heatmap=beta%7Cgru%2Flast")
    assert dash_duo.get_logs() == []


def test_the_url_restores_a_selection(dash_duo, runs_root):
    open_page(dash_duo, runs_root, "?runs=beta&quantity=grad_h&yscale=linear&configs=gru%2Flast&theme=dark")
    curves = graph(dash_duo, ids.CURVES)
    assert curves["ytype"] == "linear" and len(curves["names"]) == 1 and "gru/last" in curves["names"][0]
    assert dash_duo.find_element(f"#{ids.QUANTITY} input[value='grad_h']").is_selected()
    assert "theme-dark" in dash_duo.find_element(f"#{ids.THEME_ROOT}").get_attribute("class")


def test_a_running_run_refreshes_without_losing_the_selection(dash_duo, runs_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(runs_root / "alpha", root / "live")
    run_json = root / "live" / "run.json"
    info = json.loads(run_json.read_text())
    everything = info["completed"]
    info.update(status="running", pid=os.getpid(), completed=[r for r in everything if r["step"] == 0])
    run_json.write_text(json.dumps(info))

    open_page(dash_duo, root, "?runs=live")
    graph(dash_duo, ids.HALF_LIFE, lambda g: g and len(g["names"]) > 0 and max(g["points"]) == 1)
    dash_duo.find_element(f"#{ids.QUANTITY} input[value='grad_h']").click()
    graph(dash_duo, ids.CURVES, lambda g: g and "h" in (g["ytitle"] or ""))
    assert "running" in dash_duo.find_element(f"#{ids.MESSAGES}").text

    info["completed"] = everything  # the run writes two more record steps
    run_json.write_text(json.dumps(info))
    graph(dash_duo, ids.HALF_LIFE, lambda g: g and max(g["points"]) == 3, timeout=15)
    assert dash_duo.find_element(f"#{ids.QUANTITY} input[value='grad_h']").is_selected()
    wait_url(dash_duo, "quantity=grad_h")


def test_traversal_attempts_are_refused(dash_duo, runs_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(runs_root / "alpha", root / "alpha")
    shutil.copytree(runs_root / "beta", tmp_path / "outside")
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    open_page(dash_duo, root, f"?runs=..%2Foutside,escape,{tmp_path / 'outside'}")
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGES}", "refused run name", timeout=10)
    text = dash_duo.find_element(f"#{ids.MESSAGES}").text
    assert text.count("refused run name") == 3, text
    curves = graph(dash_duo, ids.CURVES)
    assert len(curves["names"]) == 4  # the one run inside the root, shown instead; nothing outside was read


def test_failed_and_damaged_runs_show_a_message_and_the_others_work(dash_duo, runs_root):
    open_page(dash_duo, runs_root, "?runs=alpha,broken,failed")
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGES}", "damaged run", timeout=10)
    text = dash_duo.find_element(f"#{ids.MESSAGES}").text
    assert "the run failed: RuntimeError: simulated" in text
    assert len(graph(dash_duo, ids.CURVES)["names"]) == 4  # alpha's at its last step (the failed run stopped before)
    graph(dash_duo, ids.LEARNING, lambda g: g and any(name.startswith("failed") for name in g["names"]))
    assert "Traceback" not in dash_duo.find_element("body").text


def test_export_report_button_downloads_the_report(dash_duo, runs_root):
    open_page(dash_duo, runs_root, "?runs=beta")
    graph(dash_duo, ids.CURVES)
    dash_duo.find_element(f"#{ids.EXPORT}").click()
    download = dash_duo.download_path if hasattr(dash_duo, "download_path") else None
    if download is None:
        pytest.skip("this dash.testing has no download folder")
    target = os.path.join(download, "gradscope-report.html")
    until(lambda: os.path.exists(target) and os.path.getsize(target) > 1_000_000, timeout=30)
    with open(target, encoding="utf-8") as handle:
        assert 'id="plotly-js-gzip"' in handle.read()
