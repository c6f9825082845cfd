"""The evaluations of a run as a table that grows with each EvalResult; the best row is marked, and
so is the evaluation before training (the "before" of the results' before -> after, never the best).
The cursor is the screen's to move (once per batch of events, not once per row)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from core.events import EvalResult
from sft_tui.format.numbers import format_metric
from sft_tui.format.safe import safe_text

BEST = "▲ best"
BEFORE = "before"


class EvalTable(DataTable):
    DEFAULT_CSS = """
    EvalTable { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.metric_names: list[str] = []
        self.results: list[EvalResult] = []
        self._best_row: str | None = None

    def reset(self) -> None:
        self.clear(columns=True)
        self.metric_names = []
        self.results = []
        self._best_row = None

    def truncate(self, step: int) -> None:
        """Keep the rows up to `step` (a resumed run evaluates the later steps again)."""
        kept = [r for r in self.results if r.step <= step]
        if len(kept) < len(self.results):
            self.reset()
            for result in kept:
                self.add_result(result)

    def add_result(self, result: EvalResult) -> None:
        if not self.metric_names:
            self.metric_names = list(result.metrics)
            self.add_column("step", key="step")
            self.add_column("epoch", key="epoch")
            for name in self.metric_names:
                self.add_column(Text(safe_text(name, one_line=True)), key=name)  # a name from events.jsonl
            self.add_column("", key="best")
        self.results.append(result)
        key = str(self.row_count)
        cells = [str(result.step), f"{result.epoch:.2f}"]
        cells += [format_metric(result.metrics[n], n) if n in result.metrics else "-" for n in self.metric_names]
        cells.append(BEFORE if result.before_training else BEST if result.is_best else "")
        # Text, not str: no markup to parse (a run's history adds hundreds); escaped: an events.jsonl's
        self.add_row(*(Text(safe_text(cell, one_line=True)) for cell in cells), key=key)
        if result.is_best:
            if self._best_row is not None:
                self.update_cell(self._best_row, "best", Text(""))
            self._best_row = key

    def rows_as_text(self) -> list[list[str]]:
        """The cells of every row as shown (for tests and for copying)."""
        return [[str(cell) for cell in self.get_row_at(i)] for i in range(self.row_count)]
