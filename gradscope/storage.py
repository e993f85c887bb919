"""The run directory: gradscope's one storage format, written atomically, read without pickle.

A run directory holds ``run.json`` and one Parquet file per table (:data:`TABLES`)::

    run.json             format, config, versions, cells, status, error, timestamps, completed records
    metrics.parquet      step, cell, readout, split, loss, metric
    curves.parquet       step, cell, readout, batch, layer, direction, quantity, t, lag, norm, relative
    fits.parquet         step, cell, readout, batch, layer, direction, quantity, rate, half_life, horizon, r2,
                         regime, points
    gates.parquet        step, cell, readout, batch, layer, direction, gate, t, mean, q10, q90, saturated
    time_constants.parquet  step, cell, readout, layer, direction, unit, keep, tau
    jacobians.parquet    step, cell, readout, layer, direction, lyapunov_max, spectral_norm_mean, spectral_norm_max
    connectivity.parquet step, cell, readout, t, s, lag, norm   (the last step only, for T <= 200)
    params.parquet       cell, readout, module, parameters

Every file is replaced whole by writing a temporary file beside it and renaming it over the old one,
so a reader (or a run killed with ``kill -9``) only ever sees complete files. Tables are written before
``run.json``, whose ``completed`` list names the (cell, readout, step) records that are whole;
:func:`load_run` keeps only those rows, so a run interrupted between two files is still consistent.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FORMAT", "TABLES", "Run", "RunWriter", "combine_runs", "load_run", "load_runs", "select_rows"]

FORMAT = "gradscope-run/1"
TABLES: dict[str, tuple[str, ...]] = {
    "metrics": ("step", "cell", "readout", "split", "loss", "metric"),
    "curves": ("step", "cell", "readout", "batch", "layer", "direction", "quantity", "t", "lag", "norm", "relative"),
    "fits": (
        "step",
        "cell",
        "readout",
        "batch",
        "layer",
        "direction",
        "quantity",
        "rate",
        "half_life",
        "horizon",
        "r2",
        "regime",
        "points",
    ),
    "gates": ("step", "cell", "readout", "batch", "layer", "direction", "gate", "t", "mean", "q10", "q90", "saturated"),
    "time_constants": ("step", "cell", "readout", "layer", "direction", "unit", "keep", "tau"),
    "jacobians": (
        "step",
        "cell",
        "readout",
        "layer",
        "direction",
        "lyapunov_max",
        "spectral_norm_mean",
        "spectral_norm_max",
    ),
    "connectivity": ("step", "cell", "readout", "t", "s", "lag", "norm"),
    "params": ("cell", "readout", "module", "parameters"),
}
"""Every table of a run directory and its columns, in order."""
STATUSES = ("running", "completed", "failed", "interrupted")
_CATEGORICAL = ("cell", "readout", "split", "batch", "direction", "quantity", "gate", "regime", "module")
"""Text columns, stored and loaded as categoricals."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary_path)`` and rename it into place: all or nothing."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


class RunWriter:
    """Writes one run directory incrementally: tables at every record, then ``run.json``.

    Args:
        path: the directory; created if missing. It must not already hold a run unless ``overwrite``.
        config: what produced the run (stored in ``run.json`` as given; must be JSON-serialisable).
        meta: further top-level entries for ``run.json`` (versions, cells, ...).
    """

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], meta: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        if (self.path / "run.json").exists() and not overwrite:
            raise FileExistsError(f"{self.path} already holds a run; pass overwrite=True (--overwrite) to replace it")
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            (self.path / f"{name}.parquet").unlink(missing_ok=True)
        self.rows: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
        self.info: dict[str, Any] = {
            "format": FORMAT,
            "config": config,
            **meta,
            "status": "running",
            "error": None,
            "created": _now(),
            "updated": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "completed": [],
        }
        _write_json(self.path / "run.json", self.info)

    def add(self, table: str, frame: pd.DataFrame) -> None:
        """Queue rows for ``table`` (written at the next :meth:`commit`)."""
        columns = TABLES[table]
        if tuple(frame.columns) != columns:
            raise ValueError(f"table {table!r} needs columns {columns}, got {tuple(frame.columns)}")
        self.rows[table].append(frame)

    def commit(self, completed: list[dict[str, Any]]) -> None:
        """Write every table that changed, then ``run.json`` listing ``completed`` records as whole."""
        for table, parts in self.rows.items():
            if not parts:
                continue
            frame = pd.concat(parts, ignore_index=True)
            text = [c for c in frame.columns if c in _CATEGORICAL]
            frame = frame.astype({c: "category" for c in text})  # dictionary-encoded: smaller, faster to read
            self.rows[table] = [frame]
            atomic_write(self.path / f"{table}.parquet", lambda tmp, f=frame: f.to_parquet(tmp, index=False))
        self.info["completed"] = self.info["completed"] + completed
        self.info["updated"] = _now()
        _write_json(self.path / "run.json", self.info)

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the run ``completed`` or ``failed`` (with the error)."""
        self.info.update(status=status, error=error, updated=_now())
        _write_json(self.path / "run.json", self.info)


@dataclass(frozen=True)
class Run:
    """A loaded run directory: its ``run.json`` and one DataFrame per table (:data:`TABLES`).

    Attributes:
        path: the directory. name: its name.
        info: the whole ``run.json``. config: ``info["config"]``.
        status: ``"running"``, ``"completed"``, ``"failed"``, or ``"interrupted"`` (``run.json`` says
            running but the process that wrote it, on this host, is gone).
        metrics, curves, fits, gates, time_constants, jacobians, connectivity, params: the tables,
            holding only the records listed as completed; text columns are categoricals.
    """

    path: Path
    info: dict[str, Any]
    status: str
    metrics: pd.DataFrame
    curves: pd.DataFrame
    fits: pd.DataFrame
    gates: pd.DataFrame
    time_constants: pd.DataFrame
    jacobians: pd.DataFrame
    connectivity: pd.DataFrame
    params: pd.DataFrame

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return self.info["config"]

    @property
    def steps(self) -> list[int]:
        """The record steps completed by every (cell, readout), in order."""
        return sorted(self.metrics["step"].unique().tolist())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_info(path: Path) -> dict[str, Any]:
    file = path / "run.json"
    if not path.is_dir():
        raise ValueError(f"not a gradscope run: {path} is not a directory")
    if not file.is_file():
        raise ValueError(f"not a gradscope run: {file} does not exist")
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"damaged run: {file} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"not a gradscope run: {file} has format {got!r}, expected {FORMAT!r}")
    for key in ("config", "status", "completed"):
        if key not in info:
            raise ValueError(f"damaged run: {file} has no {key!r} entry")
    if info["status"] not in STATUSES:
        raise ValueError(f"damaged run: {file} has status {info['status']!r}, expected one of {STATUSES}")
    return info


def _read_table(path: Path, name: str) -> pd.DataFrame:
    file = path / f"{name}.parquet"
    columns = list(TABLES[name])
    if not file.exists():
        return pd.DataFrame(columns=columns)
    try:
        frame = pd.read_parquet(file)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ValueError(f"damaged run: {file} cannot be read as Parquet ({type(error).__name__}: {error})") from None
    if list(frame.columns) != columns:
        raise ValueError(f"damaged run: {file} has columns {list(frame.columns)}, expected {columns}")
    return frame


def load_run(path: str | os.PathLike) -> Run:
    """Load one run directory; only records listed as completed in ``run.json`` are kept.

    Raises:
        ValueError: naming the file, when the directory is not a run or a file of it is damaged.
    """
    path = Path(path)
    info = _read_info(path)
    status = info["status"]
    if status == "running" and info.get("host") == socket.gethostname() and not _process_alive(info.get("pid", -1)):
        status = "interrupted"
    keys = ["cell", "readout", "step"]
    done = pd.MultiIndex.from_tuples([tuple(r[k] for k in keys) for r in info["completed"]], names=keys)
    tables = {}
    for name in TABLES:
        frame = _read_table(path, name)
        # a completed run wrote run.json last: every row is whole; otherwise keep the completed records
        if status != "completed" and "step" in frame.columns and len(frame):
            frame = frame[pd.MultiIndex.from_frame(frame[keys]).isin(done)].reset_index(drop=True)
        tables[name] = frame
    return Run(path=path, info=info, status=status, **tables)


def load_runs(root: str | os.PathLike) -> list[Run]:
    """Every run directly under ``root`` (a directory holding ``run.json``), sorted by name.

    A damaged run raises; use :func:`load_run` on each directory to skip damaged ones yourself.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    return [load_run(child) for child in sorted(root.iterdir()) if (child / "run.json").is_file()]


def select_rows(frame: pd.DataFrame, configs: list[str] | None = None, **equal: object) -> pd.DataFrame:
    """Rows of ``frame`` whose ``cell/readout`` is in ``configs`` (None: all) and whose columns equal ``equal``.

    A None value, or a column the frame lacks, does not filter.
    """
    mask = np.ones(len(frame), dtype=bool)
    if configs is not None:
        chosen = np.zeros(len(frame), dtype=bool)
        for key in configs:
            cell, _, readout = key.partition("/")
            chosen |= ((frame["cell"] == cell) & (frame["readout"] == readout)).to_numpy(dtype=bool)
        mask &= chosen
    for column, value in equal.items():
        if value is not None and column in frame:
            mask &= (frame[column] == value).to_numpy(dtype=bool)
    return frame[mask]


def combine_runs(runs: list[Run], table: str, configs: list[str] | None = None, **equal: object) -> pd.DataFrame:
    """One table of several runs, filtered as :func:`select_rows` does, with a leading ``run`` column.

    Filtering each run's table before joining them keeps the work proportional to what is shown.
    """
    frames = [select_rows(getattr(run, table), configs, **equal).assign(run=run.name) for run in runs]
    columns = ["run", *TABLES[table]]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
