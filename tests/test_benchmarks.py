"""benchmarks/grid.py's output file: one section per cell, each from one run, kept across runs of other cells."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

GRID = Path(__file__).parent.parent / "benchmarks" / "grid.py"
TINY = ["--layers", "1", "--batch", "2", "--steps", "3", "--input", "1", "--hidden", "2", "--rounds", "1"]


def _run(out: Path, *cells: str) -> None:
    command = [sys.executable, str(GRID), "--cells", *cells, *TINY, "--no-memory", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


def _sections(text: str) -> dict[str, str]:
    parts = text.split("\n## ")
    return {part.split("\n", 1)[0]: part for part in parts[1:]}


def test_a_run_replaces_only_the_sections_of_its_cells(tmp_path):
    out = tmp_path / "RESULTS.md"
    _run(out, "lstm", "rnn")
    first = _sections(out.read_text())
    assert list(first) == ["Columns", "Summary per cell", "rnn", "lstm"]
    for cell in ("rnn", "lstm"):
        assert "- command: `" in first[cell] and "--cells lstm rnn" in first[cell]
        assert "- commit: " in first[cell] and "- points: 1 of 1" in first[cell]
        lines = first[cell].splitlines()
        assert sum(line.startswith(f"| {cell} | 1 | ") and " / " in line for line in lines) == 1  # summary row
        assert sum(line.startswith(f"| {cell} | 1 | 2 | 3 | 1 | 2 | 1 | ") for line in lines) == 1  # the point

    _run(out, "gru")
    second = _sections(out.read_text())
    assert list(second) == ["Columns", "Summary per cell", "rnn", "gru", "lstm"]
    assert second["rnn"] == first["rnn"] and second["lstm"] == first["lstm"]  # kept verbatim
    assert "--cells gru" in second["gru"]
    summary = [line for line in second["Summary per cell"].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in summary[2:]] == ["rnn", "gru", "lstm"]

    _run(out, "rnn")
    third = _sections(out.read_text())
    assert "--cells rnn " in third["rnn"] and third["rnn"] != first["rnn"]
    assert third["gru"] == second["gru"] and third["lstm"] == first["lstm"]


def test_a_run_names_the_instructions_it_was_narrowed_to(tmp_path, monkeypatch):
    """A CPU without AVX-512 stood in for (torch's kernels and gradscope's build told to leave it out): the run's
    head says so; otherwise it says nothing of it."""
    for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "GRADSCOPE_NATIVE_CFLAGS"):
        monkeypatch.delenv(name, raising=False)
    _run(tmp_path / "plain.md", "rnn")
    assert "instructions narrowed" not in (tmp_path / "plain.md").read_text()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("GRADSCOPE_NATIVE_CFLAGS", "")  # set, empty: nothing narrowed
    _run(tmp_path / "narrowed.md", "rnn")
    assert "\n- instructions narrowed: `ONEDNN_MAX_CPU_ISA=AVX2`\n" in (tmp_path / "narrowed.md").read_text()


def test_alone_times_each_variant_in_its_own_process_under_each_allocator(tmp_path):
    """benchmarks/alone.py: one row per point and allocator, its time and ratios numbers; bad arguments refused by
    name."""
    alone = GRID.parent / "alone.py"
    out = tmp_path / "RESULTS-alone.md"
    command = [sys.executable, str(alone), "--points", "lstm:1:2:3:1:2", "--calls", "1", "--repeats", "1"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=600)
    text = out.read_text()
    assert "- commit: " in text and "- allocators: default: the environment as found; kept: `GLIBC_TUNABLES=" in text
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| lstm |")]
    assert [row[:7] for row in rows] == [
        ["lstm", "1", "2", "3", "1", "2", allocator] for allocator in ("default", "kept")
    ]
    # a ms, then ratios: of single calls, which another process on a core can slow a hundredfold (0.00 is a number)
    assert all(float(row[7]) > 0 and all(math.isfinite(float(v)) and float(v) >= 0 for v in row[8:]) for row in rows)
    for bad, message in ((["--points", "lstm:9"], "cell:layers:B:T:D:M"), (["--allocators", "nope"], "preload=PATH")):
        result = subprocess.run([sys.executable, str(alone), *bad], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr
