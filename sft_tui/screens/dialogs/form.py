"""The base of the dialogs that take typed input and act on it: Enter or the primary button acts,
Esc or Cancel closes, and a failure is shown under the fields while the dialog stays open, so the
user fixes the value in place instead of typing it all again."""

from __future__ import annotations

from typing import TypeVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from core.errors import UserError
from sft_tui.format.safe import safe_text

Result = TypeVar("Result")


class FormDialog(ModalScreen[Result | None]):
    DEFAULT_CSS = """
    FormDialog { align: center middle; }
    FormDialog .form-error { color: $error; margin-top: 1; }
    FormDialog .form-error.-empty { display: none; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="dialog-cancel")]

    def compose_error_and_buttons(self, verb: str) -> ComposeResult:
        """The error line (hidden while empty) and the act / Cancel buttons, the last of the form."""
        yield Static("", classes="form-error -empty", markup=False)
        with Horizontal(classes="dialog-buttons"):
            yield Button(verb, variant="primary", id="go")
            yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.act()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "go":
            self.act()
        else:
            self.dismiss(None)

    def act(self) -> None:
        """Read the fields and dismiss with the result, or call show_error and stay open."""
        raise NotImplementedError

    @property
    def error(self) -> str:
        """The message of the last failure ("" when none)."""
        return str(self.query_one(".form-error", Static).content)

    def show_error(self, message: str | UserError) -> None:
        """The failure under the fields; it may quote the file acted on (a YAML line), so its control
        characters are escaped."""
        if isinstance(message, UserError):
            message = f"{message.message}\nhint: {message.hint}" if message.hint else message.message
        error = self.query_one(".form-error", Static)
        error.update(safe_text(message))
        error.set_class(not message, "-empty")
