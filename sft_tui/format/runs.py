"""A run as one row of a table, the same in `sft-tui runs` and in the app's runs screen."""

from __future__ import annotations

from core.manifest import step_of
from core.run_info import RunInfo
from sft_tui.format.numbers import format_metric
from sft_tui.format.safe import safe_text

COLUMNS = ("run", "state", "step", "best", "age", "parent")
STATE_STYLES = {"running": "green", "starting": "green", "paused": "yellow", "finished": "bold",
                "stopped": "yellow", "failed": "red", "crashed": "bold red"}


def format_age(seconds: float) -> str:
    """`12s`, `5m`, `3h`, `2d`: how long ago a run last reported."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def state_text(info: RunInfo) -> str:
    """The state with what a user acts on: the engine's pid while it runs; how a run ended."""
    if info.engine is not None and info.live:
        return f"{info.state} (pid {info.engine.pid})" if info.engine.here else f"{info.state} ({info.engine.describe()})"
    if info.state == "finished" and info.reason == "early-stopped":
        return "finished (early-stopped)"
    if info.state == "unreadable":  # nothing else of the run can be shown: why, so it can be fixed
        return f"unreadable ({info.reason})"
    return info.state


def step_text(info: RunInfo) -> str:
    """`21/45`: the steps a run has, of those planned. A run that ended early (stopped, crashed,
    failed) has the steps its last checkpoint saved, where its resume starts: "crashed 21/45", its
    last logged step, read as a resume from step 21 of a run that resumes from 15 (or, without a
    checkpoint, starts again from 0)."""
    step = info.step
    if info.state in ("stopped", "crashed", "failed") and step:
        step = min(step, step_of(info.last_checkpoint) or 0) if info.last_checkpoint is not None else 0
    return f"{step}/{info.planned_steps}" if info.planned_steps else str(step or "-")


def run_row(info: RunInfo) -> tuple[str, ...]:
    """Cells in COLUMNS order, each one line. A run's name is its folder's, its host, reason and
    metric names come from its files: whoever can write in the runs folder chose them, so their
    control characters are escaped (sft_tui.format.safe); the callers show the cells as Text."""
    step = step_text(info)
    best = f"{info.best[0]} {format_metric(info.best[1], info.best[0])} @{info.best[2]}" if info.best else "-"
    cells = (info.name, state_text(info), step, best, format_age(info.age_s), info.parent.name if info.parent else "-")
    return tuple(safe_text(cell, one_line=True) for cell in cells)
