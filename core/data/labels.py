"""Text-label data (classification): the class names, each row's label, and the encoder.

The class names are read once from the training rows and then fixed: validation rows are mapped
onto them, and the model's head is sized by them. A label column holds what users get wrong most
often (numbers next to strings, lists, a single class), so reading it has its own messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.data.encoding import Context, Encoded, is_blank, is_missing, token_ids
from core.data.examples import Example
from core.errors import UserError

if TYPE_CHECKING:
    import datasets


def label_values(ds: datasets.Dataset, column: str, source: str) -> list[str | None]:
    """Label strings of a column, without surrounding spaces; None for a missing or blank label.
    Integer ClassLabel columns give their names.

    A JSON column may hold values of several types (1 and "positive"); their strings would become
    separate classes without a word, so mixed types are an error.
    """
    import datasets

    values = list(ds[column])
    feature = ds.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return [None if is_missing(v) else feature.int2str(int(v)) for v in values]
    by_type: dict[str, list[Any]] = {}
    for v in values:
        if isinstance(v, (list, dict)):
            raise UserError(
                f"data.columns.label: column {column!r} holds {type(v).__name__} values; "
                "classification needs one label per row",
                "point data.columns.label at a column with one string or integer per row",
            )
        if not is_blank(v):
            seen = by_type.setdefault(type(v).__name__, [])
            if len(seen) < 3 and v not in seen:
                seen.append(v)
    if len(by_type) > 1:
        kinds = " and ".join(f"{kind} ({', '.join(map(repr, seen))})" for kind, seen in by_type.items())
        raise UserError(
            f"data.columns.label: the label column {column!r} of {source} mixes value types: {kinds}",
            "use one type for every label (all strings or all integers), so that each class is written one way",
        )
    return [None if is_blank(v) else str(v).strip() for v in values]


def label_names(ds: datasets.Dataset, column: str, source: str) -> list[str]:
    """Sorted unique training labels (integers numerically, so "10" comes after "9")."""
    names = sorted({v for v in label_values(ds, column, source) if v is not None}, key=_label_order)
    if len(names) < 2:
        raise UserError(
            f"data.train: the label column {column!r} has {len(names)} distinct value(s) ({', '.join(names)}); "
            "classification needs at least two",
            "check data.columns.label, or use data with more than one class; the classes are counted after "
            "data.max_rows and the rows held out for validation (data.val_ratio) are taken",
        )
    return names


def some_labels(names: list[str], shown: int = 8) -> str:
    """The first class names and how many there are: a label column of scores or ids has thousands."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, … ({len(names):,} in all)"


def many_labels_warning(names: list[str], rows: int, column: str) -> str | None:
    """Decimal scores or ids as labels make a class of each value: said before the head is sized by them."""
    if len(names) > max(20, rows // 2):
        return (f"the label column {column!r} has {len(names):,} distinct values in {rows:,} training rows "
                f"({some_labels(names, 5)}): each value becomes a class; check that it holds categories, "
                "not scores or ids")
    return None


def _label_order(label: str) -> tuple[int, int, str]:
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def encode_text_label(ds: datasets.Dataset, ctx: Context, split: str) -> Encoded:
    """The text with the tokenizer's framing (e.g. [CLS] ... [SEP]) and its label's class id."""
    out = Encoded()
    index = {name: i for i, name in enumerate(ctx.labels)}
    rows = []
    for text, label in zip(ds[ctx.columns.text], label_values(ds, ctx.columns.label, ctx.sources[split])):
        if is_blank(text) or label is None:
            out.dropped["the text or the label is empty"] += 1
        elif label not in index:
            where = "the rows held out for validation (data.val_ratio)" if ctx.held_out else "the validation data"
            raise UserError(
                f"{split} label {label!r} is not among the training labels ({some_labels(ctx.labels)})",
                f"{label!r} occurs only in {where}; add training rows with it, or remove those rows",
            )
        else:
            rows.append((ctx.cut(out, str(text))[0], index[label]))
    for (text, label), ids in zip(rows, token_ids(ctx.tokenizer, [t for t, _ in rows], special=True)):
        if len(ids) > ctx.max_length:
            ids = ctx.tokenizer(text, truncation=True, max_length=ctx.max_length)["input_ids"]
            out.truncated += 1
        out.examples.append(Example(ids, label))
    return out
