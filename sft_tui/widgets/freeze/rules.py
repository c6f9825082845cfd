"""The ordered rule list of the freeze map: the preset's rules, then the user's, later ones winning."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from core.freeze import user_rule_index
from sft_tui.format.numbers import format_count

DECIDING = "▶"
"""Marks the rules that decided the module selected in the tree."""


class RuleTable(DataTable):
    """Row i is effective rule i. Preset rows are dim and come `from` the preset, changing only with
    it; the user's rows follow and are the editable ones, numbered as messages name them
    (`freeze.rules.N`, N from 0). The columns run from most to least telling, so a narrow terminal
    hides the least."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.preset_count = 0
        self.deciding: frozenset[int | None] = frozenset()
        self._rows: list[tuple] = []

    def on_mount(self) -> None:
        self.add_column("#", key="index")
        self.add_column("sets", key="sets")
        self.add_column("match", key="match")
        self.add_column("params", key="params")
        self.add_column("from", key="source")

    def show_rules(self, rules: list, params: list[int] | None, deciding: frozenset[int | None]) -> None:
        """Redraw the rows (rules: core.freeze.effective_rules; params: per rule, None when unknown),
        keeping the cursor on the same row number."""
        row = self.cursor_row
        numbers = [user_rule_index(rules, i) for i in range(len(rules))]
        self.preset_count, self.deciding = numbers.count(None), deciding
        self._rows = [(rule, numbers[i], params[i] if params else None) for i, rule in enumerate(rules)]
        self.clear()
        for i in range(len(self._rows)):
            self.add_row(*self._cells(i), key=str(i))
        if self._rows:
            self.move_cursor(row=min(max(row, 0), len(self._rows) - 1), scroll=False)

    def mark(self, deciding: frozenset[int | None]) -> None:
        """Mark the rules that decided the selected module, without rebuilding the rows."""
        self.deciding = deciding
        for i in range(len(self._rows)):
            self.update_cell(str(i), "index", self._cells(i)[0])

    def _cells(self, i: int) -> tuple:
        rule, number, params = self._rows[i]
        preset = number is None
        label = "" if preset else str(number)
        index = Text(f"{DECIDING} {label}", "bold reverse") if i in self.deciding else Text(f"  {label}")
        match = Text(rule.match, "dim" if preset else "")
        sets = Text("train", "green") if rule.train else Text("frozen", "dim")
        if rule.train and rule.lr_scale != 1.0:
            sets.append(f" lr x{rule.lr_scale:.3g}", "magenta")
        count = Text("?" if params is None else format_count(params), "" if params else "dim")
        return index, sets, match, count, Text("preset", "dim italic") if preset else Text("you")
