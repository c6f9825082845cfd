"""The config keys in which the compared runs differ, one row per key and one column per run."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.widgets import DataTable

from core.runs import STARTED
from sft_tui.format.compare import MISSING, config_diff
from sft_tui.format.paths import cut_middle
from sft_tui.format.safe import safe_text
from sft_tui.widgets.runs.curves import colour_style

HEADER_WIDTH = 18
"""Widest run name over a column: whole, two long generated names pushed the second run's values out
of a 120-column diff."""


class ConfigDiff(DataTable):
    DEFAULT_CSS = """
    ConfigDiff { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=1, **kwargs)  # keys stay in view
        self.diff: list[tuple[str, list[str]]] = []

    def show(self, names: list[str], configs: list[dict]) -> None:
        """One column per run (named in its curve's colour); only the keys whose values differ. Names,
        keys and values are the run folders' and their configs': shown with their control characters
        escaped, and no markup read from them (a str cell of a DataTable is markup)."""
        self.clear(columns=True)
        self.diff = config_diff(configs) if len(configs) >= 2 else []
        self.add_column("key", key="key")
        for i, name in enumerate(names):
            self.add_column(Text(_header(name), style=f"bold {colour_style(i)}"), key=f"run-{i}")
        for key, values in self.diff:
            self.add_row(_cell(key), *(Text(v, style="dim") if v == MISSING else _cell(v) for v in values), key=key)

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.diff]


def _header(name: str) -> str:
    """A run's column header: its name without the date of a generated one (`020851-deep-llama`; the
    runs compared are mostly a day's), cut in its middle to HEADER_WIDTH; the colour is its curve's."""
    name = safe_text(name, one_line=True)
    name = name[len("YYYYmmdd-"):] if STARTED.match(name) else name
    return cut_middle(name, HEADER_WIDTH)


def _cell(text: str) -> str:
    return escape(safe_text(text, one_line=True))
