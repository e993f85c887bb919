"""Reading run directories for the dashboard: only under the runs root, cached until their files change."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from gradscope.storage import TABLES, Run, load_run

__all__ = ["Loaded", "RunStore"]


@dataclass(frozen=True)
class Loaded:
    """The outcome of loading the selected runs: the runs that loaded, and a message for each that did not."""

    runs: list[Run]
    errors: list[str]


class RunStore:
    """The run directories directly under ``root``, loaded on demand and cached until a file changes.

    A run is named by its directory name. A name that is not a plain directory name (``..``, a path
    separator, an absolute path), or whose directory resolves outside ``root`` (a symlink leading out),
    is refused: the dashboard never reads anything else.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"runs root {root} is not a directory")
        self._cache: dict[str, tuple[tuple, Run]] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> Path:
        """The directory of run ``name``; ValueError when the name could lead outside the root."""
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"refused run name {name!r}: expected the name of a directory under the runs root")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise ValueError(f"refused run name {name!r}: it leads outside the runs root")
        return path

    def names(self) -> list[str]:
        """Names of the run directories under the root (those holding ``run.json``), sorted."""
        found = []
        for child in sorted(self.root.iterdir()):
            try:
                path = self.resolve(child.name)
            except ValueError:
                continue
            if (path / "run.json").is_file():
                found.append(child.name)
        return found

    def _signature(self, path: Path) -> tuple:
        files = [path / "run.json", *(path / f"{table}.parquet" for table in TABLES)]
        return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())

    def get(self, name: str) -> Run:
        """Load run ``name`` (from the cache when none of its files changed). Raises ValueError."""
        path = self.resolve(name)
        signature = self._signature(path)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == signature:
                return cached[1]
        run = load_run(path)
        with self._lock:
            self._cache[name] = (signature, run)
        return run

    def load(self, names: list[str] | None) -> Loaded:
        """Load several runs; each failure becomes a message instead of an exception."""
        runs, errors = [], []
        for name in names or []:
            try:
                run = self.get(name)
            except (ValueError, OSError) as error:
                errors.append(f"{name}: {error}")
                continue
            runs.append(run)
            if run.status == "failed":
                errors.append(f"{name}: the run failed: {run.info.get('error')}")
        return Loaded(runs, errors)
