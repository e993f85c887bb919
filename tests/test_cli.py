"""The gradscope console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gradscope
from gradscope.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradscope {gradscope.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_demo_prints_one_row_per_step(cell, capsys):
    assert main(["demo", "--cell", cell, "--seq-len", "7", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[4:]]
    assert len(rows) == 7
    assert [int(r[0]) for r in rows] == list(range(7))  # t
    assert [int(r[1]) for r in rows] == list(range(6, -1, -1))  # lag
    assert all(float(r[3]) > 0 for r in rows)  # grad_h reaches every step
    header = out.splitlines()[2].split()
    assert ("grad_c" in header) == (cell == "lstm") and ("keep" in header) == (cell != "rnn")


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("gradscope")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"gradscope {gradscope.__version__}"
