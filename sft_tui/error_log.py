"""Tracebacks of unexpected failures, written to a file the error dialog names.

The app owns the terminal: a traceback printed there is never seen, and one in a dialog is too long
to read or copy. The engine writes its own failures to the run folder's error.log; this covers
failures around it (a worker that fails before the engine's handling, a loader bug).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from core.atomic import no_follow

APP_ERROR_LOG = "sft-tui-error.log"
"""Where a failure that belongs to no run folder goes, inside output.runs_dir."""


def write_traceback(error: BaseException, path: Path, what: str) -> Path | None:
    """Append `error`'s traceback to `path` and answer the file written: `path`, or the same name in
    the user's cache folder when `path` cannot be written (a read-only runs_dir); None if neither can
    be. Not the shared temp folder, where another user could have put a link or a file of theirs under
    that name first; never through a link."""
    entry = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{''.join(traceback.format_exception(error))}\n"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sft-tui"
    for target in (path, cache / path.name):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8", opener=no_follow) as f:
                f.write(entry)
            return target
        except OSError:
            continue
    return None
