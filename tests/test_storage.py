"""The run directory: atomic writes, clear errors for what is not a run, interrupted runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gradscope.storage import FORMAT, TABLES, RunWriter, atomic_write, load_run, load_runs

SMALL_RUN = ["--task", "adding", "--seq-len", "12", "--cells", "gru", "lstm", "--steps", "400", "--record-every", "5", "--hidden-size", "8",
             "--batch-size", "8", "--eval-size", "16", "--probe-size", "4", "--jacobian-samples", "1"]  # fmt: skip


def _metrics(step, cell="rnn", readout="last"):
    return pd.DataFrame([(step, cell, readout, "test", 1.0, 0.5)], columns=TABLES["metrics"])


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def failing(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
    atomic_write(target, lambda path: path.write_text("new"))
    assert target.read_text() == "new"


def test_only_completed_records_are_loaded(tmp_path):
    writer = RunWriter(tmp_path / "r", {"a": 1}, {"task": {"name": "x"}})
    writer.add("metrics", _metrics(0))
    writer.commit([{"cell": "rnn", "readout": "last", "step": 0}])
    writer.add("metrics", _metrics(5))
    writer.commit([])  # step 5 written but not declared complete (as if killed in between)
    run = load_run(tmp_path / "r")
    assert run.steps == [0] and run.status == "running" and run.config == {"a": 1}
    writer.finish("completed")
    assert load_run(tmp_path / "r").status == "completed"


def test_a_run_whose_process_is_gone_is_interrupted(tmp_path):
    RunWriter(tmp_path / "r", {}, {})
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info["pid"] = int(dead.stdout)
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert load_run(tmp_path / "r").status == "interrupted"


def test_what_is_not_a_run_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"not a gradscope run: .*missing is not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"not a gradscope run: .*empty/run.json does not exist"):
        load_run(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"other/run.json has format 'something-else'"):
        load_run(tmp_path / "other")


def test_damaged_files_are_named(tmp_path):
    writer = RunWriter(tmp_path / "r", {}, {})
    writer.add("metrics", _metrics(0))
    writer.commit([{"cell": "rnn", "readout": "last", "step": 0}])
    run_json = tmp_path / "r" / "run.json"
    good = run_json.read_text()
    run_json.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"damaged run: .*r/run.json is not valid JSON"):
        load_run(tmp_path / "r")
    run_json.write_text(json.dumps({"format": FORMAT, "config": {}, "completed": []}))
    with pytest.raises(ValueError, match=r"run.json has no 'status' entry"):
        load_run(tmp_path / "r")
    run_json.write_text(good)
    parquet = tmp_path / "r" / "metrics.parquet"
    parquet.write_bytes(parquet.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"damaged run: .*r/metrics.parquet cannot be read as Parquet"):
        load_run(tmp_path / "r")
    pd.DataFrame({"x": [1]}).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"metrics.parquet has columns \['x'\]"):
        load_run(tmp_path / "r")


def test_writer_refuses_to_replace_a_run_or_a_file(tmp_path):
    RunWriter(tmp_path / "r", {}, {})
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunWriter(tmp_path / "r", {}, {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        RunWriter(tmp_path / "file", {}, {})
    with pytest.raises(ValueError, match="table 'metrics' needs columns"):
        RunWriter(tmp_path / "s", {}, {}).add("metrics", pd.DataFrame({"step": [0]}))


def test_load_runs_finds_every_run_under_a_folder(tmp_path):
    for name in ("b", "a"):
        RunWriter(tmp_path / name, {"name": name}, {})
    (tmp_path / "not-a-run").mkdir()
    assert [run.name for run in load_runs(tmp_path)] == ["a", "b"]
    with pytest.raises(ValueError, match="is not a directory"):
        load_runs(tmp_path / "nothing")


def _completed(path: Path) -> int:
    try:
        return len(json.loads((path / "run.json").read_text())["completed"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.parametrize("moment", ["first-record", "third-record", "just-after-start", "mid-run"])
def test_kill_9_leaves_a_loadable_run(tmp_path, moment):
    out = tmp_path / "run"
    script = Path(sys.executable).with_name("gradscope")
    process = subprocess.Popen([str(script), "run", *SMALL_RUN, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        want = {"first-record": 1, "third-record": 3, "just-after-start": 0, "mid-run": 5}[moment]
        while time.monotonic() < deadline and not (out / "run.json").exists():
            time.sleep(0.01)
        while time.monotonic() < deadline and _completed(out) < want:
            time.sleep(0.005)
        if moment == "mid-run":
            time.sleep(0.37)  # between two records, wherever that falls
        assert process.poll() is None, "the run finished before it could be killed"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    run = load_run(out)
    assert run.status == "interrupted"
    completed = {(r["cell"], r["readout"], r["step"]) for r in run.info["completed"]}
    assert len(completed) >= want
    for name in ("metrics", "curves", "fits", "gates", "time_constants", "jacobians"):
        frame = getattr(run, name)
        keys = set(zip(frame["cell"], frame["readout"], frame["step"], strict=True))
        assert keys == completed, name  # every completed record is whole, nothing else is there
