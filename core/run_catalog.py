"""The runs under a folder, re-read only where something changed: the runs screen asks every couple
of seconds, and core.run_info.list_runs reads every run's whole events.jsonl each time.

An ended run whose files are as they were keeps its RunInfo (its age is computed when asked); a
live run is read again each time, because its engine may have died without touching a file.
Torch-free, and safe to call from a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.run_info import RunInfo, read_run, run_roots
from core.runs import RunPaths


def _stamp(paths: RunPaths) -> tuple:
    """What changes when a run changes: its log, config, engine record, checkpoints and final model."""
    stamp = []
    for path in (paths.events, paths.config, paths.engine, paths.checkpoints, paths.final):
        try:
            stat = path.stat()
        except OSError:
            stamp.append(None)
        else:
            stamp.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamp)


class RunCatalog:
    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple, RunInfo]] = {}
        self._lock = threading.Lock()

    def read(self, runs_dir: str | Path) -> list[RunInfo]:
        """Every run folder under `runs_dir` (one with a config.yaml; anything else is skipped),
        the most recently active first, as core.run_info.list_runs orders and reads them (a folder
        that cannot be read as a run is one unreadable row)."""
        with self._lock:
            known, infos = {}, []
            for root in run_roots(runs_dir):
                stamp = _stamp(RunPaths(root))
                cached = self._known.get(root)
                info = cached[1] if cached and cached[0] == stamp and not cached[1].live else read_run(root)
                known[root] = (stamp, info)
                infos.append(info)
            self._known = known
        return sorted(infos, key=lambda info: info.updated, reverse=True)
