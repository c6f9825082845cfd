"""Why a process other than rank 0 failed, told to rank 0 through the run folder.

Under torchrun only rank 0 writes the run's events. When another process fails (out of memory with
micro-batches that cannot be halved there, say), rank 0 learns of it only as a broken collective
("Connection closed by peer"), which says nothing of why, and would report it as a bug. So the
failing process leaves its message and hint in the run folder before it exits, keyed by torchrun's
run id (a resumed run is another launch, so an old record is never taken for a new failure), and
rank 0 reports that message as the run's failure. Where rank 0 cannot (NCCL leaves it waiting
in the broken collective until torchrun or NCCL's timeout ends it, with no final event), the record
is still there: a client that finds the run crashed names the reason (`crash_reason`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.atomic import replace_text
from core.errors import UserError
from core.safe_read import read_small

PATTERN = "failed-rank-*.json"
"""Each failing process writes failed-rank-N.json in the run folder."""


def _launch() -> str:
    """The id torchrun gives one launch, the same in all its processes."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def share_failure(root: Path, rank: int, processes: int, err: Exception) -> UserError | None:
    """For the failure `err` of process `rank` of `processes`: the failure of the peer it follows (a
    broken collective is the peer's doing), or None once `err` is recorded for the peers to read
    (nothing to share in a one-process run). A UserError is this process's own, never a follower's."""
    if processes == 1:
        return None
    user = isinstance(err, UserError)
    if not user and (peer := peer_failure(root, rank)):
        return UserError(f"process {peer['rank']} of {processes}: {peer['message']}", peer["hint"])
    record_failure(root, rank, err.message if user else f"{type(err).__name__}: {err}",
                   err.hint if user else "this looks like a bug in sft-tui or a library; its traceback is in that "
                   "process's output (engine.log for a detached run)", user=user)
    return None


def record_failure(root: Path, rank: int, message: str, hint: str, *, user: bool) -> None:
    """Leave this process's failure where rank 0 looks (atomically: a reader never sees half of it).
    `user`: a problem the user can fix (a UserError), rather than a bug or a broken collective."""
    try:
        replace_text(root / f"failed-rank-{rank}.json",
                     json.dumps({"launch": _launch(), "rank": rank, "message": message, "hint": hint, "user": user}))
    except OSError:
        pass  # the folder is gone or full: rank 0 then reports the broken collective as it is


def peer_failure(root: Path, rank: int, wait_s: float = 2.0) -> dict | None:
    """The failure another process than `rank` recorded in this launch, waiting up to `wait_s` for
    one (a collective can break a moment before the peer's record lands)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = _first(r for r in _records(root) if r.get("launch") == _launch() and r.get("rank") != rank)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def crash_reason(root: Path, since: float) -> str:
    """What a process recorded of its failure in the run's start at `since` (Unix time; a record
    older than that is a previous start's): "process N: message", or empty without one."""
    found = _first(_records(root, since))
    return f"process {found.get('rank')}: {found.get('message')}" if found else ""


def _records(root: Path, since: float = 0.0):
    """The failure records in the run folder written at `since` or later; torn or unreadable ones
    (a FIFO, which would hang every client listing runs) skipped."""
    for path in root.glob(PATTERN):
        try:
            if path.stat().st_mtime >= since:
                yield json.loads(read_small(path))
        except (OSError, ValueError):
            continue


def _first(records) -> dict | None:
    """The failure that explains the others: a problem the user can fix before a bug (a failing
    process breaks its peers' collectives too, and they record that), then the lowest rank."""
    return min(records, key=lambda r: (not r.get("user"), r.get("rank", 0)), default=None)
