"""Names and paths cut to a width, which is often known only when they are drawn (80 columns over
SSH, or 200): a name loses its middle, a path its start."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

ELLIPSIS = "…"
MIN_PATH = 20
"""Fewer characters of a path than this say too little: below it the path keeps a line of its own
and the words after it wrap onto the next."""


def cut_middle(name: str, width: int) -> str:
    """`SmolLM2-1…nstruct`: both ends of a long name in at most `width` characters, which is where
    names differ (a run's: the time it started and the end of its model's name)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + ELLIPSIS + name[len(name) - (width - 1 - head):]


def tail(path: str, width: int) -> str:
    """`path` in at most `width` characters, losing its start: the file name and the folders
    nearest it say which file it is, where Rich's own overflow would cut those."""
    if len(path) <= width:
        return path
    return ELLIPSIS + path[len(path) - width + 1:]


class TailPath:
    """A path and the words after it (`data.jsonl · format auto`), fitted to the line when drawn:
    whole if it fits, else the path shortened from its start so that the row stays one line."""

    def __init__(self, path: str, after: str = "") -> None:
        self.path, self.after = path, after

    def fitted(self, width: int) -> str:
        if len(self.path) + len(self.after) <= width:
            return self.path + self.after
        room = width - len(self.after)
        if room < min(MIN_PATH, len(self.path)):
            room = width
        return tail(self.path, room) + self.after

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.fitted(options.max_width))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(MIN_PATH, len(self.path)), len(self.path) + len(self.after))
