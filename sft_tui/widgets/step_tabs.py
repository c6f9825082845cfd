"""The row of steps under the draft bar: where you are, and the key that goes to each step."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class StepTabs(Static):
    DEFAULT_CSS = """
    StepTabs { height: 1; padding: 0 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def on_mount(self) -> None:
        """The keys shown are those in effect: the user's keymap may have moved them. (Help, quit
        and the palette are pinned in the footer.)"""
        from sft_tui.app import STEPS
        from sft_tui.keymap import first_key_label

        keys = {binding.id: first_key_label(binding, self.app.keymap)
                for binding in self.app.BINDINGS}
        text = Text()
        for name, label in STEPS:
            style = "reverse bold" if name == self.current else ""
            text.append(f" {keys[f'go-{name}']} {label} ", style=style)
            text.append(" ")
        self.update(text)
