"""Commands from a front end to a running engine: pause, resume, stop, save now, evaluate now.

Cooperative by design: the engine polls between optimizer steps, so a command never interrupts a
half-done step and a stop always ends with consistent weights, optimizer and data position.
Thread-safe: the app's UI thread and a signal handler set flags; the training thread reads them.
"""

from __future__ import annotations

import threading


class Control:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._save = threading.Event()
        self._eval = threading.Event()

    def stop(self) -> None:
        """Finish the current step, save a checkpoint, end the run with RunFinished(reason=stopped)."""
        self._stop.set()
        self._running.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def save_now(self) -> None:
        self._save.set()

    def eval_now(self) -> None:
        self._eval.set()

    def apply(self, command: str) -> None:
        """A command by name, as clients send them (core.commands.COMMANDS)."""
        {"pause": self.pause, "resume": self.resume, "stop": self.stop, "save": self.save_now,
         "eval": self.eval_now}[command]()

    def poll(self) -> None:
        """Called by the engine between optimizer steps: a control fed from outside the process
        (core.commands.FolderControl) reads its commands here. This one is set directly."""

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def should_stop(self, step: int) -> bool:
        """Polled by the engine after optimizer step `step`; subclasses may stop at a chosen step."""
        return self._stop.is_set()

    def take_save_request(self) -> bool:
        """True once per save_now() call."""
        if self._save.is_set():
            self._save.clear()
            return True
        return False

    def take_eval_request(self) -> bool:
        """True once per eval_now() call."""
        if self._eval.is_set():
            self._eval.clear()
            return True
        return False

    def wait_while_paused(self, poll_s: float = 0.1) -> bool:
        """Block the training thread while paused. False once it runs again (or stops); True, still
        paused, when a save or an evaluation was asked meanwhile: a paused run does those at once
        (waiting for a resume, "checkpoint now" once saved nothing until then)."""
        while self.paused:
            self.poll()
            if self._save.is_set() or self._eval.is_set():
                return True
            self._running.wait(poll_s)
        return False
