"""Validation errors worded for the person who wrote the config.

pydantic says "Input should be greater than 0" at a location tuple; a user needs the dotted field
(`optim.lr`), what they gave, what to do about it and, for a misspelt field, the field they meant.
The app's forms need the same problems by field. This module turns a ValidationError into one
UserError with all three.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from core.errors import UserError


def validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> UserError:
    """A validation error as a UserError: the message has one line per problem (the dotted field,
    what is wrong, what was given), the hint what to do about each, and `fields` the same problems by
    dotted field, so that a form marks its own field without reading the message back."""
    lines, hints, fields_wrong = [], [], {}
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg, hint = e["msg"].removeprefix("Value error, "), _hint(path, e)
        if e["type"] == "extra_forbidden":
            fields = _section_fields(root, e["loc"]) if err.title == root.__name__ else []
            close = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
            section = path.rpartition(".")[0]
            msg = f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"
            hint = (f"rename it to {section + '.' if section else ''}{close[0]}" if close else
                    f"remove it, or use one of the fields of {section or 'the top level'}: {', '.join(fields)}"
                    if fields else "remove it, or check its spelling: `sft-tui init` writes an example")
        elif "input" in e and e["type"] != "missing" and e["loc"]:  # a whole-config check: no dump
            msg = f"{msg} (got {_short(e['input'])})"
        lines.append(f"{path}: {msg}")
        field = (e.get("ctx") or {}).get("field", path)
        fields_wrong[field] = f"{fields_wrong[field]}\n{msg}" if field in fields_wrong else msg
        if hint not in hints:
            hints.append(hint)
    return UserError(f"invalid {source}:\n  " + "\n  ".join(lines), "; ".join(hints), fields_wrong)


def _hint(path: str, e: dict) -> str:
    """What to do about one pydantic error: the validator's own hint, else one made from what is allowed."""
    if hint := (e.get("ctx") or {}).get("hint"):
        return hint
    kind = e["type"]
    if kind == "missing":
        return f"add {path}"
    if kind == "string_type":
        typed = f"--set '{path}=\"{e.get('input')}\"'"
        return (f"set {path} to text (in YAML, quote a value that would read as a number or true/false; "
                f"on the command line: {typed})")
    if kind in ("bool_type", "bool_parsing"):
        return f"set {path} to true or false"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"write {path} as a section: its fields as `key: value` lines indented below it"
    expected = e["msg"].removeprefix("Input should be ")
    if expected != e["msg"]:
        if kind != "literal_error":  # "a valid integer, unable to parse ...": the part before the why
            expected = expected.split(", ")[0]
        return f"set {path} to {'a value ' if expected.startswith(('greater', 'less')) else ''}{expected}"
    return f"fix {path}"


def _section_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the section of `model` that holds the field at `loc`, to suggest the one meant."""
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list of sections (freeze.rules)
            continue
        field = model.model_fields.get(part)
        sections = [t for t in (field.annotation, *get_args(field.annotation))
                    if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
