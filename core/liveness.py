"""Is the process that wrote a record still the same process? A pid alone cannot say: pids are
reused, and a crashed engine's pid may belong to an unrelated process a day later. A record holds
the pid with its start time (psutil's create_time) and host, and counts as alive only while a
process with that pid and that start time runs on this host.

The engine records itself in its run folder (engine.json); a controlling client records itself in
controller.json. Both are read by clients that never import torch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

START_TIME_TOLERANCE_S = 0.05
"""psutil reports start times rounded to the clock tick (10 ms on Linux)."""


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
        """True while this very process runs. A record from another host cannot be checked from
        here: it counts as alive, so a client never takes over a run it cannot see."""
        if not self.here:
            return True
        try:
            process = psutil.Process(self.pid)
            started, status = process.create_time(), process.status()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False
        # a zombie has ended: only its parent (the app that started it) has not collected it yet
        return abs(started - self.create_time) < START_TIME_TOLERANCE_S and status != psutil.STATUS_ZOMBIE

    def describe(self) -> str:
        return f"pid {self.pid}" + ("" if self.here else f" on {self.host}")


def write_record(path: Path, record: ProcessRecord | None = None) -> ProcessRecord:
    """Write `record` (this process by default) to `path` atomically: a reader never sees half of it."""
    record = record or ProcessRecord.of_this_process()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(asdict(record)), encoding="utf-8")
    os.replace(temp, path)
    return record


def read_record(path: Path) -> ProcessRecord | None:
    """The record in `path`, or None when there is none or it cannot be read (a torn copy from
    another tool counts as none: its writer is not known)."""
    try:
        return ProcessRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def live_record(path: Path) -> ProcessRecord | None:
    """The record in `path` if its process still runs, else None."""
    record = read_record(path)
    return record if record is not None and record.alive() else None
