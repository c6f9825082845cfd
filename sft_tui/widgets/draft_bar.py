"""The line at the top of every step: what the draft run is, and whether it can start."""

from __future__ import annotations

from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static

from core.runs import STARTED, run_of_final
from sft_tui.format.numbers import format_share
from sft_tui.format.paths import cut_middle
from sft_tui.format.safe import safe_text
from sft_tui.messages import RunState

RUN_STYLES = {RunState.RUNNING: "bold green", RunState.PAUSED: "bold yellow", RunState.STOPPING: "bold yellow",
              RunState.FINISHED: "bold cyan", RunState.STOPPED: "bold yellow", RunState.EARLY_STOPPED: "bold cyan",
              RunState.FAILED: "bold red"}
SHORT_TASKS = {"classification": "classif."}
NAME_CHARS = 18
"""A model or data name longer than this is cut in the middle when the line is short of room."""
PRESET_WORDS = {"all": "train all", "head-only": "train head", "top-n": "train top-{n}",
                "freeze-embeddings": "embeddings frozen"}
"""What the freeze preset trains, shown until the model is loaded and the share can be counted
(`freeze all` read as the opposite of the preset `all`, which trains everything)."""
SHORT_PRESET_WORDS = {"all": "all", "head-only": "head", "top-n": "top-{n}", "freeze-embeddings": "emb frozen"}
"""The same at 80 columns, where the problem names need the room."""


def preset_words(freeze, short: bool = False) -> str:
    """The preset in words, and how many of the user's rules follow it."""
    words = (SHORT_PRESET_WORDS if short else PRESET_WORDS)[freeze.preset].format(n=freeze.top_n)
    rules = len(freeze.rules)
    return words + ((f" +{rules}" if short else f" +{rules} rule(s)") if rules else "")


def status_line(session, state: RunState, width: int, run_config=None) -> Text:
    """The draft run in at most `width` cells, when it can be done.

    The whole line first; then, until it fits, the least useful parts go (the app's name, the batch
    size, the data name), the trainable share and the task and model names are abbreviated, and last
    the problem list is cut (to its count when no name fits). What stays at 80 columns: the state,
    model, task, trainable share and lr.
    """
    # A run from step 6 or continued is not the draft: it is described until an edit makes the draft
    # the subject again (IDLE), or FINISHED stood beside the draft's model
    following = run_config is not None and state != RunState.IDLE
    config = run_config if following else session.config
    model = config.model.name_or_path.removeprefix("demo:")
    parent = run_of_final(model)  # a continued run's model is its parent's final/: named by the parent
    model = f"{STARTED.sub('', parent.name, count=1)}/final" if parent is not None else Path(model).name or model
    share = None if following else session.trainable_share
    plain = {
        "model": model, "task": config.task, "data": Path(config.data.train.removeprefix("demo:")).name,
        "share": f"{format_share(share)} trainable" if share is not None else preset_words(config.freeze),
        "lr": f"lr {config.optim.lr:g}", "bs": f"bs {config.optim.batch_size}x{config.optim.grad_accum}",
    }
    parts: dict[str, tuple[str, str] | None] = {key: (value, "") for key, value in plain.items()}
    parts["brand"] = ("sft-tui", "bold")
    problems = session.problems() if state == RunState.IDLE else {}
    if state != RunState.IDLE:
        parts["status"] = (state.value.upper(), RUN_STYLES[state])
    elif problems:
        parts["status"] = (f"{len(problems)} problem(s): {', '.join(problems)}", "bold red")
    else:
        parts["status"] = ("ready", "green")
    shorter = [
        ("brand", None), ("bs", None), ("data", None),
        ("share", (f"{format_share(share)} train" if share is not None else preset_words(config.freeze, short=True), "")),
        ("task", (SHORT_TASKS.get(config.task, config.task), "")), ("model", (cut_middle(model, NAME_CHARS), "")),
    ]
    order = ["brand", "status", "model", "task", "data", "share", "lr", "bs"]

    def assemble() -> Text:
        shown = [parts[key] for key in order if parts[key] is not None]
        text = Text()
        for i, (words, style) in enumerate(shown):
            # The app's name is followed by a space, the rest are separated by dots.
            text.append(" " if i == 1 and parts["brand"] else " · " if i else "")
            text.append(safe_text(words, one_line=True), style)  # the model's and data's names are a config's
        return text

    text = assemble()
    for key, replacement in shorter:
        if cell_len(text.plain) <= width:
            break
        parts[key] = replacement
        text = assemble()
    if problems and cell_len(text.plain) > width:
        # As many problem names as fit, then "…"; the count alone when not even one does.
        words, style = parts["status"]
        room = cell_len(words) - (cell_len(text.plain) - width)
        count = f"{len(problems)} problem(s)"
        parts["status"] = (words[: room - 1] + "…" if room > len(count) + 8 else count, style)
        text = assemble()
    return text


class DraftBar(Static):
    DEFAULT_CSS = """
    DraftBar { height: 1; background: $panel; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "session_version", self._redraw)
        self.watch(self.app, "run_state", self._redraw)

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self, _value=None) -> None:
        width = self.content_size.width or self.app.size.width - 2
        self.update(status_line(self.app.session, self.app.run_state, width, self.app.followed_config), layout=False)
