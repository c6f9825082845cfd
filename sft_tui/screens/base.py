"""What every step screen shares: the draft bar, the step tabs and the footer with its keys."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.message import Message
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

    def check_message_enabled(self, message: Message) -> bool:
        """A step built ahead of its first visit (SftApp.prebuild_steps) takes no ScreenResume until
        it is shown: its resume handlers catch up with the session, start loads and timers, which
        are for a screen the user sees."""
        if isinstance(message, events.ScreenResume) and not self.is_current:
            return False
        return super().check_message_enabled(message)

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        """Show the step without restyling its every widget (Textual's default on a mode switch),
        which was most of what a step switch cost: while a step is hidden its styles can go stale
        only by a stylesheet or theme change, and switch_mode refreshes the CSS then. (Runs before
        Screen's own handler, which reads the flag.)"""
        event.refresh_styles = False
