"""Step 4: the optimizer, schedule, evaluation and checkpoint settings, with a live preview of the
steps and the learning-rate curve they give. (Saving and loading the config as YAML are keys of the
app, on every step.)

The form is generated from the pydantic config sections (sft_tui.widgets.hyper.form), and every
change is validated by pydantic through Session.update, so the rules and messages live in one place:
core/config.py.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from core.config import METRICS_BY_TASK, RunConfig
from core.errors import UserError
from sft_tui.format.hyper import NO_DATA
from sft_tui.screens.base import StepScreen
from sft_tui.session import field_problem
from sft_tui.widgets.hyper.form import ConfigField, FieldSpec, field_spec, section_specs
from sft_tui.widgets.hyper.preview import SchedulePreview

SECTIONS = [("Optimizer", "optim"), ("Schedule", "schedule"), ("Evaluation", "eval"), ("Checkpoints", "checkpoint"),
            ("Compute", "compute"), ("LoRA", "lora")]
TOP_LEVEL = ("Run", ["seed", "precision"])
BORROWED = {"Optimizer": [("data", "group_by_length")], "Run": [("output", "run_name")]}
"""Fields of other sections shown in a section of this form. data.group_by_length decides which rows
share a step, beside the batch size (the data step loads and previews the rows, whichever it is).
output.run_name, empty for a fresh name from the time, is the one way in the app to leave a run
folder that a config taken from a run names."""

HELP = "Tab / shift+tab move between fields, Esc leaves them · ctrl+s saves the config as YAML, ctrl+o loads one"


def form_sections(task: str) -> list[tuple[str, list[FieldSpec]]]:
    """(title, field specs) of the form; eval.metric offers the metrics of `task`."""
    sections = [(title, section_specs(RunConfig.model_fields[name].annotation, name)) for title, name in SECTIONS]
    title, names = TOP_LEVEL
    sections.append((title, [field_spec(RunConfig, name) for name in names]))
    sections = [(title, specs + [field_spec(RunConfig.model_fields[section].annotation, name, section)
                                 for section, name in BORROWED.get(title, [])]) for title, specs in sections]
    return [(title, [_with_metrics(spec, task) for spec in specs]) for title, specs in sections]


def _with_metrics(spec: FieldSpec, task: str) -> FieldSpec:
    if spec.dotted != "eval.metric":
        return spec
    return FieldSpec(spec.dotted, "choice", spec.optional, METRICS_BY_TASK[task], spec.limits, spec.help)


def value_at(config: RunConfig, dotted: str) -> Any:
    return reduce(getattr, dotted.split("."), config)


class FormScroll(VerticalScroll):
    """The form's scroll, which keeps the field being edited in view when it gets shorter: the help
    line under it takes the rows a long docstring needs, and a scroll made before that layout left
    the focused field out of view (at 80x24, compute.labelled_logits_only's help takes 9 rows)."""

    def on_resize(self, event: events.Resize) -> None:
        focused = self.screen.focused
        if focused is not None and self in focused.ancestors:  # once laid out in the new size
            self.call_after_refresh(self.scroll_to_widget, focused, animate=False)


class HyperScreen(StepScreen):
    STEP = "hyper"
    CSS_PATH = "hyper.tcss"
    AUTO_FOCUS = ""
    """No field takes the focus on arrival, so the number keys still switch steps (Tab enters the
    form, Esc leaves it: StepScreen). Saving and loading YAML are the app's keys, on every step."""

    def compose_body(self) -> ComposeResult:
        config = self.session.config
        with Horizontal(id="hyper-body"):
            with Vertical(id="hyper-left"):
                with FormScroll(id="hyper-form", can_focus=False):
                    for title, specs in form_sections(config.task):
                        yield Static(title, classes="form-section")
                        for spec in specs:
                            yield ConfigField(spec, value_at(config, spec.dotted))
                yield Static(HELP, id="hyper-help", markup=False)
            yield SchedulePreview(id="hyper-preview")

    def on_mount(self) -> None:
        self.watch(self.app, "session_version", self._show_preview)
        self.watch(self.app, "data_state", self._show_preview)

    def on_screen_resume(self) -> None:
        self.refresh_form()

    def on_resize(self, event: events.Resize) -> None:
        """Below 100 columns the form's columns narrow (hyper.tcss) so that the limits stay and the
        preview keeps room for the LR curve."""
        self.set_class(event.size.width < 100, "-narrow")

    @property
    def fields(self) -> dict[str, ConfigField]:
        return {field.spec.dotted: field for field in self.query(ConfigField)}

    def refresh_form(self) -> None:
        """Show the session's config; fields still invalid keep what the user typed."""
        config = self.session.config
        for dotted, field in self.fields.items():
            if dotted in self.session.invalid:
                field.show_error(self.session.invalid[dotted])
                continue
            if dotted == "eval.metric":
                field.set_choices(METRICS_BY_TASK[config.task], config.eval.metric)
            else:
                field.set_value(value_at(config, dotted))
            field.show_error(None)

    def on_config_field_edited(self, event: ConfigField.Edited) -> None:
        field, dotted = event.field, event.field.spec.dotted
        try:
            self.session.update({dotted: event.value})
        except UserError as err:
            message = field_problem(err, dotted)
            self.session.invalid[dotted] = message
            field.show_error(message)
        else:
            self.session.invalid.pop(dotted, None)
            field.show_error(None)
        self.app.changed()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """The help line shows the docstring of the field being edited, whole: the form gives it the
        rows, and scrolls the field back into view once it has fewer."""
        for node in event.widget.ancestors_with_self:
            if isinstance(node, ConfigField):
                spec = node.spec
                limits = f" ({spec.limits})" if spec.limits else ""
                self.query_one("#hyper-help", Static).update(f"{spec.dotted}{limits}: {spec.help}")
                self.call_after_refresh(node.scroll_visible, animate=False)
                return

    def _show_preview(self, _value: object = None) -> None:
        data = self.session.data
        rows = data.stats.rows_out if data is not None else {}
        waiting = {"loading": "loading the data…", "failed": "the data did not load: see step 2"}
        self.query_one(SchedulePreview).show(self.session.config, rows.get("train"), rows.get("validation"),
                                             waiting.get(self.app.data_state, NO_DATA))
