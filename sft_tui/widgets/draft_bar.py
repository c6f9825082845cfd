"""The line at the top of every step: what the draft run is, and whether it can start."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from sft_tui.format.numbers import format_share
from sft_tui.messages import RunState

RUN_STYLES = {RunState.RUNNING: "bold green", RunState.PAUSED: "bold yellow", RunState.STOPPING: "bold yellow",
              RunState.FINISHED: "bold cyan", RunState.FAILED: "bold red"}


class DraftBar(Static):
    DEFAULT_CSS = """
    DraftBar { height: 1; background: $panel; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "session_version", self._redraw)
        self.watch(self.app, "run_state", self._redraw)

    def _redraw(self, _value=None) -> None:
        session = self.app.session
        config = session.config
        model = config.model.name_or_path.removeprefix("demo:")
        model = Path(model).name or model
        data = Path(config.data.train.removeprefix("demo:")).name
        share = session.trainable_share
        parts = [
            model, config.task, data,
            f"{format_share(share)} trainable" if share is not None else f"freeze {config.freeze.preset}",
            f"lr {config.optim.lr:g}", f"bs {config.optim.batch_size}x{config.optim.grad_accum}",
        ]
        state = self.app.run_state
        if state != RunState.IDLE:
            status = (state.value.upper(), RUN_STYLES[state])
        elif problems := session.problems():
            status = (f"{len(problems)} problem(s): {', '.join(problems)}", "bold red")
        else:
            status = ("ready", "green")
        # The status comes first so that a narrow terminal cuts the details, not the verdict.
        text = Text.assemble(("sft-tui", "bold"), " ", status, " · ", " · ".join(parts))
        self.update(text, layout=False)
