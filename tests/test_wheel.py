"""A wheel install (not the checkout) serves the dashboard with its CSS and images."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_serves_the_dashboard_assets(tmp_path, runs_root):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheels = list((tmp_path / "dist").glob("gradscope-*.whl"))
    assert len(wheels) == 1
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])],
                   check=True, capture_output=True)  # fmt: skip
    assert (target / "gradscope_dashboard" / "assets" / "gradscope.css").is_file()
    assert (target / "gradscope_dashboard" / "assets" / "logo.svg").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import gradscope, gradscope_dashboard; print(gradscope.__file__, gradscope_dashboard.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert all(path.startswith(str(target)) for path in where.stdout.split()), where.stdout
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gradscope.cli", "dashboard", str(runs_root), "--port", str(port)],
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
