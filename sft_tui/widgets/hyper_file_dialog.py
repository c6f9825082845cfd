"""A small dialog that asks for a YAML path and saves or loads the config there.

The dialog runs the save or load itself and stays open on failure, so a YAML syntax error (with its
line), an unknown field or an unwritable folder is read and fixed in place instead of crashing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from core.errors import UserError


class ConfigFileDialog(ModalScreen[Path | None]):
    """Returns the path that was saved or loaded, or None when cancelled."""

    DEFAULT_CSS = """
    ConfigFileDialog { align: center middle; }
    ConfigFileDialog #file-error { color: $error; margin-top: 1; }
    ConfigFileDialog #file-error.-empty { display: none; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="file-cancel")]

    def __init__(self, title: str, verb: str, path: str, perform: Callable[[Path], None]) -> None:
        """`perform(path)` saves or loads; a UserError or OSError it raises is shown in the dialog."""
        super().__init__()
        self.title_text, self.verb, self.path, self.perform = title, verb, path, perform

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.path, placeholder="path/to/config.yaml", id="file-path")
            yield Static("", id="file-error", classes="-empty", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.verb, variant="primary", id="file-go")
                yield Button("Cancel", id="file-cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._go()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "file-go":
            self._go()
        else:
            self.dismiss(None)

    @property
    def error(self) -> str:
        """The message of the last failure ("" when none)."""
        return str(self.query_one("#file-error", Static).content)

    def _go(self) -> None:
        text = self.query_one(Input).value.strip()
        error = self.query_one("#file-error", Static)
        if not text:
            error.update("type a path to a .yaml file")
            error.remove_class("-empty")
            return
        path = Path(text).expanduser()
        try:
            self.perform(path)
        except UserError as err:
            error.update(f"{err.message}\nhint: {err.hint}" if err.hint else err.message)
        except OSError as err:
            error.update(f"cannot {self.verb.lower()} {path}: {err.strerror or err}")
        else:
            self.dismiss(path)
            return
        error.remove_class("-empty")
