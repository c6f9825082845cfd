"""The form that adds or edits one freeze rule, checked as the user types."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, Switch

from core.config import FreezeRule
from core.errors import UserError


class RuleDialog(ModalScreen[FreezeRule | None]):
    """Returns the rule through dismiss(), or None when cancelled. It stays open while a field is
    invalid: pydantic's FreezeRule checks lr_scale, and `check` (the screen's trial run of the map
    with this rule in place) reports an invalid regex and what the rule would decide."""

    DEFAULT_CSS = """
    RuleDialog { align: center middle; }
    RuleDialog .rule-dialog { width: 76; }
    RuleDialog .field-error { color: $error; height: auto; }
    RuleDialog .rule-options { height: auto; }
    RuleDialog .rule-options Label { margin: 1 1 0 0; }
    RuleDialog #rule-lr { width: 14; }
    RuleDialog #rule-preview { color: $text-muted; margin-top: 1; height: auto; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="freeze-rule-cancel"),
        Binding("ctrl+s", "save", "Save rule", id="freeze-rule-save"),
    ]

    def __init__(self, title: str, rule: FreezeRule, check: Callable[[FreezeRule], str]) -> None:
        super().__init__()
        self.title_text, self.rule, self.check = title, rule, check

    def compose(self) -> ComposeResult:
        fields = FreezeRule.model_fields
        with Vertical(classes="dialog rule-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.rule.match, placeholder="module path, glob (*.layer.1[0-1]) or re:regex",
                        id="rule-match", tooltip=fields["match"].description)
            yield Static("", id="match-error", classes="field-error", markup=False)
            with Horizontal(classes="rule-options"):
                yield Label("train")
                yield Switch(self.rule.train, id="rule-train", tooltip=fields["train"].description)
                yield Label("lr_scale")
                yield Input(f"{self.rule.lr_scale:g}", id="rule-lr", tooltip=fields["lr_scale"].description)
            yield Static("", id="lr-error", classes="field-error", markup=False)
            yield Static("", id="rule-preview", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#rule-match", Input).focus()
        self.validate()

    def validate(self) -> FreezeRule | None:
        """The rule in the form, or None with the reasons shown under the fields (each field is
        checked even while the other is invalid)."""
        match = self.query_one("#rule-match", Input).value.strip()
        train = self.query_one("#rule-train", Switch).value
        errors = {"match": "" if match else "enter a module path, a glob or re:regex", "lr_scale": ""}
        rule = preview = None
        try:
            rule = FreezeRule(match=match, train=train, lr_scale=self.query_one("#rule-lr", Input).value.strip())
        except ValidationError as err:
            for error in err.errors():
                errors[str(error["loc"][0])] = error["msg"]
        if match:
            try:
                preview = self.check(rule or FreezeRule(match=match, train=train))
            except UserError as err:
                errors["match"] = f"{err.message}\nhint: {err.hint}" if err.hint else err.message
        self._show("#match-error", errors["match"])
        self._show("#lr-error", errors["lr_scale"] and f"lr_scale: {errors['lr_scale']}")
        self._show("#rule-preview", preview or "")
        return rule if rule is not None and preview is not None else None

    def _show(self, selector: str, message: str) -> None:
        """A message under a field takes a line only while there is something to say."""
        field = self.query_one(selector, Static)
        field.update(message)
        field.display = bool(message)

    def on_input_changed(self) -> None:
        self.validate()

    def on_switch_changed(self) -> None:
        self.validate()

    def on_input_submitted(self) -> None:
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        rule = self.validate()
        if rule is not None:
            self.dismiss(rule)

    def action_cancel(self) -> None:
        self.dismiss(None)
