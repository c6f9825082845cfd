"""What every step screen shares: the draft bar, the step tabs and the footer with its keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from sft_tui.widgets.draft_bar import DraftBar
from sft_tui.widgets.step_tabs import StepTabs


class StepScreen(Screen):
    STEP = ""
    """The name of this step in sft_tui.app.STEPS."""

    def compose(self) -> ComposeResult:
        yield DraftBar()
        yield StepTabs(self.STEP)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """The step's own widgets, between the tabs and the footer."""
        raise NotImplementedError

    @property
    def session(self):
        return self.app.session
