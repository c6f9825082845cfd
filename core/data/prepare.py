"""`prepare_data`: from a RunConfig and a tokenizer to `PreparedData`, the one call the engine,
the data screen and the benchmark make.

It strings the other modules together (load, detect, split, encode), then does what needs every
row at once: the warnings about cut and dropped rows, packing, and the statistics.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from core.config import ColumnMap, RunConfig
from core.data.chat import encode_chat
from core.data.encoding import (
    CHARS_PER_TOKEN,
    Context,
    Encoded,
    encode_prompt_completion,
    encode_text,
)
from core.data.examples import DataStats, Example, PreparedData
from core.data.formats import column_list, detect_format, unused_columns
from core.data.labels import encode_text_label, label_names, many_labels_warning
from core.data.sources import load_raw, split_files_warning
from core.errors import UserError
from core.loss import IGNORE_INDEX, trained_tokens
from core.vocab_plan import used_ids

if TYPE_CHECKING:
    import datasets

_ENCODERS = {
    "text-label": encode_text_label,
    "prompt-completion": encode_prompt_completion,
    "chat": encode_chat,
    "text": encode_text,
}
"""The encoder of each row format."""


def prepare_data(config: RunConfig, tokenizer: Any, max_positions: int | None = None) -> PreparedData:
    """Load, split, detect and tokenize the data of `config` for `tokenizer`.

    `max_positions` is the model's position limit; a larger `data.max_length` is clipped to it.
    """
    data = config.data
    warnings: list[str] = []
    max_length = data.max_length
    if max_positions is not None and max_length > max_positions:
        warnings.append(
            f"data.max_length {max_length} is beyond the model's {max_positions} positions; clipped to {max_positions}"
        )
        max_length = max_positions

    train_ds, val_ds = load_raw(data)
    if split_files := split_files_warning(data.train):
        warnings.append(split_files)
    fmt, cols = detect_format(train_ds.column_names, config.task, data)
    held_out = False
    if val_ds is not None:
        _check_columns(val_ds.column_names, cols)
    elif data.val_ratio > 0:
        train_ds, val_ds = _hold_out(train_ds, data.val_ratio, config.seed)
        held_out = True
    rows_in = {"train": len(train_ds), "validation": len(val_ds) if val_ds is not None else 0}

    sources = {"train": data.train, "validation": data.validation or data.train}
    labels = label_names(train_ds, cols.label, sources["train"]) if fmt == "text-label" else None
    if labels and (many := many_labels_warning(labels, rows_in["train"], cols.label)):
        warnings.append(many)
    warnings += unused_columns(train_ds.column_names, fmt, cols)
    encode = _ENCODERS[fmt]
    context = Context(tokenizer, max_length, cols, labels, data.chat_template, held_out, sources)
    train = encode(train_ds, context, "train")
    validation = encode(val_ds, context, "validation") if val_ds is not None else Encoded()

    for split, name, encoded in (("train", "training", train), ("validation", "validation", validation)):
        if encoded.cut:
            warnings.append(
                f"cut {encoded.cut} of {rows_in[split]} {name} rows to {context.max_chars} characters before "
                f"tokenizing ({CHARS_PER_TOKEN} per token of data.max_length); the rest lies beyond max_length"
            )
    _check_trainable(train, rows_in["train"], max_length, fmt, warnings)
    if validation.dropped:
        warnings.append(_dropped_note("validation", validation.dropped, rows_in["validation"]))
    if rows_in["validation"] and not validation.examples:
        warnings.append("no validation row is left after tokenization; evaluation will be skipped")

    train_examples = train.examples
    if data.packing:
        train_examples = _pack(train_examples, max_length)
    stats = _stats(rows_in, train, validation, len(train_examples), labels)
    return PreparedData(train_examples, validation.examples, fmt, cols, labels, stats, warnings,
                        used_ids(train_examples, tokenizer.pad_token_id))


def _check_columns(names: list[str], cols: ColumnMap) -> None:
    for role, column in cols.model_dump(exclude_none=True).items():
        if column not in names:
            raise UserError(
                f"data.validation: column {column!r} (the {role} column of the training data) not found; "
                f"columns are: {column_list(names)}",
                "give validation data with the same columns as the training data",
            )


def _hold_out(ds: datasets.Dataset, ratio: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        parts = ds.train_test_split(test_size=ratio, seed=seed)
    except ValueError:
        raise UserError(
            f"data.val_ratio: {len(ds)} training rows are too few to hold out {ratio:.0%} for validation",
            "add rows, give data.validation, or set data.val_ratio: 0",
        ) from None
    return parts["train"], parts["test"]


def _dropped_note(split: str, dropped: Counter[str], total: int) -> str:
    reasons = "; ".join(f"{n}: {why}" for why, n in dropped.most_common())
    return f"dropped {sum(dropped.values())} of {total} {split} rows with nothing to train on ({reasons})"


def _check_trainable(train: Encoded, total: int, max_length: int, fmt: str, warnings: list[str]) -> None:
    """No training row left is an error that says why; some rows lost is a warning."""
    if not train.examples:
        reasons = "; ".join(f"{n} rows: {why}" for why, n in train.dropped.most_common())
        hint = (
            "check data.columns.text and data.columns.label: they may point at empty columns"
            if fmt == "text-label" else
            f"raise data.max_length (now {max_length}), and check data.columns: the prompt/answer or messages "
            "column may be the wrong one"
        )
        raise UserError(f"none of the {total} training rows has a token to train on ({reasons})", hint)
    if train.dropped:
        warnings.append(_dropped_note("training", train.dropped, total))


def _pack(examples: list[Example], block: int) -> list[Example]:
    """Pack whole rows, in order, into blocks of up to `block` tokens: a row that does not fit in the
    current block starts the next, so no row is cut and none is dropped. Each row keeps its own
    positions (Example.position_ids restart at 0), from which the model builds a mask that keeps
    attention within the row, and its first token gets no label, as unpacked: the previous row's
    last token does not learn to predict it. So a packed batch trains what the padded rows would,
    with less padding."""
    blocks: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        n = len(example.input_ids)
        if ids and len(ids) + n > block:
            blocks.append(Example(ids, labels, position_ids=positions))
            ids, labels, positions = [], [], []
        ids.extend(example.input_ids)
        labels.extend([IGNORE_INDEX, *example.labels[1:]])
        positions.extend(range(n))
    if ids:
        blocks.append(Example(ids, labels, position_ids=positions))
    return blocks


def _stats(rows_in: dict[str, int], train: Encoded, validation: Encoded, train_out: int,
           labels: list[str] | None) -> DataStats:
    lengths = sorted(len(e.input_ids) for e in train.examples)
    label_counts = None
    loss_tokens = 0
    if labels is not None:
        counts = Counter(e.labels for e in train.examples)
        label_counts = {name: counts[i] for i, name in enumerate(labels)}
    else:
        loss_tokens = sum(trained_tokens(e.labels) for e in train.examples)
    return DataStats(
        rows_in=rows_in,
        rows_out={"train": train_out, "validation": len(validation.examples)},
        rows_truncated={"train": train.truncated, "validation": validation.truncated},
        rows_dropped={"train": sum(train.dropped.values()), "validation": sum(validation.dropped.values())},
        length_min=lengths[0],
        length_mean=sum(lengths) / len(lengths),
        length_p50=_percentile(lengths, 0.5),
        length_p95=_percentile(lengths, 0.95),
        length_max=lengths[-1],
        tokens_total=sum(lengths),
        loss_tokens=loss_tokens,
        label_counts=label_counts,
    )


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
