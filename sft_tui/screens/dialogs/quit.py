"""What quitting means while a run trains: leave it training (detach), stop it, or stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class QuitDialog(ModalScreen[str]):
    """Answers "detach", "stop" or "cancel". A run in an engine process of its own goes on after a
    detach (the default); a run in a thread of the app (`--in-process`) cannot, so it is stopped
    and saved; a viewer cannot stop a run it does not control. A `paused` run stays paused after a
    detach, holding its memory and GPUs, until a client resumes it: the text says so, where "it goes
    on" had promised a run that in fact waited, indefinitely."""

    DEFAULT_CSS = """
    QuitDialog { align: center middle; }
    """
    BINDINGS = [Binding("escape", "dismiss('cancel')", "Cancel", id="quit-cancel")]

    def __init__(self, run_name: str, *, in_process: bool = False, controls: bool = True,
                 paused: bool = False) -> None:
        super().__init__()
        self.run_name, self.in_process, self.controls, self.paused = run_name, in_process, controls, paused

    def compose(self) -> ComposeResult:
        if self.in_process:
            text = (f"Run {self.run_name} trains inside this app (--in-process) and cannot outlive it: "
                    "quitting stops it after the current step and saves a checkpoint first (R resumes it).")
        elif self.paused:
            resumes = ("`sft-tui attach` follows it again and p resumes it" if self.controls
                       else "the client that controls it resumes it")
            text = (f"Run {self.run_name} is paused, in an engine process of its own. Detach: it stays paused, "
                    f"holding its memory and any GPU, until {resumes}. Stop and save: it stops with a "
                    "checkpoint and frees them (R resumes it later).")
        else:
            text = (f"Run {self.run_name} is training in an engine process of its own. Detach: it goes on, "
                    "and `sft-tui attach` follows it again. Stop and save: it stops after the current step "
                    "with a checkpoint.")
            if not self.controls:
                text += " Another client controls it: this app can only detach."
        with Vertical(classes="dialog"):
            yield Label("Quit sft-tui?", classes="dialog-title")
            yield Static(text, classes="dialog-text", markup=False)
            with Horizontal(classes="dialog-buttons"):
                if not self.in_process:
                    yield Button("Detach", variant="primary", id="detach")
                if self.controls:
                    yield Button("Stop and save", variant="error", id="stop")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel" if self.in_process else "#detach", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
