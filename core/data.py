"""Training data: load rows, detect their format, tokenize them with loss masks, and plan batches.

`prepare_data` turns a RunConfig into plain lists of token ids (`Example`s), so the engine never
touches `datasets` and everything after this module is cheap and deterministic: `batch_plan` gives
the same batch order for the same (seed, epoch), which is what lets a run resume mid-epoch by
skipping the batches it already trained on. `datasets` and `torch` are imported inside the
functions that need them, so importing this module (as the app does at start-up) stays light.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import ColumnMap, DataConfig, RunConfig
from core.errors import UserError

if TYPE_CHECKING:
    import datasets
    import torch

IGNORE_INDEX = -100
"""Label of a token that carries no loss (the value PyTorch's cross-entropy skips)."""

_DEMO_DIR = files("core") / "demo_data"
DEMO_DATASETS = {
    "demo:sentiment": Path(str(_DEMO_DIR / "sentiment.jsonl")),
    "demo:instructions": Path(str(_DEMO_DIR / "instructions.jsonl")),
}
"""Bundled demo data: text-label reviews for classification, prompt-completion tasks for causal LM."""

# File kind per extension; .tsv is read by the csv builder with a tab separator.
_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_EXTENSIONS = ", ".join(_KINDS)
_CHUNK = 1 << 20

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
CHARS_PER_TOKEN = 32
"""Characters kept per token of data.max_length when a text field is cut before tokenizing.

Tokenizing a 50 MB field costs minutes and gigabytes, all for tokens that truncation then throws
away. English averages about 4 characters a token, code and other languages fewer; 32 leaves room
for runs of long tokens (indentation, "-----" rules, whitespace a BERT tokenizer drops), so for any
normal text the cut never reaches what truncation to max_length tokens would keep.
"""
_TASK_FORMATS = {"classification": ("text-label",), "causal-lm": ("prompt-completion", "chat", "text")}
# ShareGPT-style turns ({"from": "human", "value": ...}) are mapped onto role/content.
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


@dataclass(slots=True)
class Example:
    """One tokenized row.

    `labels` is a class id for classification, and for causal LM one target per token with -100
    where no loss is taken. Causal-LM validation rows also carry what sample generation needs: the
    prompt's token ids (ready to feed `generate`), the prompt as text for display, and the
    reference answer.
    """

    input_ids: list[int]
    labels: list[int] | int
    prompt_ids: list[int] | None = None
    prompt_text: str | None = None
    reference: str | None = None


@dataclass
class DataStats:
    """What tokenization did, for the data screen and the run log.

    Per-split counts are keyed "train" and "validation". Token lengths and totals are of the
    training rows before packing; with packing, rows_out["train"] counts blocks.
    """

    rows_in: dict[str, int]
    rows_out: dict[str, int]
    rows_truncated: dict[str, int]
    rows_dropped: dict[str, int]
    length_min: int
    length_mean: float
    length_p50: int
    length_p95: int
    length_max: int
    tokens_total: int
    """Real (non-padding) tokens in the training rows."""
    loss_tokens: int
    """Causal LM: training tokens that carry loss; 0 for classification."""
    label_counts: dict[str, int] | None
    """Classification: training rows per label."""


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    format: str
    columns: ColumnMap
    labels: list[str] | None
    """Classification: the label names; class id i is labels[i]."""
    stats: DataStats
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- loading


def load_raw(data: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Load the training rows (capped at `max_rows`, the first rows) and the validation rows.

    A named `validation` dataset reads `validation_split` (default "validation"); `validation_split`
    alone reads that split of the training dataset. Validation is None when neither is set;
    `prepare_data` then holds out `val_ratio` of the training rows.
    """
    train = _load_source(data.train, "data.train", data.subset, data.train_split)
    if data.max_rows is not None and len(train) > data.max_rows:
        train = train.select(range(data.max_rows))
    if data.validation is not None:
        split = data.validation_split or "validation"
        return train, _load_source(data.validation, "data.validation", data.subset, split)
    if data.validation_split is not None:
        if _is_local(data.train):
            raise UserError(
                f"data.validation_split applies to a `datasets` name, but data.train ({data.train}) is local",
                "set data.validation to a validation file, or unset data.validation_split",
            )
        return train, _load_source(data.train, "data.validation_split", data.subset, data.validation_split)
    return train, None


def _is_local(source: str) -> bool:
    """Demo names and anything that looks like a path are read from disk, never from the cache."""
    path = Path(source).expanduser()
    return (
        source.startswith(("demo:", ".", "/", "~"))
        or "\\" in source
        or path.suffix.lower() in _KINDS
        or path.exists()
    )


def _load_source(source: str, field_name: str, subset: str | None, split: str) -> datasets.Dataset:
    if source.startswith("demo:"):
        if source not in DEMO_DATASETS:
            raise UserError(f"{field_name}: unknown demo dataset {source!r}", f"use one of: {', '.join(DEMO_DATASETS)}")
        return _load_files([DEMO_DATASETS[source]], field_name)
    if _is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"{field_name}: file {source} does not exist",
                "check the path; a relative path starts from the folder sft-tui was started in",
            )
        return _load_files(_data_files(path, field_name), field_name)
    return _load_named(source, field_name, subset, split)


def _data_files(path: Path, field_name: str) -> list[Path]:
    """The file itself, or the supported files of a folder (recursively, sorted), all of one kind."""
    if path.is_file():
        if path.suffix.lower() not in _KINDS:
            raise UserError(
                f"{field_name}: {path} has the unsupported extension {path.suffix or '(none)'!r}",
                f"use one of: {_EXTENSIONS}",
            )
        return [path]
    found = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in _KINDS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise UserError(f"{field_name}: folder {path} holds no data files", f"put {_EXTENSIONS} files in it")
    kinds = sorted({_KINDS[p.suffix.lower()] for p in found})
    if len(kinds) > 1:
        raise UserError(
            f"{field_name}: folder {path} mixes file kinds ({', '.join(kinds)})",
            "keep one kind of file per folder",
        )
    return found


def _check_text_file(path: Path, field_name: str) -> None:
    """Fail early, naming the byte, if a text file is not UTF-8 or holds nothing but whitespace.

    `datasets` would report the first as an opaque parser error and the second as StopIteration.
    The file is streamed in chunks, so size does not matter.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line, has_content = 0, 1, False
    try:
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(_CHUNK)
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as err:
                    # err.object is the decoder's pending bytes from the last chunk plus this chunk.
                    bad = offset - (len(err.object) - len(chunk)) + err.start
                    line += chunk[: max(0, bad - offset)].count(b"\n")
                    raise UserError(
                        f"{field_name}: {path} is not UTF-8 text: "
                        f"byte offset {bad} (line {line}) is {err.object[err.start]:#04x}",
                        "re-save the file as UTF-8",
                    ) from None
                if not chunk:
                    break
                has_content = has_content or bool(chunk.strip())
                line += chunk.count(b"\n")
                offset += len(chunk)
    except OSError as err:
        raise UserError(f"{field_name}: cannot read {path}: {err.strerror}") from None
    if not has_content:
        raise UserError(f"{field_name}: {path} is empty (no rows)", "point at a file with data rows")


def _load_files(paths: list[Path], field_name: str) -> datasets.Dataset:
    import datasets

    kind = _KINDS[paths[0].suffix.lower()]
    if kind != "parquet":
        for path in paths:
            _check_text_file(path, field_name)
    # The app owns the terminal; datasets' progress bars would draw over it.
    datasets.disable_progress_bars()
    with _datasets_silenced():
        try:
            ds = _read_files(paths, kind)
        except Exception as err:  # noqa: BLE001 - parsers raise many types; all mean "this file is unreadable"
            raise _read_error(paths, kind, field_name, err) from None
    if len(ds) == 0:
        raise UserError(f"{field_name}: {_names(paths)} has no rows", "point at a file with data rows")
    return ds


def _read_files(paths: list[Path], kind: str) -> datasets.Dataset:
    """The rows of local files through `Dataset.from_*`, not `load_dataset`: the latter pings the Hub
    to count a download on every load unless HF_HUB_OFFLINE is set, and local data must never touch
    the network. This leaves the user's settings for named datasets as they are."""
    from datasets import Dataset

    files = [str(p) for p in paths]
    if kind == "json":
        return Dataset.from_json(files)
    if kind == "parquet":
        return Dataset.from_parquet(files)
    return Dataset.from_csv(files, sep="\t" if kind == "tsv" else ",")


@contextlib.contextmanager
def _datasets_silenced() -> Iterator[None]:
    """Mute the `datasets` logger while local files load: on a bad file its readers log the raw
    parser error (which the front ends would print, some twice) before raising, and every such
    failure becomes a UserError that names the file and line instead."""
    lib = logging.getLogger("datasets")
    level = lib.level
    lib.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        lib.setLevel(level)


def _folder(paths: list[Path]) -> Path:
    """The folder the files were found in (they may lie in its subfolders)."""
    return Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent


def _names(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{_folder(paths)} ({len(paths)} files)"


def _read_error(paths: list[Path], kind: str, field_name: str, err: Exception) -> UserError:
    """Turn a `datasets` load failure into a message that names the file and, for JSON, the line.

    When several files fail together, each is read alone (this is the failure path, so the cost
    does not matter) to name the one that is broken, or the columns that differ between them.
    """
    if kind == "json":
        for path in paths:
            problem = _first_json_problem(path)
            if problem:
                return UserError(f"{field_name}: {path} {problem}", "fix that line (one JSON object per line)")
    if isinstance(err, ValueError) and "corresponds to no data" in str(err):
        return UserError(f"{field_name}: {_names(paths)} has no rows", "point at a file with data rows")
    if len(paths) > 1:
        return _folder_error(paths, kind, field_name) or _read_error(paths[:1], kind, field_name, err)
    cause = err.__cause__ or err
    return UserError(f"{field_name}: cannot read {_names(paths)}: {cause}", f"check that it is valid {kind.upper()}")


def _folder_error(paths: list[Path], kind: str, field_name: str) -> UserError | None:
    """The first file of a folder that fails on its own, or which files have which columns."""
    folder = _folder(paths)
    groups: dict[tuple[str, ...], list[str]] = {}
    for path in paths:
        try:
            columns = tuple(_read_files([path], kind).column_names)
        except Exception as err:  # noqa: BLE001 - as in _load_files
            return _read_error([path], kind, field_name, err)
        groups.setdefault(columns, []).append(str(path.relative_to(folder)))
    if len(groups) < 2:
        return None
    listing = "; ".join(
        f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''} "
        f"{'has' if len(names) == 1 else 'have'} columns {', '.join(columns)}"
        for columns, names in groups.items()
    )
    return UserError(
        f"{field_name}: the files in folder {folder} do not have the same columns: {listing}",
        "all files in a folder must share their columns; move the others out, or point at one file",
    )


def _first_json_problem(path: Path) -> str | None:
    """Where a .json/.jsonl file stops being valid: "line N: ..." (a JSON array is parsed whole)."""
    with path.open(encoding="utf-8") as fh:
        head = fh.read(_CHUNK).lstrip()
    if head.startswith("["):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            return f"line {err.lineno}: malformed JSON: {err.msg}"
        return None
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                return f"line {number}: malformed JSON: {err.msg} (column {err.colno})"
            if not isinstance(value, dict):
                return f"line {number}: expected a JSON object, got {type(value).__name__}"
    return None


def _load_named(name: str, field_name: str, subset: str | None, split: str) -> datasets.Dataset:
    """A `datasets` dataset by name; offline (HF_HUB_OFFLINE=1) it must already be in the local cache."""
    import datasets

    datasets.disable_progress_bars()
    label = f"{name!r}" + (f" (subset {subset!r})" if subset else "")
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except (ConnectionError, FileNotFoundError) as err:
        raise UserError(
            f"{field_name}: {label} is neither a local file nor a dataset in the local `datasets` cache ({err})",
            "check the spelling, give a path to a local file, or download the dataset once while online",
        ) from None
    except ValueError as err:  # unknown split or subset
        raise UserError(f"{field_name}: cannot load split {split!r} of {label}: {err}",
                        "set data.subset / data.train_split / data.validation_split") from None
    if len(ds) == 0:
        raise UserError(f"{field_name}: split {split!r} of {label} has no rows")
    return ds


# ------------------------------------------------------------------------------ format detection


def detect_format(column_names: list[str], task: str, data: DataConfig) -> tuple[str, ColumnMap]:
    """The row format and the column that plays each of its roles.

    Explicit `data.columns` entries always win over names found by synonym; `data.format` other
    than "auto" skips detection. The result must fit the task: classification reads text-label
    rows, causal LM reads prompt-completion, chat or plain text.
    """
    columns = list(column_names)
    available = ", ".join(columns)
    explicit = data.columns.model_dump()
    for role, column in explicit.items():
        if column is not None and column not in columns:
            raise UserError(
                f"data.columns.{role}: column {column!r} not found; columns are: {available}",
                f"set data.columns.{role} to one of those columns",
            )
    lowered = {c.lower(): c for c in reversed(columns)}
    found = {
        role: explicit[role] or next((lowered[s] for s in names if s in lowered), None)
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
            hint = f"set task: classification, or set data.format: text to train on the {found['text']!r} column alone"
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


# ----------------------------------------------------------------------------------- preparation


@dataclass
class _Encoded:
    """Examples of one split plus what happened to the rows that did not make it."""

    examples: list[Example] = field(default_factory=list)
    truncated: int = 0
    cut: int = 0
    """Rows with a field cut to `_Context.max_chars` before tokenizing."""
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass
class _Context:
    tokenizer: Any
    max_length: int
    columns: ColumnMap
    labels: list[str] | None
    chat_template: str | None
    held_out: bool
    """Validation was carved off the training rows (changes the hint of an unknown-label error)."""
    sources: dict[str, str]
    """Where each split's rows come from ("train", "validation"), for messages."""

    @property
    def max_chars(self) -> int:
        return CHARS_PER_TOKEN * self.max_length

    def cut(self, out: _Encoded, *texts: str) -> list[str]:
        """A row's text fields, each cut to max_chars; `out` counts the row if any was cut."""
        if all(len(text) <= self.max_chars for text in texts):
            return list(texts)
        out.cut += 1
        return [text[: self.max_chars] for text in texts]

    def cut_turns(self, out: _Encoded, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The turns within max_chars characters of content, the last one cut to fit; `out` counts
        a cut row. Turns past that budget start beyond data.max_length tokens, so dropping them
        also bounds the work of rendering a conversation of thousands of turns."""
        budget = self.max_chars
        for i, turn in enumerate(turns):
            content = turn["content"]
            if not isinstance(content, str):
                continue
            if len(content) > budget:
                out.cut += 1
                return turns[:i] + ([{**turn, "content": content[:budget]}] if budget else [])
            budget -= len(content)
        return turns


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
    fmt, cols = detect_format(train_ds.column_names, config.task, data)
    held_out = False
    if val_ds is not None:
        _check_columns(val_ds.column_names, cols)
    elif data.val_ratio > 0:
        train_ds, val_ds = _hold_out(train_ds, data.val_ratio, config.seed)
        held_out = True
    rows_in = {"train": len(train_ds), "validation": len(val_ds) if val_ds is not None else 0}

    sources = {"train": data.train, "validation": data.validation or data.train}
    labels = _label_names(train_ds, cols.label, sources["train"]) if fmt == "text-label" else None
    encode = _ENCODERS[fmt]
    context = _Context(tokenizer, max_length, cols, labels, data.chat_template, held_out, sources)
    train = encode(train_ds, context, "train")
    validation = encode(val_ds, context, "validation") if val_ds is not None else _Encoded()

    for split, name, encoded in (("train", "training", train), ("validation", "validation", validation)):
        if encoded.cut:
            warnings.append(
                f"cut {encoded.cut} of {rows_in[split]} {name} rows to {context.max_chars} characters before "
                f"tokenizing ({CHARS_PER_TOKEN} per token of data.max_length); the rest lies beyond max_length"
            )
    _check_trainable(train, rows_in["train"], max_length, warnings)
    if validation.dropped:
        warnings.append(_dropped_note("validation", validation.dropped, rows_in["validation"]))
    if rows_in["validation"] and not validation.examples:
        warnings.append("no validation row is left after tokenization; evaluation will be skipped")

    train_examples = train.examples
    if data.packing:
        train_examples = _pack(train_examples, max_length)
    stats = _stats(rows_in, train, validation, len(train_examples), labels)
    return PreparedData(train_examples, validation.examples, fmt, cols, labels, stats, warnings)


def _check_columns(names: list[str], cols: ColumnMap) -> None:
    for role, column in cols.model_dump(exclude_none=True).items():
        if column not in names:
            raise UserError(
                f"data.validation: column {column!r} (the {role} column of the training data) not found; "
                f"columns are: {', '.join(names)}",
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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _blank(value: Any) -> bool:
    """Missing, or a string of whitespace only: a target made of it trains on the end token alone."""
    return _missing(value) or (isinstance(value, str) and not value.strip())


def _label_values(ds: datasets.Dataset, column: str, source: str) -> list[str | None]:
    """Label strings of a column; integer ClassLabel columns give their names.

    A JSON column may hold values of several types (1 and "positive"); their strings would become
    separate classes without a word, so mixed types are an error.
    """
    import datasets

    values = list(ds[column])
    feature = ds.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return [None if _missing(v) else feature.int2str(int(v)) for v in values]
    by_type: dict[str, list[Any]] = {}
    for v in values:
        if isinstance(v, (list, dict)):
            raise UserError(
                f"data.columns.label: column {column!r} holds {type(v).__name__} values; "
                "classification needs one label per row",
                "point data.columns.label at a column with one string or integer per row",
            )
        if not _missing(v):
            seen = by_type.setdefault(type(v).__name__, [])
            if len(seen) < 3 and v not in seen:
                seen.append(v)
    if len(by_type) > 1:
        kinds = " and ".join(f"{kind} ({', '.join(map(repr, seen))})" for kind, seen in by_type.items())
        raise UserError(
            f"data.columns.label: the label column {column!r} of {source} mixes value types: {kinds}",
            "use one type for every label (all strings or all integers), so that each class is written one way",
        )
    return [None if _missing(v) else str(v) for v in values]


def _label_names(ds: datasets.Dataset, column: str, source: str) -> list[str]:
    """Sorted unique training labels (integers numerically, so "10" comes after "9")."""
    names = sorted({v for v in _label_values(ds, column, source) if v is not None}, key=_label_order)
    if len(names) < 2:
        raise UserError(
            f"data.train: the label column {column!r} has {len(names)} distinct value(s) ({', '.join(names)}); "
            "classification needs at least two",
            "check data.columns.label, or use data with more than one class",
        )
    return names


def _label_order(label: str) -> tuple[int, int, str]:
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def _ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Batched token ids; verbose=False because rows longer than the model are truncated later."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]


def _trainable(labels: list[int]) -> bool:
    """Whether any position carries loss. Position 0 never does: the model predicts token i from
    the tokens before it, so the first label has nothing to be predicted from."""
    return any(label != IGNORE_INDEX for label in labels[1:])


def _encode_text_label(ds: datasets.Dataset, ctx: _Context, split: str) -> _Encoded:
    """The text with the tokenizer's framing (e.g. [CLS] ... [SEP]) and its label's class id."""
    out = _Encoded()
    index = {name: i for i, name in enumerate(ctx.labels)}
    rows = []
    for text, label in zip(ds[ctx.columns.text], _label_values(ds, ctx.columns.label, ctx.sources[split])):
        if _missing(text) or label is None:
            out.dropped["the text or the label is empty"] += 1
        elif label not in index:
            where = "the rows held out for validation (data.val_ratio)" if ctx.held_out else "the validation data"
            raise UserError(
                f"{split} label {label!r} is not among the training labels ({', '.join(ctx.labels)})",
                f"{label!r} occurs only in {where}; add training rows with it, or remove those rows",
            )
        else:
            rows.append((ctx.cut(out, str(text))[0], index[label]))
    for (text, label), ids in zip(rows, _ids(ctx.tokenizer, [t for t, _ in rows], special=True)):
        if len(ids) > ctx.max_length:
            ids = ctx.tokenizer(text, truncation=True, max_length=ctx.max_length)["input_ids"]
            out.truncated += 1
        out.examples.append(Example(ids, label))
    return out


def _lm_example(ids: list[int], labels: list[int], ctx: _Context, out: _Encoded, reason: str) -> Example | None:
    """Truncate to max_length; None (counted under `reason`) when no token is left to train on."""
    if len(ids) > ctx.max_length:
        ids, labels = ids[: ctx.max_length], labels[: ctx.max_length]
        out.truncated += 1
    if not _trainable(labels):
        out.dropped[reason] += 1
        return None
    return Example(ids, labels)


def _encode_prompt_completion(ds: datasets.Dataset, ctx: _Context, split: str) -> _Encoded:
    """Prompt (with the tokenizer's special-token framing, e.g. BOS) + completion + EOS; loss on
    the completion and EOS only.

    Plain concatenation is used even when the tokenizer has a chat template: the engine generates
    samples from exactly these prompt ids, so training and sampling see the same framing, and many
    base models ship a template they were never trained with. Data meant for the template belongs
    in the chat format.
    """
    out = _Encoded()
    rows = []
    for prompt, completion in zip(ds[ctx.columns.prompt], ds[ctx.columns.completion]):
        if _blank(completion):
            out.dropped["the completion is empty"] += 1
        elif _missing(prompt):
            out.dropped["the prompt is empty"] += 1
        else:
            prompt, completion = ctx.cut(out, str(prompt), str(completion))
            rows.append((prompt, completion))
    if split == "train" and out.dropped["the completion is empty"] == len(ds):
        raise UserError(
            f"data.columns.completion: every completion in column {ctx.columns.completion!r} of {ctx.sources[split]} "
            "is empty, so the model would learn nothing but to end its answer at once",
            "point data.columns.completion at the column that holds the answers, or fill them in",
        )
    prompts = _ids(ctx.tokenizer, [p for p, _ in rows], special=True)
    answers = _ids(ctx.tokenizer, [c for _, c in rows], special=False)
    eos = [] if ctx.tokenizer.eos_token_id is None else [ctx.tokenizer.eos_token_id]
    reason = f"the prompt fills data.max_length ({ctx.max_length} tokens)"
    for (prompt, answer), p_ids, c_ids in zip(rows, prompts, answers):
        target = c_ids + eos
        example = _lm_example(p_ids + target, [IGNORE_INDEX] * len(p_ids) + target, ctx, out, reason)
        if example is not None:
            if split == "validation":
                example.prompt_ids, example.prompt_text, example.reference = p_ids, prompt, answer
            out.examples.append(example)
    return out


def _encode_text(ds: datasets.Dataset, ctx: _Context, split: str) -> _Encoded:
    """Every token trained; an EOS closes each text so packed documents stay apart. Validation rows
    use their first half as the sample prompt and the second half as the reference."""
    out = _Encoded()
    texts = []
    for text in ds[ctx.columns.text]:
        if _missing(text):
            out.dropped["the text is empty"] += 1
        else:
            texts.append(ctx.cut(out, str(text))[0])
    eos = ctx.tokenizer.eos_token_id
    for ids in _ids(ctx.tokenizer, texts, special=True):
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        example = _lm_example(ids, list(ids), ctx, out, "the text has fewer than two tokens")
        if example is not None:
            if split == "validation":
                half = len(example.input_ids) // 2
                example.prompt_ids = example.input_ids[:half]
                example.prompt_text = ctx.tokenizer.decode(example.prompt_ids, skip_special_tokens=True)
                example.reference = ctx.tokenizer.decode(example.input_ids[half:], skip_special_tokens=True)
            out.examples.append(example)
    return out


def _turns(value: Any) -> list[dict[str, Any]]:
    """A row's messages as [{role, content}], accepting ShareGPT's {from, value} spelling."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise UserError(
            f"data.columns.messages: expected a non-empty list of {{role, content}} turns, got {str(value)[:80]!r}",
            "point data.columns.messages at a column of chat turns",
        )
    turns = []
    for message in value:
        role = message.get("role") or _SHAREGPT_ROLES.get(message.get("from"), message.get("from"))
        # Arrow gives every turn every key seen in the column, the absent ones as None.
        content = message.get("content") if message.get("content") is not None else message.get("value")
        if role is None or content is None:
            raise UserError(f"data.columns.messages: a turn lacks its role or content: {str(message)[:80]!r}")
        turns.append({"role": role, "content": content})
    return turns


def _encode_chat(ds: datasets.Dataset, ctx: _Context, split: str) -> _Encoded:
    """Render each conversation with the chat template and train on the assistant turns only."""
    tok = ctx.tokenizer
    if not getattr(tok, "chat_template", None) and not ctx.chat_template:
        raise UserError(
            "the chat format needs a chat template, and the tokenizer has none",
            "set data.chat_template to a Jinja chat template (e.g. ChatML), or use prompt-completion data",
        )
    template = None if getattr(tok, "chat_template", None) else ctx.chat_template
    out = _Encoded()
    silent = "the conversation has no assistant turn with content"
    reason = f"no assistant token within data.max_length ({ctx.max_length} tokens)"
    for value in ds[ctx.columns.messages]:
        turns = _turns(value)
        if not any(turn["role"] == "assistant" and not _blank(turn["content"]) for turn in turns):
            out.dropped[silent] += 1
            continue
        cut = out.cut
        turns = ctx.cut_turns(out, turns)
        text, spans = _assistant_spans(tok, turns, template)
        if not spans:
            out.dropped[reason if out.cut > cut else "the conversation has no assistant turn after a prompt"] += 1
            continue
        ids, trained = _tokenize_spans(tok, text, [(start, end) for _, start, end in spans])
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]
        example = _lm_example(ids, labels, ctx, out, reason)
        if example is None:
            continue
        if split == "validation":
            _set_chat_sample(example, tok, turns, text, spans, ctx.max_length)
        out.examples.append(example)
    if split == "train" and out.dropped[silent] == len(ds):
        raise UserError(
            f"data.columns.messages: no conversation in column {ctx.columns.messages!r} of {ctx.sources[split]} "
            "has an assistant turn with content, and the loss is taken on assistant turns only",
            "point data.columns.messages at conversations with assistant replies, or fill the replies in",
        )
    return out


def _set_chat_sample(example: Example, tokenizer: Any, turns: list[dict[str, Any]], text: str,
                     spans: list[tuple[int, int, int]], max_length: int) -> None:
    """Sample the last assistant turn whose prompt fits in max_length (else the first one, its
    prompt cut to the last max_length - 1 tokens). A turn's prompt is the rendered text up to where
    the turn starts, which prefix stability makes equal to rendering the turns before it with the
    generation prompt."""
    for turn, start, _ in reversed(spans):
        prompt_ids = _ids(tokenizer, [text[:start]], special=False)[0]
        if len(prompt_ids) < max_length:
            break
    example.prompt_ids = prompt_ids[-(max_length - 1):]
    example.prompt_text = str(turns[turn - 1]["content"])
    example.reference = str(turns[turn]["content"])


def _render(tokenizer: Any, turns: list[dict[str, Any]], template: str | None, generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as err:
        raise UserError(
            f"the chat template failed on a conversation ({err}): {str(turns)[:120]!r}",
            "fix the conversation (e.g. roles in the order the template expects) or data.chat_template",
        ) from None


def _assistant_spans(tokenizer: Any, turns: list[dict[str, Any]], template: str | None
                     ) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and (turn index, start, end) character spans of the trained turns.

    A turn's span starts where the conversation before it, rendered with the generation prompt,
    ends, and stops where the conversation up to it ends, less trailing whitespace (formatting after
    the end-of-turn token that generation never produces). This needs a prefix-stable template:
    rendering a shorter conversation must give a prefix of the longer one. An assistant turn with
    nothing before it has no prompt to answer, and an empty one would train the end-of-turn token
    alone; both are kept as context only.
    """
    full = _render(tokenizer, turns, template, generation_prompt=False)
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant" or i == 0 or _blank(turn["content"]):
            continue
        before = _render(tokenizer, turns[:i], template, generation_prompt=True)
        upto = _render(tokenizer, turns[: i + 1], template, generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise UserError(
                "the chat template is not prefix-stable: rendering a conversation up to an assistant turn does not "
                "give the start of the whole conversation, so the assistant tokens cannot be located",
                "convert the data to prompt-completion, or use a model whose chat template renders each turn "
                "on its own (e.g. ChatML)",
            )
        spans.append((i, len(before), len(before) + len(upto[len(before):].rstrip())))
    return full, spans


def _tokenize_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of `text` (no added special tokens: the template wrote them) and, per token,
    whether it lies in a trained span.

    Fast tokenizers tokenize the whole text once and place tokens by their character offsets, so
    the ids are exactly those the model sees for this text; tokenizers without offsets tokenize
    the text piece by piece between span boundaries.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        trained = [any(s < end and start < e for s, e in spans) for start, end in enc["offset_mapping"]]
        return list(enc["input_ids"]), trained
    ids: list[int] = []
    trained: list[bool] = []
    cuts = [0, *(b for span in spans for b in span), len(text)]
    for k, (start, end) in enumerate(zip(cuts, cuts[1:])):
        piece = _ids(tokenizer, [text[start:end]], special=False)[0] if end > start else []
        ids += piece
        trained += [k % 2 == 1] * len(piece)
    return ids, trained


_ENCODERS = {
    "text-label": _encode_text_label,
    "prompt-completion": _encode_prompt_completion,
    "chat": _encode_chat,
    "text": _encode_text,
}


def _dropped_note(split: str, dropped: Counter[str], total: int) -> str:
    reasons = "; ".join(f"{n}: {why}" for why, n in dropped.most_common())
    return f"dropped {sum(dropped.values())} of {total} {split} rows with nothing to train on ({reasons})"


def _check_trainable(train: _Encoded, total: int, max_length: int, warnings: list[str]) -> None:
    """No training row left is an error that says why; some rows lost is a warning."""
    if not train.examples:
        reasons = "; ".join(f"{n} rows: {why}" for why, n in train.dropped.most_common())
        raise UserError(
            f"none of the {total} training rows has a token to train on ({reasons})",
            f"raise data.max_length (now {max_length}), and check data.columns: the prompt/answer "
            "or messages column may be the wrong one",
        )
    if train.dropped:
        warnings.append(_dropped_note("training", train.dropped, total))


def _pack(examples: list[Example], block: int) -> list[Example]:
    """Concatenate the rows into blocks of exactly `block` tokens; the tail that does not fill a
    block is dropped, and so is any block without a trained token."""
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        ids += example.input_ids
        labels += example.labels
    if len(ids) < block:
        raise UserError(
            f"data.packing: the training data has {len(ids)} tokens, fewer than one block of data.max_length ({block})",
            "turn data.packing off or lower data.max_length",
        )
    blocks = (Example(ids[i : i + block], labels[i : i + block]) for i in range(0, len(ids) - block + 1, block))
    return [b for b in blocks if _trainable(b.labels)]


def _stats(rows_in: dict[str, int], train: _Encoded, validation: _Encoded, train_out: int,
           labels: list[str] | None) -> DataStats:
    lengths = sorted(len(e.input_ids) for e in train.examples)
    label_counts = None
    loss_tokens = 0
    if labels is not None:
        counts = Counter(e.labels for e in train.examples)
        label_counts = {name: counts[i] for i, name in enumerate(labels)}
    else:
        loss_tokens = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in train.examples)
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


# -------------------------------------------------------------------------------------- batching


def batch_plan(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool, drop_last: bool = False
) -> list[list[int]]:
    """The batches of one epoch as lists of example indices; the same inputs give the same plan.

    With `group_by_length`, the shuffled order is cut into chunks of 50 batches, each chunk sorted
    by length so batches hold rows of similar length (less padding), and the batch order shuffled
    again; the batch with the longest row goes first, so running out of memory shows at the first
    step rather than mid-epoch. The generator is seeded with a string of (seed, epoch): string
    seeds are hashed with SHA-512, so different pairs never collide the way seed+epoch would.
    """
    rng = random.Random(f"batch-plan:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        chunk = batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
            batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return batches


def collate(examples: list[Example], pad_token_id: int | None, task: str) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids (pad id), attention_mask, labels (-100 padding for causal LM,
    one class id per row for classification). Tokenizers without a pad token (GPT-2) pad with id 0,
    which the attention mask and the -100 labels hide."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    pad = 0 if pad_token_id is None else pad_token_id
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
    if task == "classification":
        labels = torch.tensor([e.labels for e in examples], dtype=torch.long)
    else:
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
