"""The run's log pane: a RichLog that wraps its lines again when its width changes.

RichLog wraps a line once, when it is written; the train screen's panes change width when a run
ends (the results panel moves in) or the terminal is resized, and lines wrapped for the old width
would then be cut off at the edge. While hidden (small terminals) it has no width at all: lines
are kept and wrapped when it shows again.
"""

from __future__ import annotations

from collections import deque

from rich.console import Group
from rich.text import Text
from textual.widgets import RichLog


class RunLog(RichLog):
    DEFAULT_CSS = """
    RunLog { scrollbar-gutter: stable; }  /* the first lines wrap as narrow as the later ones */
    """

    def __init__(self, max_lines: int = 1000, **kwargs) -> None:
        super().__init__(max_lines=max_lines, wrap=True, min_width=1, **kwargs)
        self._texts: deque[Text] = deque(maxlen=max_lines)
        self._wrapped_for = 0

    def add(self, texts: list[Text]) -> None:
        """Add lines, written in one go: a run's history adds hundreds at once."""
        texts = texts[-self.max_lines:]
        self._texts.extend(texts)
        if self.size.width and self._wrapped_for == self.size.width:
            self.write(Group(*texts))
        else:
            self._wrapped_for = 0  # hidden or resizing: wrap everything at the next size

    def on_resize(self) -> None:
        width = self.size.width  # the event's size includes the border
        if width and width != self._wrapped_for:
            self._wrapped_for = width
            self.clear()
            self.write(Group(*self._texts))
