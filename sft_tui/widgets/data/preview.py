"""The first training rows as the model sees them, one per table row, and the highlighted row in
full below the table (the cells are cut to one line)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from sft_tui.format.data import preview, row_detail

PREVIEW_ROWS = 20


class DataPreview(Vertical):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shown: tuple | None = None
        """The (data, tokenizer) the table shows; it is refilled only when they change."""

    def compose(self) -> ComposeResult:
        yield DataTable(id="data-preview", cursor_type="row", zebra_stripes=True)
        # A long chat row is scrolled (and opens at its first trained token), not cut at the box's height.
        with VerticalScroll(id="data-row-detail"):
            yield Static(id="data-row-text")

    def show(self, data, tokenizer) -> None:
        """The rows of `data` (core.data.PreparedData) decoded with `tokenizer`; none while the
        tokenizer is unknown."""
        if self.shown is not None and all(a is b for a, b in zip(self.shown, (data, tokenizer))):
            return
        self.shown = (data, tokenizer)
        table = self.query_one(DataTable)
        table.clear(columns=True)
        if tokenizer is not None:
            columns, rows = preview(data, tokenizer, PREVIEW_ROWS)
            for label, width in columns:
                table.add_column(label, width=width)
            table.add_rows(rows)

    def reset(self) -> None:
        self.shown = None
        self.query_one(DataTable).clear(columns=True)
        self.query_one("#data-row-text", Static).update("")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        detail = self.query_one("#data-row-text", Static)
        if self.shown is None or self.shown[1] is None:
            detail.update("")
            return
        data, tokenizer = self.shown
        text, trained_at = row_detail(data, tokenizer, event.cursor_row)
        detail.update(text)
        self.call_after_refresh(self._scroll_to, text, trained_at)

    def _scroll_to(self, text: Text, offset: int) -> None:
        """Scroll the row detail so that the line holding character `offset` of `text` (the first
        trained token) is the second line shown, the line before it giving its context."""
        width = self.query_one("#data-row-text", Static).content_size.width
        line = len(text[:offset].wrap(self.app.console, width)) - 1 if offset and width else 0
        self.query_one("#data-row-detail", VerticalScroll).scroll_to(y=max(0, line - 1), animate=False)
