"""Raw rows: local files and folders, `datasets` names and the bundled demo sets, and the
errors each can raise, as messages that name the file, the line or the byte.

The file kinds and the demo dataset names are defined here and nowhere else; a front end that
offers files or demo sets reads `FILE_KINDS` and `DEMO_DATASETS`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import os
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import DataConfig
from core.errors import UserError

if TYPE_CHECKING:
    import datasets

_DEMO_DIR = files("core") / "demo_data"
DEMO_DATASETS = {
    "demo:sentiment": Path(str(_DEMO_DIR / "sentiment.jsonl")),
    "demo:instructions": Path(str(_DEMO_DIR / "instructions.jsonl")),
}
"""Bundled demo data: text-label reviews for classification, prompt-completion tasks for causal LM."""

FILE_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
"""The file extensions data is read from, each with its kind; .tsv is read as CSV with a tab separator."""
_EXTENSIONS = ", ".join(FILE_KINDS)
_CHUNK = 1 << 20


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
        if is_local(data.train):
            raise UserError(
                f"data.validation_split applies to a `datasets` name, but data.train ({data.train}) is local",
                "set data.validation to a validation file, or unset data.validation_split",
            )
        return train, _load_source(data.train, "data.validation_split", data.subset, data.validation_split)
    return train, None


_SPLIT_NAME = re.compile(r"(^|[-_.])(test|validation|valid|val|eval|dev)([-_.]|$)", re.IGNORECASE)
"""A file name that says it holds another split than training (test.jsonl, data-val.csv)."""


def split_files_warning(source: str) -> str | None:
    """A training folder whose files are named like other splits: every file of a folder trains,
    so its test rows would train without a word."""
    path = Path(source).expanduser()
    if source.startswith("demo:") or not path.is_dir():
        return None
    named = [p for p in _data_files(path, "data.train") if _SPLIT_NAME.search(p.stem)]
    if not named:
        return None
    return (f"folder {path} holds {', '.join(p.name for p in named[:3])}{' …' if len(named) > 3 else ''}: every file "
            "in a data.train folder is training data; point data.train at the training file and data.validation "
            "at the validation one")


def is_local(source: str) -> bool:
    """Demo names and anything that looks like a path are read from disk, never from the cache."""
    path = Path(source).expanduser()
    return (
        source.startswith(("demo:", ".", "/", "~"))
        or "\\" in source
        or path.suffix.lower() in FILE_KINDS
        or path.exists()
    )


def _load_source(source: str, field_name: str, subset: str | None, split: str) -> datasets.Dataset:
    if source.startswith("demo:"):
        if source not in DEMO_DATASETS:
            raise UserError(f"{field_name}: unknown demo dataset {source!r}", f"use one of: {', '.join(DEMO_DATASETS)}")
        return _load_files([DEMO_DATASETS[source]], field_name)
    if is_local(source):
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
        if path.suffix.lower() not in FILE_KINDS:
            raise UserError(
                f"{field_name}: {path} has the unsupported extension {path.suffix or '(none)'!r}",
                f"use one of: {_EXTENSIONS}",
            )
        return [path]
    found = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in FILE_KINDS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise UserError(f"{field_name}: folder {path} holds no data files", f"put {_EXTENSIONS} files in it")
    kinds = sorted({FILE_KINDS[p.suffix.lower()] for p in found})
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

    kind = FILE_KINDS[paths[0].suffix.lower()]
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
    sep = "\t" if kind == "tsv" else ","
    return Dataset.from_csv(files, sep=sep, features=_string_features(paths[0], sep), keep_default_na=False,
                            skipinitialspace=True)


def _string_features(path: Path, sep: str) -> datasets.Features:
    """Every CSV column as the strings written in it. Left to pandas, a label column of 0/1 with one
    blank cell became the floats "0.0"/"1.0", the cells NA, null and None became missing (a class
    named "NA" vanished), "01" became 1, and a column's type could change from one 10,000-row chunk to
    the next. The names are the header as pandas reads it (`Unnamed: 0` for a blank one, `a.1` for a
    repeated `a`), without the spaces after each separator, as the cells are read."""
    from datasets import Features, Value

    with path.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh, delimiter=sep, skipinitialspace=True), [])
    names: list[str] = []
    for i, name in enumerate(header):
        base, repeat = name or f"Unnamed: {i}", 0
        name = base
        while name in names:
            repeat += 1
            name = f"{base}.{repeat}"
        names.append(name)
    return Features({name: Value("string") for name in names})


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
    if (isinstance(err, ValueError) and "corresponds to no data" in str(err)) or (
            kind == "parquet" and all(_parquet_rows(path) == 0 for path in paths)):
        return UserError(f"{field_name}: {_names(paths)} has no rows", "point at a file with data rows")
    if len(paths) > 1:
        return _folder_error(paths, kind, field_name) or _read_error(paths[:1], kind, field_name, err)
    cause = err.__cause__ or err
    return UserError(f"{field_name}: cannot read {_names(paths)}: {cause}", f"check that it is valid {kind.upper()}")


def _parquet_rows(path: Path) -> int | None:
    """The rows a Parquet file's footer counts (None when it cannot be read): `datasets` fails on a
    file of none with a message about batch sizes."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the caller
        return None


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
