"""Form fields generated from the pydantic config models, so a new config field needs no UI code.

`field_spec` reads a model field (annotation, constraints, docstring) into a FieldSpec; ConfigField
shows it as one compact row (name, control, allowed range) with the validation message below.
ConfigField does not validate: it turns what was typed into a Python value and posts `Edited`;
the screen validates through pydantic (Session.update) and calls `show_error`.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from textual.app import ComposeResult
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static


@dataclass(frozen=True)
class FieldSpec:
    """What the form needs to know about one config field."""

    dotted: str
    """Path for Session.update, e.g. "optim.lr"."""
    kind: Literal["int", "float", "bool", "choice", "text"]
    optional: bool
    """None is allowed: an empty input means None."""
    choices: tuple[str | bool, ...]
    """A choice's values: words of a Literal, and True and False where it also takes a yes or no."""
    limits: str
    """The allowed range in short form, e.g. "> 0, < 1"."""
    help: str
    """The field's docstring on one line."""

    @property
    def name(self) -> str:
        return self.dotted.rpartition(".")[2]


_LIMITS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "≤"))


def field_spec(model: type[BaseModel], name: str, prefix: str = "") -> FieldSpec:
    """The FieldSpec of `model.name`; `prefix` is the section's dotted path ("" at the top level)."""
    info = model.model_fields[name]
    annotation, optional = info.annotation, False
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
        optional = True
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    choices: tuple[str | bool, ...] = ()
    if get_origin(annotation) is Literal:
        kind, choices = "choice", get_args(annotation)
    elif get_origin(annotation) in (Union, types.UnionType) and bool in get_args(annotation):  # "auto" or a yes/no
        words = [word for part in get_args(annotation) if get_origin(part) is Literal for word in get_args(part)]
        kind, choices = "choice", (*words, True, False)
    else:
        kind = {bool: "bool", int: "int", float: "float"}.get(annotation, "text")
    limits = [f"{sign} {getattr(m, attr):g}"
              for m in info.metadata for cls, attr, sign in _LIMITS if isinstance(m, cls)]
    text = ", ".join(limits) + (" or empty" if optional else "")
    return FieldSpec(f"{prefix}.{name}" if prefix else name, kind, optional, choices, text.strip(),
                     " ".join((info.description or "").split()))


def section_specs(model: type[BaseModel], prefix: str) -> list[FieldSpec]:
    """Specs of every field of a config section, in declaration order."""
    return [field_spec(model, name, prefix) for name in model.model_fields]


def format_value(value: Any) -> str:
    """The text an Input shows for a config value; repr keeps floats exact (5e-05, 0.999)."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def parse_text(spec: FieldSpec, text: str) -> Any:
    """What was typed as the value to validate: empty is None for optional fields, numbers become
    numbers; anything else goes to pydantic as typed so that its message says what is wrong."""
    text = text.strip()
    if text == "" and spec.optional:
        return None
    number = {"int": int, "float": float}.get(spec.kind)
    if number is not None:
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _label(choice: str | bool) -> str:
    """A choice as YAML writes it: true and false for a yes or no."""
    return str(choice).lower() if isinstance(choice, bool) else choice


class ConfigField(Widget):
    """One config field: its name, a control fitting its type, its limits, and room for an error.

    The parts sit in a grid (the screen's stylesheet sizes it) rather than nested containers: a
    form has many fields, and fewer widgets keep each keystroke's layout pass short."""

    class Edited(Message):
        """The user changed the field's value (not sent when the screen sets it)."""

        def __init__(self, field: ConfigField, value: Any) -> None:
            super().__init__()
            self.field, self.value = field, value

    def __init__(self, spec: FieldSpec, value: Any) -> None:
        super().__init__(classes="config-field", id=f"field-{spec.dotted.replace('.', '-')}")
        self.spec, self._value = spec, value
        self._shown = format_value(value) if spec.kind in ("int", "float", "text") else value
        self._choices = spec.choices

    def compose(self) -> ComposeResult:
        spec = self.spec
        yield Label(spec.name, classes="field-name")
        if spec.kind == "choice":
            yield Select([(_label(c), c) for c in spec.choices], value=self._value, allow_blank=False, compact=True,
                         classes="field-control")
        elif spec.kind == "bool":
            yield Checkbox(value=self._value, compact=True, classes="field-control")
        else:  # typing replaces the whole value: the text is selected when the field gets the focus
            yield Input(self._shown, type={"int": "integer", "float": "number"}.get(spec.kind, "text"),
                        compact=True, validate_on=[], classes="field-control")
        yield Label(spec.limits, classes="field-limits")
        yield Static("", classes="field-error", markup=False)

    def on_mount(self) -> None:
        self.control.tooltip = self.spec.help

    @property
    def control(self) -> Input | Select | Checkbox:
        return self.query_one(".field-control")

    @property
    def error(self) -> str:
        """The validation message shown under the field ("" when valid)."""
        return str(self.query_one(".field-error", Static).content)

    def show_error(self, message: str | None) -> None:
        if (message or "") == self.error:
            return  # an unchanged message needs no new layout
        self.query_one(".field-error", Static).update(message or "")
        self.set_class(bool(message), "-invalid")
        self.control.set_class(bool(message), "-invalid")

    def set_value(self, value: Any) -> None:
        """Show a value from the config without posting Edited."""
        control = self.control
        shown = format_value(value) if isinstance(control, Input) else value
        self._shown = shown
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            control.value = shown

    def set_choices(self, choices: tuple[str, ...], value: str) -> None:
        """Offer other options (eval.metric depends on the task) without posting Edited."""
        select = self.query_one(Select)
        self._shown = value
        with self.prevent(Select.Changed):
            if choices != self._choices:  # new options lay the form out again
                self._choices = choices
                select.set_options([(c, c) for c in choices])
            select.value = value

    def on_input_changed(self, event: Input.Changed) -> None:
        self._edited(event, event.value, parse_text(self.spec, event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        self._edited(event, event.value, event.value)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._edited(event, event.value, event.value)

    def _edited(self, event: Message, shown: Any, value: Any) -> None:
        event.stop()
        if shown != self._shown:  # also filters the echo of the initial value
            self._shown = shown
            self.post_message(self.Edited(self, value))
