"""The dialog of `n` on the runs screen: how much longer to train a finished run."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from core.config import RunConfig
from core.errors import UserError
from sft_tui.format.safe import safe_text
from sft_tui.screens.dialogs.form import FormDialog

UNITS = ("epochs", "steps")


class ContinueDialog(FormDialog[RunConfig]):
    """Asks for an amount and a unit (epochs or steps), and the peak learning rate, and builds the
    continued run's config with `build(epochs, max_steps, lr)`, one of the first two None; it answers
    the config, or None when cancelled. A bad value, or a config the build refuses, is shown under
    the inputs to fix in place."""

    DEFAULT_CSS = """
    ContinueDialog #continue-row, ContinueDialog #continue-lr-row { height: auto; }
    ContinueDialog #continue-amount, ContinueDialog #continue-lr { width: 16; }
    ContinueDialog #continue-lr-row Label { padding: 1 1 0 0; }
    ContinueDialog RadioSet { layout: horizontal; height: auto; }
    """

    def __init__(self, run_name: str, build: Callable[[float | None, int | None, float], RunConfig], lr: float,
                 unit: str = "epochs", amount: str = "1") -> None:
        super().__init__()
        self.run_name, self.build, self.lr, self.unit, self.amount = run_name, build, lr, unit, amount

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Continue run {safe_text(self.run_name, one_line=True)}", classes="dialog-title",
                        markup=False)  # the run's name is its folder's
            yield Static("A new run trains this run's final model further, in a folder of its own that "
                         "names this run as its parent. Its optimizer and schedule start afresh: a warmup, "
                         "then the learning rate below (the parent's); a lower one keeps more of what the "
                         "parent learned. How much more?", classes="dialog-text")
            with Horizontal(id="continue-row"):
                yield Input(self.amount, id="continue-amount")
                with RadioSet(id="continue-unit"):
                    for unit in UNITS:
                        yield RadioButton(unit, value=unit == self.unit, id=f"unit-{unit}")
            with Horizontal(id="continue-lr-row"):
                yield Label("learning rate")
                yield Input(f"{self.lr:g}", id="continue-lr")
            yield from self.compose_error_and_buttons("Continue")

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.unit = UNITS[event.index]

    def act(self) -> None:
        text = self.query_one("#continue-amount", Input).value.strip()
        try:
            amount = float(text) if self.unit == "epochs" else int(text)
        except ValueError:
            self.show_error(f"type a {'number' if self.unit == 'epochs' else 'whole number'} of {self.unit}, "
                            f"e.g. {'1 or 0.5' if self.unit == 'epochs' else '100'}")
            return
        try:
            lr = float(self.query_one("#continue-lr", Input).value)
        except ValueError:
            self.show_error(f"type a learning rate, e.g. {self.lr / 10:g}")
            return
        try:
            config = self.build(amount, None, lr) if self.unit == "epochs" else self.build(None, amount, lr)
        except UserError as err:
            self.show_error(err)
            return
        self.dismiss(config)
