"""How a model or data load stands, the same way on the steps that load something: a spinner and
what is loading, ✓ or ✗ with the name, and a failed load's error with its hint in place."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from sft_tui.format.safe import safe_text
from sft_tui.widgets.error_line import ErrorLine
from sft_tui.widgets.spinner import Spinner


class LoadStatus(Vertical):
    """The parts are `#KIND-status-row` (`#KIND-spinner`, `#KIND-status`) and `#KIND-error`, for the
    screen's stylesheet; the ErrorLine shows the form's own errors too (`error`)."""

    DEFAULT_CSS = """
    LoadStatus { height: auto; }
    """

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def compose(self) -> ComposeResult:
        with Horizontal(id=f"{self.kind}-status-row"):
            yield Spinner(id=f"{self.kind}-spinner")
            yield Static(id=f"{self.kind}-status")
        yield ErrorLine(id=f"{self.kind}-error")

    def error(self, message: str | None, hint: str = "") -> None:
        self.query_one(ErrorLine).show(message, hint)

    def waiting(self, text: str) -> None:
        """Something to wait for before the load starts (it spins meanwhile)."""
        self._line(True, Text(text))

    def show(self, state: str, name: str, *, loading: tuple[str, str], ready: str, idle: str, error=None) -> None:
        """`state` of the app's model_state/data_state for `name`: loading (`loading` is the text
        around the name), ready (`ready` follows the name), failed (`error`: the session's
        LoadError), or anything else (`idle` says how to load). The name is a config's, shown with
        its control characters escaped."""
        name = safe_text(name, one_line=True)
        if state == "loading":
            self.error(None)
            self._line(True, Text.assemble(loading[0], (name, "bold"), loading[1]))
        elif state == "ready":
            self.error(None)
            self._line(False, Text.assemble(("✓ ", "green"), (name, "bold"), ready))
        elif state == "failed":
            self._line(False, Text.assemble(("✗ ", "red"), "could not load ", (name, "bold")))
            self.error(*((error.message, error.hint) if error else ("loading failed", "")))
        else:
            self._line(False, Text(idle, style="dim"))

    def _line(self, spinning: bool, text: Text) -> None:
        self.query_one(Spinner).spinning = spinning
        self.query_one(f"#{self.kind}-status", Static).update(text)
