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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from pydantic import TypeAdapter

from core.atomic import replace_text
from core.safe_read import read_small

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
        """True while this very process runs, as this user. A record from another host cannot be
        checked from here: it counts as alive, so a client never takes over a run it cannot see."""
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
    """The record in `path` if its process still runs, else None."""
    record = read_record(path)
    return record if record is not None and record.alive() else None
