"""Is the process that wrote a record still the same process? A pid alone cannot say: pids are
reused, and a crashed engine's pid may belong to an unrelated process a day later. A record holds
the pid with its start time (psutil's create_time) and host, and counts as alive only while a
process with that pid and that start time runs on this host, as this user: in a shared runs folder,
another user's process named in a planted record is not this user's engine.

The engine records itself in its run folder (engine.json); a controlling client records itself in
controller.json. Both are read by clients that never import torch.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from pydantic import TypeAdapter

from core.atomic import replace_text
from core.safe_read import read_small

START_TIME_TOLERANCE_S = 0.05
"""psutil reports start times rounded to the clock tick (10 ms on Linux)."""
HEARTBEAT_S = 30.0
"""How often a live engine or controlling client touches its record (Heartbeat): the one sign of
life that another host sharing the runs folder can read, where a pid cannot be checked."""
REMOTE_SILENCE_S = 300.0
"""A record from another host that has not been touched for this long is of a process gone (its
host crashed or lost the shared folder): ten heartbeats missed, room for clocks that differ."""


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float
    host: str
    since: float
    """When the record was written (Unix time): how long an engine has run, or a client controlled."""

    @classmethod
    def of_this_process(cls) -> ProcessRecord:
        return cls.of_process(os.getpid())

    @classmethod
    def of_process(cls, pid: int) -> ProcessRecord:
        return cls(pid, psutil.Process(pid).create_time(), socket.gethostname(), time.time())

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """True while this very process runs, as this user. A record from another host cannot be
        checked from here: it counts as alive (live_record asks its heartbeat instead)."""
        if not self.here:
            return True
        try:
            process = psutil.Process(self.pid)
            started, status, uid = process.create_time(), process.status(), process.uids().real
        except (psutil.Error, ValueError):
            return False
        # a zombie has ended: only its parent (the app that started it) has not collected it yet
        return (uid == os.getuid() and abs(started - self.create_time) < START_TIME_TOLERANCE_S
                and status != psutil.STATUS_ZOMBIE)

    def describe(self) -> str:
        return f"pid {self.pid}" + ("" if self.here else f" on {self.host}")


_RECORD = TypeAdapter(ProcessRecord)
"""A record's fields checked against their types, strictly: sft-tui writes them exactly so."""


def write_record(path: Path, record: ProcessRecord | None = None) -> ProcessRecord:
    """Write `record` (this process by default) to `path` atomically: a reader never sees half of it."""
    record = record or ProcessRecord.of_this_process()
    replace_text(path, json.dumps(asdict(record)))
    return record


def read_record(path: Path) -> ProcessRecord | None:
    """The record in `path`, or None when there is none or it cannot be read: a torn copy, a field
    of the wrong type (`"pid": "1"` would fail comparisons far from here) or a file that is no
    regular one (a FIFO would hang the reader) all count as none, since their writer is not known."""
    try:
        return _RECORD.validate_json(read_small(path), strict=True)
    except (OSError, ValueError):  # ValidationError and UnicodeDecodeError are ValueErrors
        return None


def live_record(path: Path) -> ProcessRecord | None:
    """The record in `path` if its process still runs, else None. One from another host is live
    while its Heartbeat keeps the file fresh: its pid means nothing here, and counting it alive for
    good left a run whose host had crashed "training" everywhere else, its resume refused."""
    record = read_record(path)
    if record is None or not record.alive():
        return None
    if not record.here:
        try:
            if time.time() - path.stat().st_mtime > REMOTE_SILENCE_S:
                return None
        except OSError:
            return None
    return record


class Heartbeat:
    """Touches a process's record every HEARTBEAT_S while it holds it (an engine its run, a client
    its control), from a daemon thread: a step, an evaluation or a save that takes minutes does not
    stop it, and the process's end does. It stops by itself once the record is another's or gone."""

    def __init__(self, path: Path, record: ProcessRecord) -> None:
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, args=(path, record), name=f"heartbeat-{path.name}", daemon=True).start()

    def _beat(self, path: Path, record: ProcessRecord) -> None:
        while not self._stopped.wait(HEARTBEAT_S) and read_record(path) == record:
            try:
                os.utime(path, follow_symlinks=False)
            except OSError:
                return

    def stop(self) -> None:
        self._stopped.set()
