"""What every step screen shares: the draft bar, the step tabs, the footer with its keys, and the
rules of typing: Esc leaves a form, and typing that misses its box runs no key."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Input, RadioButton, RadioSet, Select, Switch, TextArea

from sft_tui.widgets.draft_bar import DraftBar
from sft_tui.widgets.footer import StepFooter
from sft_tui.widgets.step_tabs import StepTabs

FORM_CONTROLS = (Input, TextArea, Button, Checkbox, RadioButton, RadioSet, Select, Switch)
"""Widgets of a form: text boxes, and the buttons, checkboxes and choices beside them."""


CATCH_UP_DELAY_S = 0.3
"""How long a hidden step waits after its last change before it is laid out off screen: changes
that come together (a load's results) are laid out once."""


class StepScreen(Screen):
    _catch_up = None
    """The timer of the hidden step's pending layout (_on_idle)."""
    STEP = ""
    """The name of this step in sft_tui.app.STEPS."""
    BINDINGS = [
        Binding("escape", "leave_form", "Leave the form", id="leave-form", priority=True,
                tooltip="Take the focus out of the text box or form, so that the number keys switch steps again"),
    ]
    """Esc is a priority binding: the app runs it as it reads the key, before it hands the next key
    to the focused box. Handed to the box first, Esc left the form only once it had bubbled back up,
    and at start-up, while torch loads and the loop lags by seconds, the 3 of a quick `Esc 3` was
    typed into the model's path box by then."""

    def compose(self) -> ComposeResult:
        yield DraftBar()
        yield StepTabs(self.STEP)
        yield from self.compose_body()
        yield StepFooter()

    def compose_body(self) -> ComposeResult:
        """The step's own widgets, between the tabs and the footer."""
        raise NotImplementedError

    @property
    def session(self):
        return self.app.session

    def check_message_enabled(self, message: Message) -> bool:
        """A step built ahead of its first visit (StepPrebuild.prebuild_steps) takes no ScreenResume until
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

    async def _on_idle(self, event: events.Idle) -> None:
        """A step built but hidden whose widgets asked for a new layout (the data loaded while the
        user was elsewhere, and the hyper step's preview grew) is laid out now, off screen, rather
        than on the key that shows it: Textual lays out only the current screen. Not while a run
        trains, when hidden steps change by the second and the CPU is the run's."""
        if (not self.is_current and self._layout_required and self._compositor.size
                and self._catch_up is None and not self.app.run_state.live):
            self._catch_up = self.set_timer(CATCH_UP_DELAY_S, self._lay_out_hidden)
        await super()._on_idle(event)

    def _lay_out_hidden(self) -> None:
        self._catch_up = None
        if self.is_current or not self._layout_required or not self.is_attached:
            return
        self._refresh_layout(self.app.size)
        self._layout_required = False
        self._dirty_widgets.clear()
        self._compositor.render_full_update()  # fills the line caches the first frame will draw from

    def _screen_resized(self, size) -> None:
        """Textual lays a screen out in full on every switch to it, as if the terminal had been
        resized. A step already laid out at this size (built ahead, or seen before) needs none:
        what changed while it was hidden asked for its own layout, which runs when it is shown."""
        if self._compositor.size != size:
            super()._screen_resized(size)

    def unapplied(self) -> str:
        """What this step's form shows that the draft does not have yet (typed, not loaded), named
        for the quit question, or "" when the form shows the draft."""
        return ""

    @property
    def in_form(self) -> bool:
        """The focus is on a text box, or on a button, checkbox or choice of a form."""
        focused = self.focused
        return focused is not None and any(isinstance(node, FORM_CONTROLS) for node in focused.ancestors_with_self)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        """Typing meant for a text box that lands on a button or checkbox beside it (a model id
        typed after a Tab) must not switch steps, quit or open the help: while the focus is in a
        form, the app's printable keys are left alone. F1, ctrl+q and ctrl+p still work, and Esc
        leaves the form. (Textual drops the bindings of the nodes above one that consumes a key.)"""
        return character is not None and character.isprintable() and self.in_form

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Esc shows in the footer only while there is a form to leave, and an open drop-down list
        keeps it: there it closes the list (Select's own binding)."""
        if action != "leave_form":
            return True
        return self.in_form and not any(isinstance(node, Select) and node.expanded
                                        for node in self.focused.ancestors_with_self)

    def action_leave_form(self) -> None:
        self.set_focus(None)
