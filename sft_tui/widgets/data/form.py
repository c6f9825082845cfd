"""Checking what is typed into the data form, field by field, with the config's own rules.

The rules (max_length >= 8, 0 <= val_ratio < 1, ...) live in core.config's pydantic models; the
form asks them rather than repeating them, so the message next to a field is the one the config
file would give.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from core.config import DataConfig


def check_data_field(current: DataConfig, name: str, text: str) -> tuple[Any, str | None]:
    """The typed `text` of DataConfig field `name` as its value, or None and why it is not valid."""
    values = current.model_dump()
    values[name] = text.strip()
    try:
        return getattr(DataConfig.model_validate(values), name), None
    except ValidationError as err:
        problems = [e for e in err.errors() if e["loc"][:1] == (name,)] or err.errors()
        return None, problems[0]["msg"]
