"""Step 2: choose the training data and see it the way the model will: tokenized and masked.

The form edits the `data` section; Load (Enter in any field, the button or ctrl+l) applies it and
tokenizes the data in a worker (core.data.prepare_data). Below the form: the first training rows
(for causal LM with the tokens that carry no loss dimmed and the trained ones bold, so a wrong
column mapping shows before training), and the statistics: token lengths, truncation, dropped
rows, the validation split, labels and warnings. Numbers that do not validate are marked next to
their field and in session.invalid (which keeps Start disabled) until they are fixed.
"""

from __future__ import annotations

from functools import partial
from typing import get_args

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from core.config import ColumnMap, DataFormat
from core.data.sources import FILE_KINDS
from core.errors import UserError
from sft_tui.format.data import data_stats
from sft_tui.format.safe import safe_text
from sft_tui.screens.base import StepScreen
from sft_tui.widgets.data.preview import DataPreview
from sft_tui.widgets.load_status import LoadStatus
from sft_tui.widgets.paths import PathInput, PathSuggester

FORMATS = get_args(DataFormat)
ROLES = tuple(ColumnMap.model_fields)
NUMBER_FIELDS = {"data-val-ratio": "val_ratio", "data-max-length": "max_length"}
"""Inputs whose text must validate as a DataConfig number, by widget id."""
DATA_FILES = tuple(FILE_KINDS)
"""File kinds core.data reads: the path completion offers these besides folders."""


def _field(label: str, widget, field_id: str) -> Vertical:
    """A form field: its name above its widget."""
    return Vertical(Label(label, classes="field-label"), widget, classes="field", id=field_id)


class DataScreen(StepScreen):
    STEP = "data"
    CSS_PATH = "data.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [Binding("ctrl+l", "load", "Load data", id="load-data")]
    AUTO_FOCUS = ""
    """Nothing takes the focus on arrival: the number keys switch steps, and the first Tab reaches the
    Train box. (With the preview focused it took three Tabs, and a path typed after one went to the
    app's keys: the q of `qa.jsonl` quit.)"""

    def compose_body(self) -> ComposeResult:
        with Vertical(id="data-form"):
            with Horizontal(classes="form-row"):
                yield _field("Train: file, folder or datasets name",
                             PathInput(id="data-train", compact=True, suggester=PathSuggester(DATA_FILES)), "f-train")
                yield _field("Validation: empty holds out val_ratio",
                             PathInput(id="data-validation", compact=True, suggester=PathSuggester(DATA_FILES),
                                       placeholder="none"), "f-validation")
            with Horizontal(classes="form-row"):
                yield _field("Format", Select([(f, f) for f in FORMATS], id="data-format", compact=True,
                                              allow_blank=False), "f-format")
                yield _field("val_ratio", Input(id="data-val-ratio", compact=True), "f-val-ratio")
                yield _field("max_length", Input(id="data-max-length", compact=True), "f-max-length")
                yield Button("Load", id="data-load", compact=True, variant="primary")
                yield Static(id="data-pending")
            with Horizontal(classes="form-row", id="data-columns"):
                for role in ROLES:
                    yield _field(role, Input(id=f"col-{role}", compact=True, placeholder="auto"), f"f-col-{role}")
            yield Static(id="data-field-errors")
        yield LoadStatus("data")
        with Horizontal(id="data-results"):
            yield DataPreview(id="data-rows")
            with VerticalScroll(id="data-stats-scroll"):
                yield Static(id="data-stats")

    def on_mount(self) -> None:
        self._synced = None
        self._shown = None
        """The data the results show, whose scroll offset they keep."""
        self._field_errors: dict[str, str] = {}
        self._sync_form()
        self.watch(self.app, "data_state", self._show_results)
        self.watch(self.app, "model_state", self._show_results)

    def on_screen_resume(self) -> None:
        """Each time the screen is shown (the first time too): catch up with the session."""
        self._sync_form()
        self._load_if_missing()

    def _load_if_missing(self) -> None:
        """Load when nothing is loaded for the current settings (first visit, or the settings
        changed elsewhere, e.g. another demo); a failed load waits for the user's fix."""
        if self._needs_load():
            self._start_load(only_if_needed=True)

    def _needs_load(self) -> bool:
        return self.session.data is None and self.app.data_state in ("none", "ready")

    def _start_load(self, only_if_needed: bool = False) -> None:
        """Tokenize once no model load is running: the data worker then reuses that model's
        tokenizer (SftApp.model_settled).
        An automatic load is skipped if another screen started one meanwhile."""
        self.app.run_worker(partial(self._load_when_settled, only_if_needed), group="data-start", exclusive=True,
                            exit_on_error=False)

    async def _load_when_settled(self, only_if_needed: bool) -> None:
        if self.app.data_state != "loading":
            self.query_one(LoadStatus).waiting("Waiting for the model to load …")
        await self.app.model_settled()
        if not only_if_needed or self._needs_load():
            self.app.load_data()

    # ---- the form ------------------------------------------------------------------------------
    def _sync_form(self) -> None:
        """Show the session's data settings unless the form already shows them (then what the
        user typed and has not applied stays)."""
        data = self.session.config.data
        if data == self._synced:
            return
        self._synced = data
        self.query_one("#data-train", PathInput).fill(data.train)
        self.query_one("#data-validation", PathInput).fill(data.validation or "")
        self.query_one("#data-format", Select).value = data.format
        self.query_one("#data-val-ratio", Input).value = f"{data.val_ratio:g}"
        self.query_one("#data-max-length", Input).value = str(data.max_length)
        for role in ROLES:
            self.query_one(f"#col-{role}", Input).value = getattr(data.columns, role) or ""

    def _form_changes(self) -> dict:
        """The form as session.update() changes; numbers only where they validate."""
        value = self._text
        changes = {
            "data.train": value("data-train"),
            "data.validation": value("data-validation") or None,
            "data.format": self.query_one("#data-format", Select).value,
        }
        for role in ROLES:
            changes[f"data.columns.{role}"] = value(f"col-{role}") or None
        for widget_id, name in NUMBER_FIELDS.items():
            number, error = self.session.check(f"data.{name}", value(widget_id))
            if error is None:
                changes[f"data.{name}"] = number
        return changes

    def _text(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def _check_number(self, widget: Input) -> None:
        """Mark a number field that does not validate, next to it and in session.invalid."""
        name = NUMBER_FIELDS[widget.id]
        key = f"data.{name}"
        _, error = self.session.check(key, widget.value.strip())
        widget.set_class(error is not None, "-invalid")
        before = self.session.invalid.get(key)
        if error is None:
            self.session.invalid.pop(key, None)
            self._field_errors.pop(name, None)
        else:
            self.session.invalid[key] = error
            self._field_errors[name] = error
        errors = self.query_one("#data-field-errors", Static)
        # a field's message quotes its value, which a loaded config (a file) may have set
        errors.update(Text(safe_text("\n".join(f"{n}: {e}" for n, e in self._field_errors.items())), style="red"))
        errors.display = bool(self._field_errors)
        if self.session.invalid.get(key) != before:
            self.app.changed()

    def _edited(self) -> bool:
        """The form holds edits that Load has not applied yet."""
        data = self.session.config.data
        current = {"data.train": data.train, "data.validation": data.validation, "data.format": data.format,
                   "data.val_ratio": data.val_ratio, "data.max_length": data.max_length,
                   **{f"data.columns.{role}": getattr(data.columns, role) for role in ROLES}}
        return self._form_changes() != current or bool(self._field_errors)

    def _show_pending(self) -> None:
        self.query_one("#data-pending", Static).update(
            Text("edited: Enter applies", style="yellow") if self._edited() else "")

    def unapplied(self) -> str:
        return "step 2's data form (Enter loads it)" if self._edited() else ""

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in NUMBER_FIELDS:
            self._check_number(event.input)
        self._show_pending()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._show_pending()

    @on(Input.Submitted)
    @on(Button.Pressed, "#data-load")
    def _load_pressed(self) -> None:
        self.action_load()

    def action_load(self) -> None:
        """Apply the form to the session and tokenize the data."""
        if self._field_errors:
            self.query_one(LoadStatus).error("fix the fields marked in red first",
                                             "the lines under the form say what each one takes")
            return
        try:
            self.session.update(self._form_changes())
        except UserError as err:
            self.query_one(LoadStatus).error(err.message, err.hint)
            return
        self._synced = self.session.config.data
        self._show_pending()
        self.app.changed()
        self._start_load()

    # ---- what is loaded ------------------------------------------------------------------------
    def _show_results(self, _state: str | None = None) -> None:
        state, data = self.app.data_state, self.session.data
        if state == "ready" and data is None:
            state = "none"
        self.query_one(LoadStatus).show(
            state, self.session.config.data.train, loading=("Loading and tokenizing ", " …"),
            ready=f" · {data.format} · {data.stats.rows_out['train']:,} training rows" if data else "",
            idle="No data loaded: press Enter in a field or ctrl+l", error=self.session.load_errors.get("data"))
        if state == "ready":
            self._show_data(data)
        elif state != "loading":
            self._clear_results()

    def _show_data(self, data) -> None:
        for role in ROLES:  # the detected column alone, dimmed as a default: "auto: completion" is cut at 80 columns
            self.query_one(f"#col-{role}", Input).placeholder = getattr(data.columns, role) or "auto"
        self.query_one("#data-stats", Static).update(data_stats(data, self.session.config.data))
        # The model may be reloading with the data's labels: its tokenizer, the same, comes with it.
        self.query_one(DataPreview).show(data, self.session.model.tokenizer if self.session.model is not None else None)
        if data is not self._shown:  # other rows: from their top (at 80x24 the results scroll as one, and a
            self._shown = data  # reload kept the old offset, with the header and the first rows above the view)
            self.query_one("#data-results").scroll_home(animate=False)

    def _clear_results(self) -> None:
        self.query_one(DataPreview).reset()
        self.query_one("#data-stats", Static).update("")

