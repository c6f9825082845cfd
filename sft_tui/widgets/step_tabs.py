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
        from sft_tui.app import STEPS

        text = Text()
        for i, (name, label) in enumerate(STEPS, 1):
            style = "reverse bold" if name == self.current else ""
            text.append(f" {i} {label} ", style=style)
            text.append(" ")
        text.append("   ? help  ^p commands", style="dim")
        self.update(text)
