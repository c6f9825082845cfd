"""Every key of the app and of each step, in one table: one line per action, with the keys in
effect (the user's keymap over the defaults) written as people write them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

FOCUS_KEYS = ("Tab / Shift+Tab", "Next / previous field, list or button")
"""Textual's focus keys: no binding of this app, but what a newcomer needs first."""


def help_rows(keymap: dict[str, str]) -> list[tuple[str, str, str]]:
    """(where, keys, what) per action: the keys of an action's bindings in one scope are joined,
    so `q` and `Ctrl+Q` make one Quit line."""
    from sft_tui.keymap import binding_scopes, effective_keys, keys_label

    rows: list[tuple[str, str, str]] = [("everywhere", *FOCUS_KEYS)]
    for where, bindings in binding_scopes():
        keys_by_action: dict[str, list[str]] = {}
        described: dict[str, str] = {}
        for binding in bindings:
            if isinstance(binding, Binding) and binding.description:
                keys_by_action.setdefault(binding.action, []).append(keys_label(effective_keys(binding, keymap)))
                described.setdefault(binding.action, binding.description)
        rows += [(where, " / ".join(keys), described[action]) for action, keys in keys_by_action.items()]
    return rows


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen .dialog-hint { width: 100%; }
    """
    """The hint wraps at 80 columns instead of losing its end."""
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Label("Keys", classes="dialog-title")
            yield DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
            yield Label("Esc closes · every key is a palette command too (Ctrl+P) · to change keys: "
                        "sft-tui --print-keymap", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("where", "keys", "what")
        table.add_rows(help_rows(self.app.keymap))
        table.focus()
