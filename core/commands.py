"""The control channel of a run folder: how a client tells a detached engine to pause, resume,
stop, save a checkpoint now or evaluate now.

A command is one small file in the run's `commands/` folder, written to a temporary name and
renamed, so the engine never reads half of one. The engine looks at the folder between optimizer
steps (at most every POLL_S seconds, and while paused), applies the commands in the order they
were sent and deletes them. A control file suits the engine's loop, which acts only between steps
anyway: there is no server thread in the engine, nothing to reconnect after a client dies, it works
the same for every client at once, and a file left by a crash is just removed when the next engine
starts: a command older than the engine process is skipped. The engine's answer is an event in events.jsonl (Paused, Resumed,
CheckpointSaved, EvalResult, RunFinished), which every client follows.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from core.control import Control

COMMANDS = ("pause", "resume", "stop", "save", "eval")
POLL_S = 0.1
COMMAND_FILE = re.compile(rf"\d{{20}}-\d+-({'|'.join(COMMANDS)})\.json")
"""The name send_command gives a command; the engine reads and deletes files of this name only."""


def send_command(folder: Path, command: str) -> None:
    """Queue `command` for the engine of the run whose commands folder is `folder`."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
    folder.mkdir(exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{command}"
    temp = folder / f".{name}.tmp"
    temp.write_text(json.dumps({"command": command, "pid": os.getpid()}), encoding="utf-8")
    os.replace(temp, folder / f"{name}.json")


class FolderControl(Control):
    """A Control fed by the run folder's commands, as well as by the engine's own process
    (signal handlers still call stop())."""

    def __init__(self, folder: Path) -> None:
        import psutil

        super().__init__()
        self.folder = folder
        self._next_poll = 0.0
        self._born_ns = int(psutil.Process().create_time() * 1e9)
        """Commands sent before this engine started were meant for one before it (crashed)."""

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + POLL_S
        if self.folder.is_symlink():  # not the run's own folder: its files are not commands, nor ours to delete
            return
        try:
            names = sorted(p.name for p in os.scandir(self.folder) if COMMAND_FILE.fullmatch(p.name))
        except FileNotFoundError:
            return
        for name in names:
            sent_ns, _, rest = name.partition("-")
            command = rest.rsplit("-", 1)[-1].removesuffix(".json")
            if int(sent_ns) >= self._born_ns - 10_000_000:  # sent after this engine started (10 ms ticks)
                self.apply(command)
            (self.folder / name).unlink(missing_ok=True)
