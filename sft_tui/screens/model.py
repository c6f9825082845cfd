"""Step 1: choose the model and the task, and see what the model is before training it.

The form (folder or hub id, task, trust_remote_code) is applied to the session by Load; the list
below it offers the bundled demos and the models already in the local Hugging Face cache, so
picking one needs no typing. The right side shows the loaded structure (from core.models, on the
meta device: seconds even for big models), a memory estimate, or the loader's error and its hint.
On the demo the model loads by itself when the screen is first shown, in the app's thread worker:
this module never imports torch, so the first frame never waits for it.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, RadioButton, RadioSet, Static

from core.config import DEMO_MODELS, TASKS, example_config
from core.errors import UserError
from core.saved_model import read_checkpoint
from sft_tui.format.model import head_note, model_summary
from sft_tui.screens.base import StepScreen
from sft_tui.widgets.load_status import LoadStatus
from sft_tui.widgets.model.sources import ModelSources
from sft_tui.widgets.paths import PathInput, PathSuggester


class ModelScreen(StepScreen):
    STEP = "model"
    CSS_PATH = "model.tcss"
    _task_proposal: str | None = None
    """Said under the status after a load whose task was set from the checkpoint (action_load)."""
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    AUTO_FOCUS = "#model-path"
    """A model id typed at once lands in its box, focused as the screen is composed (not after its
    mount, when keys could already come); again on every visit (on_screen_resume). Esc leaves it."""
    BINDINGS = [
        Binding("ctrl+l", "load", "Load model", id="load-model"),
        Binding("ctrl+r", "rescan_cache", "Rescan HF cache", id="rescan-hf-cache"),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="model-body"):
            with Vertical(id="model-form"):
                yield Label("Model folder or hub id", classes="field-label")
                with Horizontal(classes="field-row"):
                    yield PathInput(id="model-path", compact=True, suggester=PathSuggester(),
                                    placeholder="folder with config.json, or org/name")
                    yield Button("Load", id="model-load", compact=True, variant="primary")
                yield Label("Task", classes="field-label")
                with RadioSet(id="model-task", compact=True):
                    for task in TASKS:
                        yield RadioButton(task, id=f"task-{task}", compact=True)
                yield Checkbox("trust remote code", id="model-trust", compact=True)
                yield Label("Demos · local HF cache", classes="field-label")
                yield ModelSources(id="model-sources")
                yield Static("→ completes a folder name\nEnter (path or list) loads\n"
                             "ctrl+r rescans the HF cache", id="model-hint")
            with Vertical(id="model-info"):
                yield LoadStatus("model")
                yield Static(id="model-head-note")
                with VerticalScroll(id="model-details"):
                    yield Static(id="model-description")

    def on_mount(self) -> None:
        self._synced: tuple | None = None
        self._sync_form()
        self.watch(self.app, "model_state", self._show_state)

    def on_screen_resume(self) -> None:
        """Each time the screen is shown (the first time too): catch up with the session, with the
        focus back in the path box. Textual gives a screen back the focus it had, and AUTO_FOCUS
        only applies where there was none: a Tab to Load, then 2 and 1, left the focus there, so a
        model id typed went nowhere and Enter loaded the old model again."""
        self.query_one("#model-path", PathInput).focus()
        self._sync_form()
        self._load_if_missing()

    # ---- the form --------------------------------------------------------------------------
    def _sync_form(self) -> None:
        """Show the session's model settings, unless the form already shows them (then what the
        user typed and has not loaded yet stays)."""
        config = self.session.config
        current = (config.model.name_or_path, config.task, config.model.trust_remote_code)
        if current == self._synced:
            return
        self._synced = current
        self.query_one("#model-path", PathInput).fill(config.model.name_or_path)
        self.query_one(f"#task-{config.task}", RadioButton).value = True
        self.query_one("#model-trust", Checkbox).value = config.model.trust_remote_code
        self.query_one(ModelSources).highlight_model(config.model.name_or_path)

    def unapplied(self) -> str:
        config = self.session.config
        shown = (self.query_one("#model-path", Input).value.strip(), self._form_task(),
                 self.query_one("#model-trust", Checkbox).value)
        edited = shown != (config.model.name_or_path, config.task, config.model.trust_remote_code)
        return "step 1's model form (Enter loads it)" if edited else ""

    def _form_task(self) -> str:
        pressed = self.query_one("#model-task", RadioSet).pressed_button
        return str(pressed.label) if pressed is not None else self.session.config.task

    def _load_if_missing(self) -> None:
        """Load when nothing is loaded for the current settings (first visit, or the settings
        changed elsewhere); a failed load waits for the user to fix and Load again."""
        if self._needs_load():
            self.app.load_model()

    def _needs_load(self) -> bool:
        return self.session.model is None and self.app.model_state in ("none", "ready")

    # ---- actions -----------------------------------------------------------------------------
    def action_load(self) -> None:
        """Apply the form to the session and load the model's structure and tokenizer."""
        name = self.query_one("#model-path", Input).value.strip()
        if not name:
            self.query_one(LoadStatus).error("no model given", "type a folder or a hub id, or pick one from the list")
            return
        task = self._form_task()
        self._task_proposal = None
        if name != self.session.config.model.name_or_path and task == self.session.config.task:
            # A new model with the task left as it was: the task follows the checkpoint's head, so
            # that picking a causal LM does not quietly load it as a classifier with a new head.
            if name in DEMO_MODELS:
                self._pick_demo(name)  # typed as picked from the list: the demo's task, data and settings
                return
            checkpoint = read_checkpoint(name)
            if checkpoint is not None and checkpoint.task not in (None, task):
                task = checkpoint.task
                self._task_proposal = f"task set to {task}: {checkpoint.architectures[0]} is made for it"
        changes = {"model.name_or_path": name, "task": task,
                   "model.trust_remote_code": self.query_one("#model-trust", Checkbox).value}
        config = self.session.config
        if task != config.task:
            # Only "loss" is a metric of both tasks, and packing is for causal LM only.
            if config.eval.metric != "loss":
                changes["eval.metric"] = "loss"
            if task == "classification":
                changes["data.packing"] = False
        try:
            self.session.update(changes)
        except UserError as err:
            self.query_one(LoadStatus).error(err.message, err.hint)
            return
        self._after_change()

    def action_rescan_cache(self) -> None:
        self.query_one(ModelSources).rescan()

    @on(Input.Submitted, "#model-path")
    @on(Button.Pressed, "#model-load")
    def _load_pressed(self) -> None:
        self.action_load()

    def on_model_sources_picked(self, event: ModelSources.Picked) -> None:
        if event.demo:
            self._pick_demo(event.name)
        else:
            self.query_one("#model-path", PathInput).fill(event.name)
            self.action_load()

    def _pick_demo(self, name: str) -> None:
        """A demo comes with its data and settings: the task's example config, as `sft-tui init`
        writes it. Picking the demo that is already configured keeps the user's other edits."""
        config, task = self.session.config, DEMO_MODELS[name]
        self._task_proposal = None
        if (config.model.name_or_path, config.task) != (name, task):
            self.session.replace_config(example_config(task))
            self.session.keep()  # `sft-tui --demo` gives it again: nothing of the user's to lose
            self._after_change()
        else:
            self._synced = None  # drop unapplied edits: the form shows the demo again
            self._sync_form()
            self._load_if_missing()

    def _after_change(self) -> None:
        self._synced = None
        self._sync_form()
        self.app.changed()
        self.app.load_model()

    # ---- what is loaded ------------------------------------------------------------------------
    def _show_state(self, state: str) -> None:
        info = self.session.model
        if state == "ready" and info is None:
            state = "none"
        self.query_one(LoadStatus).show(state, self.session.config.model.name_or_path,
                                        loading=("Loading ", " (structure and tokenizer) …"),
                                        ready=f" · {info.task}" if info else "",
                                        idle="No model loaded: press Enter on the path or ctrl+l",
                                        error=self.session.load_errors.get("model"))
        if state != "loading":  # the last model stays on show while the next one loads
            self.query_one("#model-description", Static).update(
                model_summary(info.description) if state == "ready" else "")
            self._show_head_note(info if state == "ready" else None)

    def _show_head_note(self, info) -> None:
        """Under the status: the task set from the checkpoint, and whether the head is new."""
        note = None
        if info is not None:
            checkpoint = read_checkpoint(self.session.config.model.name_or_path)
            note = head_note(checkpoint, info.task, info.description, info.labels)
            if self._task_proposal:
                note = Text.assemble((self._task_proposal, "green"), *(("\n", note) if note else ()))
        widget = self.query_one("#model-head-note", Static)
        widget.update(note or "")
        widget.display = note is not None
