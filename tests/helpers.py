"""Small helpers several test modules share (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

WORDS = "red green blue cat dog bird sun moon tree rock".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def visible_text(app) -> str:
    """The current screen as the terminal shows it, in plain text (as Textual's own screenshots
    render it): what scrolled or was clipped away is not in it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()
