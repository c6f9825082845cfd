"""The characters that a terminal acts on or does not show: the one list behind the config's refusal
of them (core.config_sections) and the front ends' escaping of text read from files
(sft_tui.format.safe). Text from a file may come from anyone: ESC sequences set a terminal's title,
clear it or write its clipboard, and direction marks or invisible characters show a name in an order,
or with parts, other than its own.
"""

from __future__ import annotations

from typing import Any

CONTROLS = frozenset((*range(0x20), *range(0x7F, 0xA0)))
"""C0 and C1 control characters, the line breaks among them."""
LINE_BREAKS = frozenset(map(ord, "\t\n\r"))
"""The controls multi-line text (a chat template) holds."""
DIRECTION_MARKS = frozenset((0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))
INVISIBLE = frozenset((0x200B, 0x200C, 0x200D, *range(0x2060, 0x2065), 0xFEFF))
"""Zero-width characters: they hide a part of a name, and are escaped where it is shown."""
UNSHOWN = CONTROLS | DIRECTION_MARKS | INVISIBLE
"""What text from a file is shown with escaped (sft_tui.format.safe)."""
_REFUSED = (CONTROLS - LINE_BREAKS) | DIRECTION_MARKS


def holds_controls(value: Any) -> bool:
    """Whether a config value (a str, or lists and dicts of them) holds a control character other
    than a line break, or a direction mark: the config refuses those (core.config_sections)."""
    if isinstance(value, str):
        return any(ord(c) in _REFUSED for c in value)
    if isinstance(value, (list, tuple)):
        return any(holds_controls(item) for item in value)
    if isinstance(value, dict):
        return any(holds_controls(key) or holds_controls(item) for key, item in value.items())
    return False
