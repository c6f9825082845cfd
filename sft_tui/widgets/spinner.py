"""A loading indicator that exists only while something loads.

Textual's LoadingIndicator redraws itself sixteen times a second from mount until it is removed,
whether it is hidden or on a screen nobody looks at. Three idle ones (model, data and freeze
screens) took about 5% of a core from a training run on the UI thread (bench/app_vs_headless.py).
A Spinner mounts its indicator when `spinning` turns on and removes it when it turns off, so an
idle one costs nothing; it is shown exactly while it spins.
"""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import LoadingIndicator, Static


class Spinner(Widget):
    DEFAULT_CSS = """
    Spinner { height: 1; }
    Spinner.-captioned { align: center middle; }
    Spinner.-captioned LoadingIndicator { height: 1; }
    Spinner .spinner-caption { width: 1fr; text-align: center; color: $text-muted; }
    """

    spinning: reactive[bool] = reactive(False)

    def __init__(self, caption: str = "", **kwargs) -> None:
        """`caption`: what is awaited, said under the dots where the spinner fills a pane."""
        super().__init__(**kwargs)
        self.caption = caption
        self.set_class(bool(caption), "-captioned")

    def watch_spinning(self, spinning: bool) -> None:
        self.display = spinning
        if spinning and not self.children:
            self.mount(LoadingIndicator())
            if self.caption:
                self.mount(Static(self.caption, classes="spinner-caption"))
        elif not spinning:
            self.remove_children()
