"""core.data on data that is wrong in ways a user does not see at a glance (issue 7): a huge row,
empty answers, labels of two types, folders whose files disagree, broken files loaded through the
command line, and local files that must load without the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from helpers import write_jsonl

from core.config import DataConfig, RunConfig
from core.data import CHARS_PER_TOKEN, load_raw, prepare_data
from core.errors import UserError
from core.tiny import build_tokenizer

CORPUS = ["the cat sat on the mat", "What is 3 + 4? 7", "Reverse the word: cat tac", "a small dog barks"] * 8
HUGE = "the cat sat on the mat. " * 50_000  # 1.2 MB: slow and costly to tokenize whole, instant when cut


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS, vocab_size=300)


def config(task: str = "causal-lm", **data) -> RunConfig:
    return RunConfig(task=task, data=DataConfig(**data))


@pytest.fixture
def tokenizer_inputs(tok, monkeypatch):
    """Spy on the tokenizer: the length of every text it is asked to tokenize."""
    seen: list[int] = []
    call = type(tok).__call__

    def spy(self, text=None, *args, **kwargs):
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text or []))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", spy)
    return seen


HUGE_ROWS = {
    "text-label": ("classification", [{"text": HUGE, "label": "a"}, {"text": "a cat", "label": "b"}] * 2),
    "prompt-completion": ("causal-lm", [{"prompt": "Echo:", "completion": HUGE}, {"prompt": "a", "completion": "b"}]),
    "chat": ("causal-lm", [{"messages": [{"role": "user", "content": "Echo:"}, {"role": "assistant", "content": HUGE},
                                         {"role": "user", "content": "again"}, {"role": "assistant", "content": "no"}]}]),
    "text": ("causal-lm", [{"text": HUGE}, {"text": "a small dog"}]),
}


@pytest.mark.parametrize("fmt", list(HUGE_ROWS))
def test_one_huge_row_is_cut_by_characters_before_tokenizing(fmt, tok, tmp_path, tokenizer_inputs):
    """A 50 MB completion took 3 minutes and 16.5 GB: every field was tokenized whole, and only then
    truncated to data.max_length tokens. Now no text longer than CHARS_PER_TOKEN x max_length (plus
    the chat template's framing) reaches the tokenizer, and a warning counts the rows cut."""
    task, rows = HUGE_ROWS[fmt]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    prepared = prepare_data(config(task, train=str(train), val_ratio=0, max_length=32), tok)
    assert prepared.format == fmt
    assert max(tokenizer_inputs) <= CHARS_PER_TOKEN * 32 + 100
    cut = len([r for r in rows if HUGE in json.dumps(r)])
    assert f"cut {cut} of {len(rows)} training rows to {CHARS_PER_TOKEN * 32} characters" in " ".join(prepared.warnings)
    assert max(len(e.input_ids) for e in prepared.train) == 32


def test_cutting_by_characters_keeps_every_token_truncation_keeps(tok, tmp_path):
    """The cut is far beyond what max_length tokens of text take: the row is what tokenizing it
    whole and truncating would give."""
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Echo:", "completion": HUGE}])
    example = prepare_data(config(train=str(train), val_ratio=0, max_length=64), tok).train[0]
    whole = tok("Echo:")["input_ids"] + tok(HUGE[:20_000], add_special_tokens=False)["input_ids"]
    assert example.input_ids == whole[:64]


def test_every_completion_empty_is_an_error_not_training_on_eos_only(tok, tmp_path):
    """With every completion "" the run trained on the end-of-text token alone."""
    train = write_jsonl(tmp_path / "t.jsonl", [{"instruction": f"Say {w}", "output": ""} for w in "abc"])
    with pytest.raises(UserError) as err:
        prepare_data(config(train=str(train), val_ratio=0), tok)
    assert err.value.message.startswith("data.columns.completion: every completion in column 'output' of ")
    assert str(train) in err.value.message and "data.columns.completion" in err.value.hint


def test_some_completions_empty_are_dropped_with_a_count(tok, tmp_path):
    rows = [{"prompt": "Say a", "completion": ""}, {"prompt": "Say b", "completion": "  "}]
    rows += [{"prompt": "Say c", "completion": "c"}] * 3
    prepared = prepare_data(config(train=str(write_jsonl(tmp_path / "t.jsonl", rows)), val_ratio=0), tok)
    assert len(prepared.train) == 3
    assert "dropped 2 of 5 training rows with nothing to train on (2: the completion is empty)" in prepared.warnings


def test_every_assistant_turn_empty_is_an_error(tok, tmp_path):
    """The chat form of the same defect: empty assistant turns trained the end-of-turn token alone."""
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    train = write_jsonl(tmp_path / "t.jsonl", [{"messages": chat}] * 3)
    with pytest.raises(UserError) as err:
        prepare_data(config(train=str(train), val_ratio=0), tok)
    assert err.value.message.startswith("data.columns.messages: no conversation in column 'messages' of ")
    assert str(train) in err.value.message


def test_some_empty_assistant_turns_are_context_only(tok, tmp_path):
    empty = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    answered = [*empty, {"role": "user", "content": "again"}, {"role": "assistant", "content": "cat"}]
    train = write_jsonl(tmp_path / "t.jsonl", [{"messages": empty}, {"messages": answered}])
    prepared = prepare_data(config(train=str(train), val_ratio=0), tok)
    assert len(prepared.train) == 1
    trained = [t for t, label in zip(prepared.train[0].input_ids, prepared.train[0].labels) if label != -100]
    assert tok.decode(trained) == "cat<|im_end|>"
    assert "1: the conversation has no assistant turn with content" in " ".join(prepared.warnings)


def test_labels_of_mixed_types_are_an_error_not_two_classes(tok, tmp_path):
    """`1` and "positive" in one JSON label column became two classes, "1" and "positive"."""
    rows = [{"text": t, "label": lab} for t, lab in [("good", 1), ("fine", "positive"), ("bad", 0), ("meh", "negative")]]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(UserError) as err:
        prepare_data(config("classification", train=str(train), val_ratio=0), tok)
    assert err.value.message == (
        f"data.columns.label: the label column 'label' of {train} mixes value types: "
        "int (1, 0) and str ('positive', 'negative')"
    )
    assert "one type" in err.value.hint


def test_folder_files_with_different_columns_are_named(tmp_path):
    """A folder of JSONL files with different columns was reported as "check that it is valid JSON"."""
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "x", "label": "p"}])
    write_jsonl(folder / "b.jsonl", [{"text": "y", "label": "q"}])
    write_jsonl(folder / "c.jsonl", [{"prompt": "x", "completion": "y"}])
    with pytest.raises(UserError) as err:
        load_raw(DataConfig(train=str(folder)))
    assert err.value.message == (
        f"data.train: the files in folder {folder} do not have the same columns: "
        "a.jsonl, b.jsonl have columns text, label; c.jsonl has columns prompt, completion"
    )
    assert "all files in a folder must share their columns" in err.value.hint


def test_broken_file_in_a_folder_is_named(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.csv").write_text("text,label\nx,p\n", encoding="utf-8")
    (folder / "b.csv").write_text('text,label\n"x,p\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"data.train: cannot read .*b.csv: "):
        load_raw(DataConfig(train=str(folder)))


def test_cli_shows_a_broken_file_once_without_the_raw_datasets_lines(tmp_path, tiny_model_dir, capsys):
    """`datasets` logged its raw parser error ("Failed to load JSON from file ...") twice, through
    its own handler and as a log event, before the clean message."""
    from sft_tui.cli import main

    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    cfg = {"task": "classification", "model": {"name_or_path": str(tiny_model_dir("bert"))},
           "data": {"train": str(tmp_path / "bad.jsonl")}, "output": {"runs_dir": str(tmp_path / "runs")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(tmp_path / "run.yaml")]) == 2
    shown = capsys.readouterr()
    printed = " ".join((shown.out + shown.err).split())
    assert "Failed to load JSON" not in printed and "ArrowInvalid" not in printed
    assert printed.count("bad.jsonl line 2: malformed JSON") == 1


def test_local_files_never_touch_the_network(tmp_path):
    """With HF_HUB_OFFLINE unset, `load_dataset` pinged the Hub on every local load (a download
    count). Every socket connection is refused and recorded in a fresh process without it."""
    write_jsonl(tmp_path / "t.jsonl", [{"text": "one", "label": "a"}, {"text": "two", "label": "b"}])
    (tmp_path / "t.csv").write_text("text,label\none,a\ntwo,b\n", encoding="utf-8")
    script = textwrap.dedent(f"""
        import json, socket

        attempts = []

        def refuse(*args, **kwargs):
            attempts.append(repr(args[:2]))
            raise OSError("network use in a test")

        socket.create_connection = refuse
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse

        from core.data import load_raw
        from core.config import DataConfig
        for source in ["demo:sentiment", {str(tmp_path / "t.jsonl")!r}, {str(tmp_path / "t.csv")!r}]:
            load_raw(DataConfig(train=source))
        print(json.dumps(attempts))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_datasets_warnings_do_not_reach_the_terminal_directly():
    """`datasets` installs its own stderr handler when imported: its warnings were drawn over the
    TUI, and printed a second time by the run's log route."""
    code = ("import datasets, logging\n"
            "from core.logs import quiet_libraries\n"
            "quiet_libraries()\n"
            "logging.getLogger('datasets.builder').warning('raw datasets line')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "raw datasets line" not in out.stderr
