"""Following a run's events.jsonl as the engine appends to it: what every client of a detached
run reads (the app, `sft-tui attach`, the runs screen)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from core.events import HISTORY_STEPS, Event, parse_event_lines
from core.safe_read import open_regular

HEAD_BYTES = 256


class EventFollower:
    """Reads the events appended to `path` since the last call.

    Only whole lines are read: the engine's line being written is left for the next call. A file
    replaced under the same name (a failed start taken over by a new one) is read again from its
    start: it is known by its first bytes, since a new file may get the old one's inode number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._head = b""
        self.starts = 0
        """How many times it has read the file from its start: once, and again for each new file."""

    def read_new(self) -> list[Event]:
        """The whole lines appended since the last call; OSError where the log is no regular file
        (core.safe_read: a FIFO put there would hang the reader)."""
        try:
            with open_regular(self.path) as f:
                head = f.read(HEAD_BYTES)
                if head[: len(self._head)] != self._head or len(head) < len(self._head):
                    self._offset = 0
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        history = self._offset == 0  # the run so far, of which a client needs only some step reports
        if history:
            self.starts += 1
            self._head = head[:end] if end < HEAD_BYTES else head
        self._offset += end
        return parse_event_lines(chunk[:end].splitlines(), HISTORY_STEPS if history else None)


def follow(follower: EventFollower, engine_alive: Callable[[], bool], poll_s: float,
           cancelled: Callable[[], bool] = lambda: False) -> Iterator[tuple[list[Event], bool]]:
    """What an engine appends, batch by batch, each with whether the engine still ran; the last
    batch is the one read after it ended (or nothing more comes once `cancelled`). The engine is
    asked about before each read, so that last batch holds everything it wrote before it ended."""
    while not cancelled():
        alive = engine_alive()
        yield follower.read_new(), alive
        if not alive:
            return
        time.sleep(poll_s)
