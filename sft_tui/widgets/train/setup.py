"""Before a run: what Start would train and what still blocks it."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from sft_tui.format.train import draft_summary


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
            yield Button("Start training  (Enter)", variant="success", id="start")
            yield Button("Resume a run…  (R)", id="resume")

    def redraw(self, session, live: bool) -> None:
        """Show the draft in `session`; Start is off while it has problems or a run is live."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        for label, value in draft_summary(session.config, session.trainable_share, session.launch_warnings()):
            table.add_row(label, value)
        self.query_one("#draft-summary", Static).update(table)
        problems = session.problems()
        if problems:
            bullets = Table.grid(padding=(0, 1))
            bullets.add_column(no_wrap=True)
            bullets.add_column(style="red")  # wrapped lines stay indented under their bullet
            for where, message in problems.items():
                bullets.add_row(" •", Text.assemble((where, "bold"), f": {message}"))
            shown = Group(Text.assemble((f"{len(problems)} problem(s) keep Start disabled:", "bold red")), bullets,
                          Text.assemble(("fix them on their step: 1 model, 2 data, 3 freeze, 4 the other fields",
                                         "dim")))
        else:
            shown = Text.assemble(("no problems: ready to start", "green"))
        self.query_one("#draft-problems", Static).update(shown)
        self.query_one("#start", Button).disabled = bool(problems) or live
        self.query_one("#resume", Button).disabled = live
