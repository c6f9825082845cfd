"""A load or input error shown in place, under what caused it, with the hint that says what to do."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from sft_tui.format.safe import safe_text


class ErrorLine(Static):
    """Hidden until there is an error to show (an empty one would still draw its red bar)."""

    DEFAULT_CSS = """
    ErrorLine { display: none; height: auto; padding: 0 1; border-left: thick $error; color: $text-error; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(markup=False, **kwargs)

    def show(self, message: str | None, hint: str = "") -> None:
        """The message in bold and its hint below; None hides the line. A load's message may quote the
        file (a data set's columns), so control characters are escaped."""
        self.display = message is not None
        if message is not None:
            self.update(Text.assemble((safe_text(message), "bold"), *(("\nhint: ", safe_text(hint)) if hint else ())))
