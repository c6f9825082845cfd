"""Text read from files made safe to show in a terminal: the one rule for every place that shows it.

Run-folder names, events.jsonl messages, dataset column names and cells, config strings (model
and run names): whoever can write those files could put terminal control sequences in them, and
neither Rich nor Textual removes ESC or CSI (0x9b) from what they draw. `ESC ] 0 ;` would set the
window title, `ESC [ 2 J` clear the screen, and `ESC ] 52 ;` replace the clipboard with a command
for the user to paste. So every C0 and C1 control character (and DEL), except newline and tab, is
shown as its escape (`\\x1b`, `\\r`): the text stays recognisable and nothing in it reaches the
terminal as a command.

Markup is the other half: text from files goes to Rich and Textual as a `rich.text.Text` (or
through `rich.markup.escape` where it sits in markup), never as a `str` they would read
`[link=...]` or `[bold]` from.
"""

from __future__ import annotations

from core.unshown import UNSHOWN

_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in UNSHOWN}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ONE_LINE = {code: escape for code, escape in _ESCAPES.items() if code != ord("\t")}
"""Tab is kept: it moves the cursor, nothing more. Newline is escaped where the text has one line."""
_LINES = {code: escape for code, escape in _ONE_LINE.items() if code != ord("\n")}


def safe_text(value: object, one_line: bool = False) -> str:
    """`value` as text with its control characters shown as escapes; newlines are kept, unless
    `one_line` (a table cell, a name on a line of its own), where a newline would break the layout.
    Any value is taken, since an events.jsonl may hold a number or a list where a name belongs."""
    return str(value).translate(_ONE_LINE if one_line else _LINES)
