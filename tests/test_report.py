"""The offline report: self-contained, atomic, the same numbers as the analysis, rendered offline."""

from __future__ import annotations

import html.parser
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from gradscope import analysis, cli
from gradscope.report import render_report, report_figures, write_report, write_static
from gradscope.storage import load_run

EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


class _References(html.parser.HTMLParser):
    """Every URL a script, link, img or style element (or a style attribute) would load."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "srcset", "data"):
            if tag in ("script", "link", "img", "style", "source", "object", "iframe") and attrs.get(name):
                self.urls.append(attrs[name])
        self.urls += re.findall(r"url\(([^)]*)\)", attrs.get("style") or "")
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.urls += re.findall(r"url\(([^)]*)\)", data) + re.findall(r"@import\s+['\"]?([^'\";]+)", data)


@pytest.fixture(scope="module")
def report(runs_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report([runs_root / "alpha", runs_root / "beta"], path)
    return path


def test_nothing_is_loaded_from_outside(report):
    parser = _References()
    parser.feed(report.read_text())
    assert parser.urls == []  # no script, link, img or style reference at all, external or not
    text = report.read_text()
    assert "cdn." not in text.split('id="plotly-js-gzip"')[0]  # nothing before the embedded bundle names a CDN
    assert text.count('id="plotly-js-gzip"') == 1  # plotly.js once, however many figures
    assert int(re.search(r'name="gradscope-figures" content="(\d+)"', text).group(1)) == text.count('class="figure"')


def test_the_summary_numbers_are_the_analysis_numbers(report, runs_root):
    text = report.read_text()
    values = {}
    for row in re.findall(r"<tr>(<td data-column=.*?)</tr>", text):
        record = dict(re.findall(r'data-column="(\w+)" data-value="([^"]*)"', row))
        values[(record["run"].strip("'"), record["cell"].strip("'"), record["readout"].strip("'"))] = record
    assert len(values) == 4 + 2  # alpha's four configurations and beta's two, side by side
    for name in ("alpha", "beta"):
        run = load_run(runs_root / name)
        last = run.config["steps"]
        for (run_name, cell, readout), record in values.items():
            if run_name != name:
                continue
            curve = run.curves[(run.curves["cell"] == cell) & (run.curves["readout"] == readout)
                               & (run.curves["step"] == last) & (run.curves["batch"] == "probe")
                               & (run.curves["layer"] == 0) & (run.curves["quantity"] == "grad_x")]  # fmt: skip
            fit = analysis.fit_forgetting(curve[["t", "lag", "norm", "relative"]])
            assert float(record["half_life"]) == pytest.approx(fit.half_life) or (
                math.isinf(fit.half_life) and record["half_life"] == "inf"
            )
            test_loss = run.metrics[(run.metrics["cell"] == cell) & (run.metrics["readout"] == readout)
                                    & (run.metrics["step"] == last) & (run.metrics["split"] == "test")]["loss"]  # fmt: skip
            assert float(record["test_loss"]) == test_loss.item()


def test_report_figures_are_the_plot_functions(runs_root):
    runs = [load_run(runs_root / "alpha")]
    figures = report_figures(runs)
    slugs = [f.slug for f in figures]
    assert slugs[:3] == ["curves-x", "curves-h", "half-life"]
    assert sum(s.startswith("heatmap-alpha-") for s in slugs) == 4
    assert sum(s.startswith("connectivity-alpha-") for s in slugs) == 4
    only = report_figures(runs, configs=["lstm/max"])
    assert len(only[0].figure.data) == 1 and sum(f.slug.startswith("heatmap-") for f in only) == 1


def test_an_existing_file_is_replaced_only_by_a_complete_one(runs_root, tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("previous")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while rendering")

    monkeypatch.setattr("gradscope.report.report_figures", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_report([runs_root / "alpha"], path)
    assert path.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_unreadable_runs(runs_root, tmp_path):
    with pytest.raises(ValueError, match=r"damaged run: .*broken/run.json is not valid JSON"):
        write_report([runs_root / "broken"], tmp_path / "one.html")
    assert not (tmp_path / "one.html").exists()
    with pytest.warns(UserWarning, match="skipping .*broken"):
        write_report([runs_root / "alpha", runs_root / "broken"], tmp_path / "two.html")
    assert 'class="warning">skipped: ' in (tmp_path / "two.html").read_text()
    with pytest.raises(ValueError, match="at least one run"):
        render_report([])


def test_cli_report_and_static_export(runs_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.html"
    assert cli.main(["report", str(runs_root / "alpha"), "-o", str(out)]) == 0
    assert out.stat().st_size > 1_000_000 and f"wrote {out}" in capsys.readouterr().out
    assert cli.main(["report", str(runs_root / "nothing"), "-o", str(tmp_path / "x.html")]) == 2
    assert "not a gradscope run" in capsys.readouterr().err
    # without an exporter the report is still written, and the reason is said
    monkeypatch.setitem(__import__("sys").modules, "kaleido", None)
    assert cli.main(["report", str(runs_root / "alpha"), "-o", str(out), "--static", str(tmp_path / "img")]) == 0
    captured = capsys.readouterr()
    assert "no static exporter: install kaleido" in captured.err and out.exists()


def test_static_images_with_kaleido_and_chromium(runs_root, tmp_path):
    pytest.importorskip("kaleido")
    if shutil.which("chromium") is None and os.environ.get("CI") != "true":
        pytest.skip("needs Chromium for kaleido")
    result = write_static([load_run(runs_root / "beta")], tmp_path / "img", formats=("svg",))
    assert result.problem is None, result.problem
    assert len(result.files) == len(report_figures([load_run(runs_root / "beta")]))
    assert all(p.read_text().lstrip().startswith(("<svg", "<?xml")) for p in result.files)


def test_the_report_renders_offline_in_chromium(report):
    if shutil.which("chromedriver") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium-driver is needed for this test")
        pytest.skip("needs chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options)
    try:
        driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        driver.get(Path(report).as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.rendered"))
        expected = int(driver.execute_script(
            "return document.querySelector('meta[name=gradscope-figures]').content"))  # fmt: skip
        rendered = driver.execute_script(
            "return Array.from(document.querySelectorAll('div.figure.js-plotly-plot'))"
            ".filter(el => el._fullData && el.querySelector('.main-svg')).length"
        )
        assert rendered == expected > 10
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()
