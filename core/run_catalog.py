"""The runs under a folder, re-read only where something changed: the runs screen asks every couple
of seconds, and core.run_info.list_runs reads every run's whole events.jsonl each time.

An ended run whose files are as they were keeps its RunInfo (its age is computed when asked). A
live run is asked about each time, because its engine may have died without touching a file, but
its log is followed: only what its engine appended is read (a day's log took 0.26 s to read whole,
every two seconds, beside the training). Torch-free, and safe to call from a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.follow import EventFollower
from core.liveness import live_record
from core.run_info import EventFold, RunInfo, read_run, run_roots
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
        self._followed: dict[Path, tuple[EventFollower, int, EventFold]] = {}
        """The live runs' followers, how many times each had started over, and their folds."""
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
                if cached and cached[0] == stamp and not cached[1].live:
                    info = cached[1]
                elif (cached and cached[1].live) or live_record(RunPaths(root).engine) is not None:
                    info = self._read_live(root)
                else:
                    info = read_run(root)
                known[root] = (stamp, info)
                infos.append(info)
            self._known = known
            self._followed = {root: kept for root, kept in self._followed.items()
                              if root in known and known[root][1].live}
        return sorted(infos, key=lambda info: info.updated, reverse=True)

    def _read_live(self, root: Path) -> RunInfo:
        try:
            fold = self._follow(root)
        except OSError:  # its log is no longer a regular file: read_run says what it is
            self._followed.pop(root, None)
            return read_run(root)
        return read_run(root, fold)

    def _follow(self, root: Path) -> EventFold:
        """The fold of a live run's log, fed what was appended since the last read; a new one when
        the log was replaced (a failed start taken over) or is read for the first time."""
        follower, starts, fold = self._followed.get(root) or (EventFollower(RunPaths(root).events), 0, None)
        new = follower.read_new()
        if fold is None or follower.starts != starts:
            fold = EventFold()
        fold.feed(new)
        self._followed[root] = (follower, follower.starts, fold)
        return fold
