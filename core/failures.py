"""How a run that ends in failure says so: the RunFailed event of a bug (its traceback in the run's
error log) or of an abort, and an events file closed so that a full disk does not hide why.
core.engine decides which failure it is (the input's, the disk's, another process's); these tell it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from core.events import Broadcast, JsonlSink, RunFailed
from core.rank_failure import share_failure
from core.runs import RunPaths, how_to_go_on


def report_bug(err: Exception, paths: RunPaths, accelerator, out: Broadcast, step: int,
               last_checkpoint: Path | None) -> None:
    """Report an exception that is no fault of the input: another process's failure that broke a
    collective (raised as that one's UserError), else a bug, with its traceback in the error log."""
    if peer := share_failure(paths.root, accelerator.process_index, accelerator.num_processes, err):
        out.emit_failure(RunFailed(message=peer.message, hint=peer.hint, step=step,
                                   last_checkpoint=path_text(last_checkpoint)))  # `err`: the collective the peer broke
        raise peer from None
    log_file = write_traceback(paths) if accelerator.is_main_process else None
    out.emit_failure(RunFailed(message=f"{type(err).__name__}: {err}",
                               hint="this looks like a bug in sft-tui or a library"
                               + (f"; the traceback is in {log_file}" if log_file else ""),
                               last_checkpoint=path_text(last_checkpoint), step=step, log_file=path_text(log_file)))


def close_events(jsonl: JsonlSink) -> None:
    """Close the events file; on a full disk its last flush fails, which must not hide why the run ended."""
    with contextlib.suppress(OSError):
        jsonl.close()


def write_traceback(paths: RunPaths) -> Path | None:
    """Append the exception being handled to the run's error log, so a front end can name a file;
    None where it cannot be written (the disk is full: the message says what failed)."""
    import traceback

    from core.atomic import no_follow

    try:
        with open(paths.error_log, "a", encoding="utf-8", opener=no_follow) as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} step failure\n{traceback.format_exc()}\n")
    except OSError:
        return None
    return paths.error_log


def after_abort(paths: RunPaths, last_checkpoint: Path | None) -> str:
    """An aborted run is not a crash: it says how to go on, as a stopped one does."""
    lost = "the steps after the last checkpoint are lost" if last_checkpoint else "no checkpoint was saved yet"
    return f"{lost}; {how_to_go_on(paths, last_checkpoint is not None)}"


def path_text(path: Path | None) -> str | None:
    """A path as an event holds it: text, or None."""
    return str(path) if path else None
