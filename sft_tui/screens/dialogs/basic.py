"""The plain dialogs: a yes/no question, an error with its hint, and a path to act on.

What they say often quotes a file (a run folder's name, its engine's host, a data set's columns,
an engine's output): it is shown with its control characters escaped (sft_tui.format.safe) and
no markup read from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from core.errors import UserError
from core.events import RunFailed
from sft_tui.error_log import write_traceback
from sft_tui.format.safe import safe_text
from sft_tui.screens.dialogs.form import FormDialog
from sft_tui.widgets.paths import PathInput


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel", id="cancel")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(safe_text(self.question), classes="dialog-text", markup=False)  # wraps: a Label cut it
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button(self.no, variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ErrorDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close")]

    def __init__(self, title: str, message: str, hint: str = "", detail: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.message, self.hint, self.detail = safe_text(message), safe_text(hint), safe_text(detail)

    @classmethod
    def for_error(cls, title: str, error: BaseException, log: Path, what: str) -> ErrorDialog:
        """A UserError's message and hint; any other exception is a bug: its traceback goes to
        `log` (see sft_tui.error_log), which the dialog names."""
        if isinstance(error, UserError):
            return cls(title, error.message, error.hint)
        log_file = write_traceback(error, log, what)
        return cls("Unexpected error" if title == "Error" else title, f"{type(error).__name__}: {error}",
                   "the app keeps running; this looks like a bug, please report it"
                   + (" with the traceback" if log_file else ""),
                   f"traceback: {log_file}" if log_file else "")

    @classmethod
    def for_run_failed(cls, failed: RunFailed) -> ErrorDialog:
        """The engine's account of a failed run: its message and hint, the file with the traceback
        (unless the hint names it) and the checkpoint a resume would start from."""
        detail = [f"traceback: {failed.log_file}"] if failed.log_file and failed.log_file not in failed.hint else []
        if failed.last_checkpoint:
            detail.append(f"last checkpoint: {failed.last_checkpoint} (R resumes from it)")
        return cls("Training failed", failed.message, failed.hint, "\n".join(detail))

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.message, classes="dialog-text", markup=False)
            if self.hint:
                yield Static(f"hint: {self.hint}", classes="dialog-hint", markup=False)
            if self.detail:
                yield Static(self.detail, classes="dialog-detail", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


class PathDialog(FormDialog[Path]):
    """Asks for a path and acts on it (save or load a config, pick a run to resume); answers the
    path, or None when cancelled.

    The dialog runs `perform(path)` itself and stays open when it raises a UserError or an OSError,
    showing the message under the input: a YAML syntax error (with its line), an unknown field, an
    unwritable folder or a folder that is not a run is fixed in place instead of starting over.
    With `confirm_overwrite`, an existing file is replaced only after a yes.
    """

    def __init__(self, title: str, verb: str, path: str, perform: Callable[[Path], object], *,
                 explanation: str = "", placeholder: str = "", confirm_overwrite: bool = False) -> None:
        super().__init__()
        self.title_text, self.verb, self.path, self.perform = title, verb, path, perform
        self.explanation, self.placeholder, self.confirm_overwrite = explanation, placeholder, confirm_overwrite

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.explanation:
                yield Static(self.explanation, classes="dialog-text")
            yield PathInput(self.path, placeholder=self.placeholder, id="path-input")
            yield from self.compose_error_and_buttons(self.verb)

    def act(self) -> None:
        text = self.query_one(Input).value.strip()
        if not text:
            self.show_error(f"type a path{f' ({self.placeholder})' if self.placeholder else ''}")
            return
        path = Path(text).expanduser()
        if self.confirm_overwrite and path.is_file():
            self.app.push_screen(ConfirmDialog(f"{path} exists. Replace it?", yes="Replace", no="Keep it"),
                                 lambda replace: replace and self._perform(path))
        else:
            self._perform(path)

    def _perform(self, path: Path) -> None:
        try:
            self.perform(path)
        except UserError as err:
            self.show_error(err)
        except OSError as err:
            self.show_error(f"cannot {self.verb.lower()} {path}: {err.strerror or err}")
        else:
            self.dismiss(path)
