"""Which format rows are in (chat, prompt-completion, text-label, plain text) and which column
plays each role. It reads the column names alone, with no tokenizer and no row, so a client can
ask it on its own (the results of a finished run do, to tell whether it trained on chat data).
"""

from __future__ import annotations

from core.config import ColumnMap, DataConfig, example_config
from core.errors import UserError

# Column names each role is detected from, in order of preference (matched case-insensitively).
_SYNONYMS = {
    "messages": ("messages", "conversations"),
    "prompt": ("prompt", "instruction", "question", "input"),
    "completion": ("completion", "response", "output", "answer"),
    "text": ("text", "sentence", "content", "review"),
    "label": ("label", "labels", "class", "category", "sentiment"),
}
# Formats in detection order, with the roles each one needs.
_FORMAT_ROLES = {
    "chat": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "text-label": ("text", "label"),
    "text": ("text",),
}
_TASK_FORMATS = {"classification": ("text-label",), "causal-lm": ("prompt-completion", "chat", "text")}


def column_list(columns: list[str]) -> str:
    """Column names for a message; one with spaces around it quoted, or `label ` reads as `label`."""
    return ", ".join(name if name == name.strip() else repr(name) for name in columns)


def detect_format(column_names: list[str], task: str, data: DataConfig) -> tuple[str, ColumnMap]:
    """The row format and the column that plays each of its roles.

    Explicit `data.columns` entries always win over names found by synonym, which never pick a column
    an explicit entry names (text: label found label again for the label); `data.format` other
    than "auto" skips detection. The result must fit the task: classification reads text-label
    rows, causal LM reads prompt-completion, chat or plain text.
    """
    columns = list(column_names)
    available = column_list(columns)
    explicit = data.columns.model_dump()
    for role, column in explicit.items():
        if column is not None and column not in columns:
            raise UserError(
                f"data.columns.{role}: column {column!r} not found; columns are: {available}",
                f"set data.columns.{role} to one of those columns",
            )
    lowered = {c.lower(): c for c in reversed(columns)}
    taken = {column for column in explicit.values() if column}  # a role the user gave a column keeps it
    found = {
        role: explicit[role] or next((lowered[s] for s in names if s in lowered and lowered[s] not in taken), None)
        for role, names in _SYNONYMS.items()
    }
    fmt = data.format
    if fmt == "auto":
        fmt = next((f for f, roles in _FORMAT_ROLES.items() if all(found[r] for r in roles)), None)
        if fmt is None:
            raise UserError(
                f"data.train: cannot tell the data format of {data.train} from its columns: {available}",
                "set data.format and data.columns (e.g. data.columns.text and data.columns.label)",
            )
    allowed = _TASK_FORMATS[task]
    if fmt not in allowed:
        if task == "classification":
            hint = "set task: causal-lm, or data.columns.text and data.columns.label for classification"
        elif found["text"]:
            hint = (f"choose causal-LM data (the bundled demo: {example_config(task).data.train}), set task: "
                    f"classification, or set data.format: text to train on the {found['text']!r} column alone")
        else:
            hint = f"set data.format to auto or one of: {', '.join(allowed)}; or set task: classification"
        detected = "the detected format" if data.format == "auto" else "format"
        raise UserError(
            f"data.format: {detected} {fmt!r} does not fit task {task!r}, which reads: {', '.join(allowed)}", hint
        )
    for role in _FORMAT_ROLES[fmt]:
        if found[role] is None:
            raise UserError(
                f"data.columns.{role}: no {role} column found for format {fmt!r}; columns are: {available}",
                f"set data.columns.{role} to the column that holds the {role}",
            )
    return fmt, ColumnMap(**{role: found[role] for role in _FORMAT_ROLES[fmt]})


def unused_columns(column_names: list[str], fmt: str, cols: ColumnMap) -> list[str]:
    """Warnings for columns named like a role of the format that another column plays: Alpaca's
    instruction/input/output trained on the instruction and the output, and its input went unread."""
    used = set(cols.model_dump(exclude_none=True).values())
    warnings = []
    for role in _FORMAT_ROLES[fmt]:
        for column in column_names:
            if column not in used and column.lower() in _SYNONYMS[role]:
                warnings.append(
                    f"column {column!r} is not read: the {role} is column {getattr(cols, role)!r}; to train on "
                    f"both, join them into one column before loading, or set data.columns.{role}")
    return warnings
