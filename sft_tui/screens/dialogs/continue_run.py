"""The dialog of `n` on the runs screen: how much longer to train a finished run."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from core.config import RunConfig
from core.errors import UserError

UNITS = ("epochs", "steps")


class ContinueDialog(ModalScreen[RunConfig | None]):
    """Asks for an amount and a unit (epochs or steps) and builds the continued run's config with
    `build(epochs, max_steps)`, one of them None; it answers the config, or None when cancelled.
    A bad amount, or a config the build refuses, is shown under the input to fix in place."""

    DEFAULT_CSS = """
    ContinueDialog { align: center middle; }
    ContinueDialog #continue-row { height: auto; }
    ContinueDialog #continue-amount { width: 16; }
    ContinueDialog RadioSet { layout: horizontal; height: auto; }
    ContinueDialog #continue-error { color: $error; margin-top: 1; }
    ContinueDialog #continue-error.-empty { display: none; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="continue-cancel")]

    def __init__(self, run_name: str, build: Callable[[float | None, int | None], RunConfig],
                 unit: str = "epochs", amount: str = "1") -> None:
        super().__init__()
        self.run_name, self.build, self.unit, self.amount = run_name, build, unit, amount

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Continue run {self.run_name}", classes="dialog-title")
            yield Static("A new run trains this run's final model further, in a folder of its own that "
                         "names this run as its parent. How much more?", classes="dialog-text")
            with Horizontal(id="continue-row"):
                yield Input(self.amount, id="continue-amount")
                with RadioSet(id="continue-unit"):
                    for unit in UNITS:
                        yield RadioButton(unit, value=unit == self.unit, id=f"unit-{unit}")
            yield Static("", id="continue-error", classes="-empty", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Continue", variant="primary", id="continue-go")
                yield Button("Cancel", id="continue-no")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @property
    def error(self) -> str:
        return str(self.query_one("#continue-error", Static).content)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._go()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "continue-go":
            self._go()
        else:
            self.dismiss(None)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.unit = UNITS[event.index]

    def _show_error(self, message: str) -> None:
        error = self.query_one("#continue-error", Static)
        error.update(message)
        error.set_class(not message, "-empty")

    def _go(self) -> None:
        text = self.query_one(Input).value.strip()
        try:
            amount = float(text) if self.unit == "epochs" else int(text)
        except ValueError:
            self._show_error(f"type a {'number' if self.unit == 'epochs' else 'whole number'} of {self.unit}, "
                             f"e.g. {'1 or 0.5' if self.unit == 'epochs' else '100'}")
            return
        try:
            config = self.build(amount, None) if self.unit == "epochs" else self.build(None, amount)
        except UserError as err:
            self._show_error(f"{err.message}\nhint: {err.hint}" if err.hint else err.message)
            return
        self.dismiss(config)
