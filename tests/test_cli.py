"""The gradscope console script: run, demo's pieces, and errors as one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gradscope
from gradscope.cli import main
from gradscope.storage import load_run

SCRIPT = Path(sys.executable).with_name("gradscope")
SMALL = ["--hidden-size", "8", "--batch-size", "8", "--eval-size", "16", "--probe-size", "4",
         "--jacobian-samples", "1"]  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True)


def test_version_and_help():
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gradscope {gradscope.__version__}"
    assert "run" in _cli("--help").stdout and "demo" in _cli("--help").stdout
    help_text = _cli("run", "--help").stdout
    for option in ("--task", "--seq-len", "--cells", "--readouts", "--steps", "--out", "--overwrite", "--clip",
                   "--forget-bias", "--lr", "--record-every", "--train-size", "--option"):  # fmt: skip
        assert option in help_text


def test_run_writes_a_run_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", "--task", "recall", "--seq-len", "6", "--steps", "4", "--record-every", "2",
            "--cells", "rnn", "lstm", "--readouts", "last", "max", "--out", str(out), "--option", "symbols=4"]  # fmt: skip
    assert main(args + SMALL) == 0
    captured = capsys.readouterr()
    assert "test_loss" in captured.out and "half_life" in captured.out and "median_tau" in captured.out
    assert len([line for line in captured.out.splitlines() if line.split()[:1] in (["rnn"], ["lstm"])]) == 4
    assert "lstm/max" in captured.err and "step     4/4" in captured.err  # progress, per (cell, readout)
    run = load_run(out)
    assert run.status == "completed" and run.config["task_options"] == {"symbols": 4}
    assert run.steps == [0, 2, 4]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "parity", "--seq-len", "5"], "argument --task: invalid choice: 'parity'"),
        (
            ["--task", "adding", "--seq-len", "5", "--cells", "rnn", "mamba"],
            "argument --cells: invalid choice: 'mamba'",
        ),
        (["--task", "adding", "--seq-len", "1"], "seq_len must be an int >= 2, got: 1"),
        (["--task", "adding", "--seq-len", "5", "--steps", "0"], "steps must be a positive int, got: 0"),
        (["--task", "adding", "--seq-len", "five"], "argument --seq-len: invalid int value: 'five'"),
        (["--task", "adding", "--seq-len", "5", "--option", "symbols"], "--option expects key=value"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(tmp_path, args, message):
    result = _cli("run", *args, "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradscope run: error: ") and message in lines[0]
    assert not (tmp_path / "r").exists()


def test_an_existing_run_needs_overwrite(tmp_path):
    out = tmp_path / "r"
    base = ["--task", "adding", "--seq-len", "4", "--steps", "1", "--cells", "rnn", "--out", str(out), *SMALL]
    assert main(["run", *base]) == 0
    result = _cli("run", *base)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gradscope run: error: {out} already holds a run; pass overwrite=True (--overwrite) to replace it"
    ]
    assert _cli("run", *base, "--overwrite").returncode == 0
