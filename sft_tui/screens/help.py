"""Every key binding of the app and of each step, in one table."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Label("Keys", classes="dialog-title")
            yield DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
            yield Label("Every key is also a command in the palette (ctrl+p). Esc closes.", classes="dialog-hint")

    def on_mount(self) -> None:
        from sft_tui.app import STEPS
        from sft_tui.screens import SCREENS

        table = self.query_one(DataTable)
        table.add_columns("where", "key", "what")
        for where, bindings in [("everywhere", self.app.BINDINGS)] + [
            (label, SCREENS[name].BINDINGS) for name, label in STEPS
        ]:
            for binding in bindings:
                if isinstance(binding, Binding) and binding.description:
                    table.add_row(where, self.app.get_key_display(binding), binding.description)
        table.focus()
