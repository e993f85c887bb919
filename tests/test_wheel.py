"""A wheel installed into a fresh venv (not the checkout) serves the dashboard with its CSS and images, and holds
the compiled loops' source."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_serves_the_dashboard_assets(tmp_path, runs_root):
    """Build the wheel, install it with its dependencies into a fresh venv, serve from there."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheels = list((tmp_path / "dist").glob("gradscope-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    # the torch already in use first (a CPU build here), so that resolving the wheel's range fetches nothing big
    subprocess.run([python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheels[0])], check=True, capture_output=True)
    site = subprocess.run(
        [python, "-c", "import gradscope, gradscope_dashboard, gradscope.native as n; "
         "print(gradscope.__file__, gradscope_dashboard.__file__, n._SOURCE if n._SOURCE.is_file() else '')"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    paths = site.stdout.split()
    assert len(paths) == 3 and all(path.startswith(str(venv)) for path in paths), (
        site.stdout
    )  # the compiled loops' source too
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    port = _free_port()
    server = subprocess.Popen(
        [str(venv / "bin" / "gradscope"), "dashboard", str(runs_root), "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = urllib.request.urlopen(base + "/?runs=alpha", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.3)
        assert "gradscope" in page
        css = urllib.request.urlopen(base + "/assets/gradscope.css", timeout=5)
        assert css.status == 200 and b"theme-dark" in css.read()
        logo = urllib.request.urlopen(base + "/assets/logo.svg", timeout=5)
        assert logo.status == 200 and b"<svg" in logo.read()
    finally:
        server.terminate()
        server.wait(timeout=10)
