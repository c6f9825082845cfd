"""The bad-input corpus: every way a user can get the input wrong ends in exit status 2, no
traceback, a message that names the field or file, and a hint that says what to do.

One table, one case per row: `case(name, change, field, hint)`. `change` is what the user got wrong:
a dict of config sections merged into a small working causal-LM config, the raw text (str) or
bytes of run.yaml, or None to leave the config as it is; `argv` replaces `train run.yaml` for
command-line misuse. The fixture puts the files the cases point at (empty, Latin-1, broken...) next
to run.yaml. The CLI runs in-process, so the whole corpus takes seconds, not a process start per case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sft_tui.cli import main


def case(name: str, change: dict | str | bytes | None, field: str, hint: str, argv: list[str] | None = None,
         xfail: str | None = None):
    """One row of the corpus; `xfail` names the file whose owner has yet to fix the message."""
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(change, field, hint, argv or ["train", "run.yaml"], id=name, marks=marks)


CASES = [
    # ---- config values: types, bounds, enums ----
    case("lr-not-a-number", {"optim": {"lr": "fast"}}, "optim.lr", "set optim.lr to a valid number"),
    case("lr-zero", {"optim": {"lr": 0}}, "optim.lr", "set optim.lr to a value greater than 0"),
    case("lr-negative", {"optim": {"lr": -1e-3}}, "optim.lr", "greater than 0"),
    case("lr-nan", "optim:\n  lr: .nan\n", "optim.lr", "set optim.lr to a finite number"),
    case("weight-decay-inf", "optim:\n  weight_decay: .inf\n", "optim.weight_decay", "finite number"),
    case("batch-size-zero", {"optim": {"batch_size": 0}}, "optim.batch_size", "greater than or equal to 1"),
    case("batch-size-fraction", {"optim": {"batch_size": 2.5}}, "optim.batch_size", "to a valid integer"),
    case("seed-negative", {"seed": -1}, "seed", "set seed to a value greater than or equal to 0"),
    case("seed-too-big", {"seed": 2**32}, "seed", "less than or equal to 4294967295"),
    case("epochs-1e308", {"schedule": {"epochs": 1e308}}, "schedule.epochs", "less than or equal to 10000"),
    case("val-ratio-one", {"data": {"val_ratio": 1.0}}, "data.val_ratio", "to a value less than 1"),
    case("max-length-tiny", {"data": {"max_length": 4}}, "data.max_length", "greater than or equal to 8"),
    case("keep-last-zero", {"checkpoint": {"keep_last": 0}}, "checkpoint.keep_last", "greater than or equal to 1"),
    case("eval-every-negative", {"eval": {"every_steps": -1}}, "eval.every_steps", "greater than or equal to 0"),
    case("task-unknown", {"task": "translation"}, "task", "set task to 'causal-lm' or 'classification'"),
    case("precision-unknown", {"precision": "fp8"}, "precision", "'auto', 'fp32', 'bf16' or 'fp16'"),
    case("scheduler-unknown", {"schedule": {"scheduler": "step"}}, "schedule.scheduler", "'cosine' or 'constant'"),
    case("format-unknown", {"data": {"format": "csv"}}, "data.format", "set data.format to 'auto'"),
    case("preset-unknown", {"freeze": {"preset": "some"}}, "freeze.preset", "set freeze.preset to 'all'"),
    case("packing-not-a-bool", {"data": {"packing": "maybe"}}, "data.packing", "to true or false"),
    case("run-name-a-number", {"output": {"run_name": 2024}}, "output.run_name", "quote"),
    case("section-not-a-mapping", {"optim": 5}, "optim", "write optim as a section"),
    case("freeze-rule-lr-scale-zero", {"freeze": {"rules": [{"match": "model", "lr_scale": 0}]}},
         "freeze.rules.0.lr_scale", "greater than 0"),
    case("freeze-rule-without-match", {"freeze": {"rules": [{"train": False}]}}, "freeze.rules.0.match", "add"),
    # ---- config values: unknown keys and cross-field checks ----
    case("unknown-field", {"optim": {"learning_rate": 1e-4}}, "optim.learning_rate", "fields of optim: lr"),
    case("misspelt-field", {"optim": {"lrr": 1e-4}}, "optim.lrr", "rename it to optim.lr"),
    case("unknown-section", {"optimizer": {"lr": 1e-4}}, "optimizer", "rename it to optim"),
    case("metric-for-other-task", {"eval": {"metric": "accuracy"}}, "eval.metric", "one of: loss, perplexity"),
    case("packing-on-classification", {"task": "classification", "eval": {"metric": "loss"}, "data": {"packing": True}},
         "data.packing", "set data.packing: false"),
    case("precision-fp16-without-gpu", {"precision": "fp16"}, "precision fp16", "use precision: bf16 or fp32"),
    # ---- output.run_name: one folder inside runs_dir, never a path ----
    case("run-name-dotdot", {"output": {"run_name": ".."}}, "output.run_name", "a plain folder name such as my-run"),
    case("run-name-absolute", {"output": {"run_name": "/tmp/elsewhere"}}, "output.run_name", "a plain folder name"),
    case("run-name-nested", {"output": {"run_name": "a/b"}}, "output.run_name", "a plain folder name"),
    case("run-name-empty", {"output": {"run_name": ""}}, "output.run_name", "a plain folder name"),
    # ---- the YAML file itself ----
    case("yaml-unclosed-bracket", "task: causal-lm\nmodel:\n  name_or_path: [x\n", "run.yaml at line 3", "fix line 3"),
    case("yaml-tab-indent", "task: causal-lm\nmodel:\n\tname_or_path: x\n", "run.yaml at line 3", "indent with spaces"),
    case("yaml-bad-indent", "model:\n  name_or_path: x\n revision: y\n", "run.yaml at line 3", "fix line 3"),
    case("yaml-duplicate-key", "optim:\n  lr: 1e-3\n  lr: 2e-3\n", "run.yaml at line 3", "keep one of the two"),
    case("yaml-empty-file", "", "run.yaml holds no settings", "`sft-tui init` writes an example"),
    case("yaml-only-comments", "# task: causal-lm\n# seed: 3\n", "run.yaml holds no settings", "sft-tui init"),
    case("yaml-list-at-top", "- task: causal-lm\n- seed: 3\n", "run.yaml must hold a mapping", "sft-tui init"),
    case("yaml-not-utf8", "task: caf\xe9\n".encode("latin-1"), "run.yaml is not UTF-8", "save it as UTF-8"),
    case("config-missing", None, "nope.yaml does not exist", "sft-tui init", argv=["train", "nope.yaml"]),
    case("config-is-a-folder", None, "a-folder is a folder", "pass a YAML file", argv=["train", "a-folder"]),
    # ---- --set ----
    case("set-without-equals", None, "--set 'optim.lr'", "e.g. --set optim.lr=3e-5",
         argv=["train", "run.yaml", "--set", "optim.lr"]),
    case("set-unknown-section", None, "'optm' is not a config section", "did you mean optim?",
         argv=["train", "run.yaml", "--set", "optm.lr=1"]),
    case("set-unknown-field", None, "optim.lrr", "rename it to optim.lr",
         argv=["train", "run.yaml", "--set", "optim.lrr=1"]),
    case("set-number-for-text", None, "compute.devices", "on the command line: --set 'compute.devices=\"0\"'",
         argv=["train", "run.yaml", "--set", "compute.devices=0"]),
    case("set-run-name-path", None, "output.run_name", "a plain folder name",
         argv=["train", "run.yaml", "--set", "output.run_name=../x"]),
    case("set-on-resume", None, "--set", "resume it as it was",
         argv=["train", "--resume", "runs/stub", "--set", "seed=1"]),
    # ---- init ----
    case("init-over-existing-file", None, "run.yaml already exists", "pass --force", argv=["init", "run.yaml"]),
    case("init-into-missing-folder", None, "cannot write no/such/folder/sft.yaml", "create its folder first",
         argv=["init", "no/such/folder/sft.yaml"]),
    case("init-into-a-folder", None, "cannot write a-folder", "choose a path", argv=["init", "--force", "a-folder"]),
    case("init-unknown-task", None, "--task", "causal-lm", argv=["init", "--task", "translation"]),
    case("train-without-config", None, "one of the arguments", "sft-tui train", argv=["train"]),
    # ---- data ----
    case("data-missing-file", {"data": {"train": "missing.jsonl"}}, "missing.jsonl", "check the path"),
    case("data-empty-file", {"data": {"train": "empty.jsonl"}}, "empty.jsonl", "point at a file with data rows"),
    case("data-latin1", {"data": {"train": "latin1.jsonl"}}, "latin1.jsonl is not UTF-8", "re-save the file as UTF-8"),
    case("data-broken-json-line", {"data": {"train": "broken.jsonl"}}, "broken.jsonl", "fix that line"),
    case("data-bad-extension", {"data": {"train": "data.txt"}}, "data.txt", "use one of"),
    case("data-folder-without-files", {"data": {"train": "a-folder"}}, "a-folder", "put"),
    case("data-unknown-column", {"data": {"columns": {"completion": "answer"}}}, "data.columns.completion",
         "set data.columns.completion to one of those columns"),
    case("data-undetectable-columns", {"data": {"train": "odd.jsonl"}}, "odd.jsonl", "set data.format"),
    case("data-format-for-other-task", {"data": {"format": "text-label"}}, "data.format", "set data.format"),
    case("data-one-label-only", {"task": "classification", "eval": {"metric": "loss"},
                                 "data": {"train": "one-label.jsonl"}}, "data.train", "more than one class"),
    case("data-unknown-demo", {"data": {"train": "demo:nope"}}, "data.train", "use one of"),
    case("data-dataset-not-cached", {"data": {"train": "someone/no-dataset"}}, "someone/no-dataset", "download"),
    case("data-validation-missing", {"data": {"validation": "missing.jsonl"}}, "data.validation", "check the path"),
    case("data-every-completion-empty", {"data": {"train": "no-answers.jsonl"}}, "data.columns.completion",
         "point data.columns.completion"),
    case("data-labels-mixed-types", {"task": "classification", "eval": {"metric": "loss"},
                                     "data": {"train": "mixed-labels.jsonl"}}, "data.columns.label", "use one type"),
    case("data-folder-mismatched-columns", {"data": {"train": "mixed-folder"}}, "do not have the same columns",
         "must share their columns"),
    case("data-split-of-a-file", {"data": {"validation_split": "test"}}, "data.validation_split",
         "set data.validation"),
    # ---- model ----
    case("model-missing-folder", {"model": {"name_or_path": "./no-such-model"}}, "./no-such-model", "check the path"),
    case("model-missing-relative-folder", {"model": {"name_or_path": "runs/no-such-model"}},
         "model.name_or_path: model folder runs/no-such-model does not exist", "check the path"),
    case("model-folder-without-config", {"model": {"name_or_path": "a-folder"}}, "no config.json",
         "point model.name_or_path at a folder"),
    case("model-unknown-demo", {"model": {"name_or_path": "demo:nope"}}, "demo:nope", "use one of"),
    case("model-hub-id-not-cached", {"model": {"name_or_path": "someone/not-cached"}}, "someone/not-cached",
         "model.name_or_path"),
    case("model-without-tokenizer", {"model": {"name_or_path": "no-tokenizer"}}, "has no tokenizer files",
         "tokenizer.save_pretrained"),
    case("model-truncated-weights", {"model": {"name_or_path": "half-weights"}}, "is incomplete or corrupt",
         "re-download"),
    # ---- freeze map ----
    case("freeze-regex-broken", {"freeze": {"rules": [{"match": "re:(x"}]}}, "freeze.rules.0.match", "fix the regex"),
    case("freeze-nothing-trains", {"freeze": {"rules": [{"match": "*", "train": False}]}}, "freeze.rules",
         "add a rule with train: true"),
    # ---- the run folder ----
    case("run-name-taken", {"output": {"run_name": "taken"}}, "runs/taken", "choose another output.run_name"),
    case("runs-dir-is-a-file", {"output": {"runs_dir": "a-file"}}, "a-file", "check output.runs_dir"),
    case("resume-not-a-run", None, "a-folder", "pass a folder under runs/", argv=["train", "--resume", "a-folder"]),
    case("resume-before-a-checkpoint", None, "runs/stub", "start", argv=["train", "--resume", "runs/stub"]),
]  # end of CASES


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_factory):
    """A folder holding a working config's data and every broken file the cases point at; the
    current directory for the test, as for a user who runs `sft-tui train run.yaml` in it."""
    rows = [{"prompt": f"Echo {w}:", "completion": f" {w}"} for w in "abc def ghi jkl mno pqr".split() * 4]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', encoding="utf-8")
    (tmp_path / "odd.jsonl").write_text('{"foo": "a", "bar": "b"}\n' * 8, encoding="utf-8")
    (tmp_path / "data.txt").write_text("some text\n", encoding="utf-8")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "no-answers.jsonl").write_text("".join(f'{{"prompt": "q {i}", "completion": ""}}\n' for i in range(20)))
    (tmp_path / "mixed-labels.jsonl").write_text("".join(
        json.dumps({"text": f"t {i}", "label": 1 if i % 2 else "positive"}) + "\n" for i in range(20)))
    (tmp_path / "mixed-folder").mkdir()
    (tmp_path / "mixed-folder" / "a.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 4)
    (tmp_path / "mixed-folder" / "b.jsonl").write_text('{"text": "a", "label": "b"}\n' * 4)
    model = tiny_model_factory("llama")
    for name, files in (("no-tokenizer", ["config.json", "model.safetensors"]), ("half-weights", None)):
        shutil.copytree(model, tmp_path / name, ignore=None if files is None else
                        lambda folder, names, keep=files: [n for n in names if n not in keep])
    weights = tmp_path / "half-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "one-label.jsonl").write_text("".join(f'{{"text": "t {i}", "label": "pos"}}\n' for i in range(20)))
    config = {
        "task": "causal-lm", "seed": 3,
        "model": {"name_or_path": str(tiny_model_factory("llama"))},
        "data": {"train": "train.jsonl", "max_length": 32},
        "optim": {"lr": 1e-3, "batch_size": 4},
        "schedule": {"max_steps": 1},
        "eval": {"every_steps": 0, "num_samples": 0},
        "checkpoint": {"every_steps": 0},
        "output": {"runs_dir": "runs", "run_name": "cli", "save_final": False},
    }
    for name in ("taken", "stub"):  # a finished run's folder, and one that ended before its first checkpoint
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        (tmp_path / "runs" / name / "events.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "runs" / "taken" / "final").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # rich would fold long lines inside a path or a field name
    return config


def _write(change, config: dict) -> None:
    """run.yaml as the case has it: raw bytes or text, or the working config with the change merged in."""
    run = Path("run.yaml")
    if isinstance(change, bytes):
        run.write_bytes(change)
    elif isinstance(change, str):
        run.write_text(change, encoding="utf-8")
    else:
        for key, value in (change or {}).items():
            merge = isinstance(config.get(key), dict) and isinstance(value, dict)
            config[key] = {**config[key], **value} if merge else value
        run.write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.mark.parametrize(("change", "field", "hint", "argv"), CASES)
def test_bad_input_exits_2_with_a_message_and_a_hint(change, field, hint, argv, workdir, capsys):
    """`field` must be in the message and `hint` after `hint:`, in the text as printed with its line
    breaks (rich wraps) folded into spaces."""
    _write(change, workdir)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse reports its own usage errors this way
        code = exit.code
    out = capsys.readouterr()
    text = " ".join((out.err + out.out).split())
    assert "Traceback" not in text
    assert code == 2, text
    message, said_hint, after = text.partition(" hint: ")
    assert said_hint, f"no hint: {text}"
    assert field in message, text
    assert hint in after, text
