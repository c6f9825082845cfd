"""A run as one row of a table, the same in `sft-tui runs` and in the app's runs screen."""

from __future__ import annotations

from core.run_info import RunInfo
from sft_tui.format.numbers import format_metric

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
    return info.state


def run_row(info: RunInfo) -> tuple[str, ...]:
    """Cells in COLUMNS order."""
    step = f"{info.step}/{info.planned_steps}" if info.planned_steps else str(info.step or "-")
    best = f"{info.best[0]} {format_metric(info.best[1])} @{info.best[2]}" if info.best else "-"
    return (info.name, state_text(info), step, best, format_age(info.age_s),
            info.parent.name if info.parent else "-")
