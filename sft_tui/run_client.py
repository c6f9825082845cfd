"""The app's side of the run it follows: where the run's events come from, where its commands go,
and whether this app may send them.

A run trains in an engine process of its own (sft_tui.detach) that the app follows through the run
folder: events.jsonl in, command files out (core.follow, core.commands). With `--in-process` it
trains in a thread of the app instead, and the same commands go straight to its core.control.Control.
The train screen sees no difference: both deliver engine events as messages and take commands here.

One client controls a run, any number view it: the controller records itself in the run folder's
controller.json (core.liveness), and a client that finds the live record of another is a viewer,
whose commands are off. A record whose process has died is stale and taken over.

Cheap to import: no torch (the app's UI thread uses it).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from core.commands import send_command
from core.control import Control
from core.events import Event
from core.follow import EventFollower
from core.liveness import Heartbeat, ProcessRecord, live_record, read_record, write_record
from core.runs import RunPaths

ENGINE_LOG_TAIL = 2000
"""Characters of engine.log shown when an engine ended before it wrote its first event."""


class RunClient:
    """A run in a detached engine: followed through its folder `paths`. `process` is the engine
    when this app started it (its exit is seen at once, before any record is written)."""

    in_process = False

    def __init__(self, paths: RunPaths | None, process: subprocess.Popen | None = None, *,
                 fresh: bool = False) -> None:
        self.paths = paths
        self.process = process
        self.follower = EventFollower(paths.events) if paths is not None else None
        """Reads the run's events.jsonl: its history first, then what the engine appends."""
        self.since = time.time()
        self.fresh = fresh
        """A new run: events in its folder older than `since` belong to a start it replaced."""
        self.controller: ProcessRecord | None = None
        """Another client that controls the run (this app is a viewer); None when this app does."""
        self._record: ProcessRecord | None = None
        self._heartbeat: Heartbeat | None = None

    @property
    def controls(self) -> bool:
        return self._record is not None

    def read_history(self) -> list[Event]:
        """What the run has written so far (a new run has no history)."""
        return [] if self.fresh or self.follower is None else self.follower.read_new()

    def claim(self) -> None:
        """Control the run unless another live client does."""
        current = live_record(self.paths.controller)
        if current is not None and current != self._record:
            self.controller = current
            return
        self.controller, self._record = None, write_record(self.paths.controller)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._heartbeat = Heartbeat(self.paths.controller, self._record)  # for a viewer on another host

    def take_over(self) -> bool:
        """A viewer's look at its controller: when that client has gone, control the run in its
        place; whether this client controls it now."""
        if self.controller is not None and live_record(self.paths.controller) is None:
            self.claim()
        return self.controls

    def release(self) -> None:
        """Stop controlling the run (another client may take over); its record is removed if it is ours."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._record is not None and read_record(self.paths.controller) == self._record:
            self.paths.controller.unlink(missing_ok=True)
        self._record = self._heartbeat = None

    def leave(self) -> None:
        """The app stops following the run, which trains on. An engine this app started is waited
        for in the background: once it ends it must not linger as a zombie child that other
        clients would take for a live engine."""
        self.release()
        if self.process is not None and self.process.poll() is None:
            threading.Thread(target=self.process.wait, name="engine-reaper", daemon=True).start()

    def send(self, command: str) -> None:
        """pause, resume, stop, save or eval; the engine answers with an event."""
        if self.controls:
            send_command(self.paths.commands, command)

    def engine_alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return live_record(self.paths.engine) is not None

    def engine_log_tail(self) -> str:
        try:
            text = self.paths.engine_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-ENGINE_LOG_TAIL:].strip()


class InProcessClient(RunClient):
    """A run in a thread of this app: it cannot outlive the app, and this app controls it. Its
    folder is known at once for a resume, else once the engine has claimed it (RunStarted); other
    clients then find it controlled. Its events come from the engine's sink, not from its folder."""

    in_process = True

    def __init__(self, control: Control, resume_dir: str | Path | None = None) -> None:
        super().__init__(RunPaths(Path(resume_dir)) if resume_dir is not None else None)
        self.control = control

    def found(self, run_dir: str | Path) -> None:
        self.paths = RunPaths(Path(run_dir))
        self.claim()

    @property
    def controls(self) -> bool:
        return True

    def release(self) -> None:
        if self.paths is not None:
            super().release()

    def send(self, command: str) -> None:
        self.control.apply(command)
