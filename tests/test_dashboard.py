"""The dashboard without a browser: run store safety and caching, callbacks as plain functions, CLI."""

from __future__ import annotations

import json
import os
import shutil
import time

import plotly.graph_objects as go
import pytest

from gradscope import cli
from gradscope.storage import combine_runs as combine
from gradscope_dashboard import create_app
from gradscope_dashboard.app import (
    _initial,
    _search,
    control_state,
    render_dynamics,
    render_gates,
    render_heatmaps,
    render_learning,
    render_memory,
)
from gradscope_dashboard.data import RunStore

CONFIGS = ["rnn/last", "gru/last", "lstm/last", "lstm/max"]


def test_names_and_refused_paths(runs_root, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(runs_root / "beta", outside / "secret")
    root = tmp_path / "root"
    shutil.copytree(runs_root / "alpha", root / "alpha")
    (root / "escape").symlink_to(outside / "secret", target_is_directory=True)
    store = RunStore(root)
    assert store.names() == ["alpha"]  # the symlink leading out is not offered
    for name in ("..", "../outside/secret", str(outside / "secret"), "escape", "a/b", "", "."):
        with pytest.raises(ValueError, match="refused run name"):
            store.resolve(name)
    loaded = store.load(["escape", "../outside/secret", "alpha"])
    assert [run.name for run in loaded.runs] == ["alpha"]
    assert len(loaded.errors) == 2 and all("refused run name" in e for e in loaded.errors)
    with pytest.raises(ValueError, match="is not a directory"):
        RunStore(tmp_path / "missing")


def test_failed_and_damaged_runs_become_messages(runs_root):
    store = RunStore(runs_root)
    assert store.names() == ["alpha", "beta", "broken", "failed"]
    loaded = store.load(["broken", "failed", "beta"])
    assert [run.name for run in loaded.runs] == ["failed", "beta"]
    assert loaded.errors[0].startswith("broken: damaged run:") and "run.json is not valid JSON" in loaded.errors[0]
    assert loaded.errors[1] == "failed: the run failed: RuntimeError: simulated"


def test_cache_is_reused_until_a_file_changes(runs_root, tmp_path):
    shutil.copytree(runs_root / "beta", tmp_path / "beta")
    store = RunStore(tmp_path)
    first = store.get("beta")
    assert store.get("beta") is first
    run_json = tmp_path / "beta" / "run.json"
    info = json.loads(run_json.read_text())
    info["config"]["note"] = "changed"
    time.sleep(0.01)
    run_json.write_text(json.dumps(info))
    os.utime(run_json)
    second = store.get("beta")
    assert second is not first and second.config["note"] == "changed"


def test_combine_adds_the_run_column(runs_root):
    store = RunStore(runs_root)
    frame = combine(store.load(["alpha", "beta"]).runs, "metrics")
    assert frame.columns[0] == "run" and set(frame["run"]) == {"alpha", "beta"}
    assert list(combine([], "fits").columns[:2]) == ["run", "step"]


def test_control_state(runs_root):
    state = control_state(RunStore(runs_root), ["alpha", "broken"], ["lstm/max", "gone/last"])
    assert state["run_options"] == ["alpha", "beta", "broken", "failed"]
    assert state["config_options"] == CONFIGS
    assert state["configs"] == ["lstm/max"]  # the valid part of the current choice is kept
    assert state["heatmap_options"] == [f"alpha|{c}" for c in CONFIGS]
    assert state["steps"] == [0, 2, 4] and state["layers"] == [0, 1] and state["directions"] == ["forward"]
    assert len(state["messages"]) == 1 and state["live"] is False
    assert control_state(RunStore(runs_root), ["alpha"], [])["configs"] == CONFIGS


def _names(figure: go.Figure) -> list[str]:
    return [trace.name for trace in figure.data if trace.name]


def test_render_memory_follows_the_controls(runs_root):
    loaded = RunStore(runs_root).load(["alpha"])
    curves, half_life = render_memory(loaded, CONFIGS, "grad_x", None, 0, "forward", "log", "probe", "light")
    assert len(curves.data) == 4 and curves.layout.yaxis.type == "log"
    assert len(half_life.data) >= 4
    two, _ = render_memory(loaded, CONFIGS[:2], "grad_h", None, 0, "forward", "linear", "probe", "light")
    assert len(two.data) == 2 and two.layout.yaxis.type == "linear"
    assert "h" in two.layout.yaxis.title.text
    layer1, _ = render_memory(loaded, CONFIGS, "grad_x", None, 1, "forward", "log", "probe", "light")
    assert [list(t.y) for t in layer1.data] != [list(t.y) for t in curves.data]
    step0, _ = render_memory(loaded, CONFIGS, "grad_x", 0, 0, "forward", "log", "probe", "light")
    assert [list(t.y) for t in step0.data] != [list(t.y) for t in curves.data]
    both = RunStore(runs_root).load(["beta"])
    forward, _ = render_memory(both, ["gru/last"], "grad_x", None, 0, "forward", "log", "probe", "light")
    backward, _ = render_memory(both, ["gru/last"], "grad_x", None, 0, "backward", "log", "probe", "light")
    assert len(backward.data) == 1 and list(backward.data[0].y) != list(forward.data[0].y)
    empty, _ = render_memory(
        RunStore(runs_root).load([]), CONFIGS, "grad_x", None, 0, "forward", "log", "probe", "light"
    )
    assert len(empty.data) == 0


def test_render_other_panels(runs_root):
    loaded = RunStore(runs_root).load(["alpha", "beta"])
    configs = CONFIGS
    gates, keep, saturation = (
        render_gates(loaded, which, configs, None, 0, "forward", "probe", "dark")
        for which in ("profiles", "keep", "saturation")
    )
    assert len(gates.data) > 0 and len(keep.data) > 0 and len(saturation.data) > 0
    assert (
        keep.layout.template.layout.paper_bgcolor
        != go.Figure(layout={"template": "plotly_white"}).layout.template.layout.paper_bgcolor
    )
    tau, jac = render_dynamics(loaded, configs, None, 0, "forward", "light")
    assert len(tau.data) > 0 and len(jac.data) > 0
    learning, gap, params, summary = render_learning(loaded, configs, "light")
    assert len(learning.data) > 0 and len(gap.data) > 0 and len(params.data) == 4
    assert isinstance(summary.data[0], go.Table)
    heat, conn = render_heatmaps(loaded, "alpha|lstm/max", "grad_x", 0, "forward", "probe", "light")
    assert isinstance(heat.data[0], go.Heatmap) and isinstance(conn.data[0], go.Heatmap)
    none, _ = render_heatmaps(loaded, None, "grad_x", 0, "forward", "probe", "light")
    assert len(none.data) == 0
    rnn_only = render_gates(loaded, "profiles", ["rnn/last"], None, 0, "forward", "probe", "light")
    assert len(rnn_only.data) == 0 and "no gated cell" in rnn_only.layout.annotations[0].text


def test_url_state_round_trip():
    search = _search(["alpha", "beta"], ["gru/last"], "grad_h", 2, 1, "forward", "linear", "train", "dark",
                     "alpha|gru/last")  # fmt: skip
    from urllib.parse import parse_qs

    state = _initial(parse_qs(search[1:]))
    assert state["runs"] == ["alpha", "beta"] and state["configs"] == ["gru/last"]
    assert (state["quantity"], state["step"], state["layer"], state["direction"]) == ("grad_h", 2, 1, "forward")
    assert (state["yscale"], state["batch"], state["theme"], state["heatmap"]) == (
        "linear",
        "train",
        "dark",
        "alpha|gru/last",
    )
    assert _initial({})["quantity"] == "grad_x" and _initial({})["step"] is None


def test_create_app_serves_assets(runs_root):
    app = create_app(runs_root)
    client = app.server.test_client()
    page = client.get("/?runs=alpha")
    assert page.status_code == 200
    css = client.get("/assets/gradscope.css")
    assert css.status_code == 200 and b"theme-dark" in css.data
    assert client.get("/assets/logo.svg").status_code == 200


def test_cli_dashboard_warns_off_loopback_and_keeps_debug_off(runs_root, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("dash.Dash.run", lambda self, **kwargs: calls.append(kwargs))
    assert cli.main(["dashboard", str(runs_root)]) == 0
    assert calls[-1] == {"host": "127.0.0.1", "port": 8050, "debug": False}
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["dashboard", str(runs_root), "--host", "0.0.0.0", "--port", "9000", "--debug"]) == 0
    assert calls[-1] == {"host": "0.0.0.0", "port": 9000, "debug": True}
    assert "not a loopback address" in capsys.readouterr().err
    assert cli.main(["dashboard", str(runs_root / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_export_report_is_the_report_of_the_selection(runs_root):
    from gradscope_dashboard.app import export_report

    download = export_report(RunStore(runs_root), ["alpha", "broken"], ["lstm/max"], "dark")
    assert download["filename"] == "gradscope-report.html"
    document = download["content"]
    assert document.count('id="plotly-js-gzip"') == 1 and '<body class="dark">' in document
    assert document.count('data-column="cell"') == 1  # the one configuration selected
    assert "skipped: broken: damaged run" in document
    assert export_report(RunStore(runs_root), [], None, "light") is None
