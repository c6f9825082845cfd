"""Before a run: what Start would train, what still blocks it, and the dialog that picks a run
folder to resume."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from core.runs import CONFIG_FILE
from sft_tui.widgets.train_format import draft_summary


class SetupPanel(Vertical):
    DEFAULT_CSS = """
    SetupPanel { height: auto; padding: 0 1; }
    SetupPanel #draft-summary, SetupPanel #draft-problems { height: auto; }
    SetupPanel #draft-problems { margin-top: 1; }
    SetupPanel #setup-buttons { height: auto; margin-top: 1; }
    SetupPanel #setup-buttons Button { margin-right: 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="draft-summary")
        yield Static(id="draft-problems")
        with Horizontal(id="setup-buttons"):
            yield Button("Start training  (s)", variant="success", id="start")
            yield Button("Resume a run…  (R)", id="resume")

    def redraw(self, session, live: bool) -> None:
        """Show the draft in `session`; Start is off while it has problems or a run is live."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        for label, value in draft_summary(session.config, session.trainable_share):
            table.add_row(label, value)
        self.query_one("#draft-summary", Static).update(table)
        problems = session.problems()
        text = Text()
        if problems:
            text.append(f"{len(problems)} problem(s) keep Start disabled:\n", style="bold red")
            for problem in problems:
                text.append(f"  • {problem}\n", style="red")
        else:
            text.append("no problems: ready to start", style="green")
        self.query_one("#draft-problems", Static).update(text)
        self.query_one("#start", Button).disabled = bool(problems) or live
        self.query_one("#resume", Button).disabled = live


class ResumeDialog(ModalScreen[str | None]):
    """Asks for a run folder to continue; answers its path, or None when cancelled."""

    DEFAULT_CSS = """
    ResumeDialog { align: center middle; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="cancel-resume")]

    def __init__(self, default: str) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Resume a run", classes="dialog-title")
            yield Static("Run folder to continue: training goes on from its newest checkpoint, with the config "
                         "the run was started with.", classes="dialog-text")
            yield Input(self.default, placeholder="runs/<run-id>", id="resume-dir")
            yield Static("", id="resume-error", classes="dialog-hint", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Resume", variant="primary", id="resume-ok")
                yield Button("Cancel", id="resume-cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._answer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "resume-ok":
            self._answer()
        else:
            self.dismiss(None)

    def _answer(self) -> None:
        value = self.query_one(Input).value.strip()
        if not (Path(value) / CONFIG_FILE).is_file():
            self.query_one("#resume-error", Static).update(
                f"{value or '(empty)'} is not a run folder: it has no {CONFIG_FILE}")
            return
        self.dismiss(value)
