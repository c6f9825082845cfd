"""RunConfig: YAML round-trip, the commented example, and errors that name the field."""

import math

import pytest
import yaml

from core.config import (TASKS, FreezeRule, RunConfig, apply_overrides, config_to_dict, example_config, load_config,
                         parse_config, precision_problem, save_config, set_dotted)
from core.config_yaml import commented_yaml
from core.errors import UserError
from core.metrics import is_better


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_yaml_round_trip(task, tmp_path):
    config = example_config(task)
    config.freeze.rules.append(FreezeRule(match="re:.*layer\\.[0-3]\\..*", train=False))
    config.freeze.rules.append(FreezeRule(match="classifier", lr_scale=10.0))
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_saving_over_a_config_is_whole_or_not_at_all(tmp_path, monkeypatch):
    """ctrl+s over a user's config: a crash mid-write left an empty file. The old text survives a
    failed write, the file keeps its mode, a symbolic link is written through, and a read-only file
    is refused as a plain write refuses it."""
    import os

    config = RunConfig(task="classification")
    path = tmp_path / "mine.yaml"
    path.write_text("# my notes\n")
    path.chmod(0o640)

    def crash(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError):
            save_config(config, path)
    assert path.read_text() == "# my notes\n" and [p.name for p in tmp_path.iterdir()] == ["mine.yaml"]
    save_config(config, path)
    assert load_config(path) == config and path.stat().st_mode & 0o777 == 0o640
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    save_config(apply_overrides(config, ["optim.lr=0.5"]), link)
    assert link.is_symlink() and load_config(path).optim.lr == 0.5
    path.chmod(0o440)
    monkeypatch.setattr(os, "access", lambda *args: False)  # as a user who is not root sees 0440
    with pytest.raises(PermissionError):
        save_config(config, path)
    assert load_config(path).optim.lr == 0.5


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_commented_example_is_valid_and_documents_every_field(task):
    text = commented_yaml(example_config(task))
    assert RunConfig.model_validate(yaml.safe_load(text)) == example_config(task)
    assert "# Base learning rate of AdamW" in text
    assert text.count("#") >= 40


def test_unknown_key_names_the_field():
    with pytest.raises(UserError) as err:
        parse_config({"optim": {"learning_rate": 1e-4}})
    assert "optim.learning_rate: unknown field" in err.value.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"optim": {"lr": "fast"}}, "optim.lr: Input should be a valid number"),
        ({"optim": {"batch_size": 0}}, "optim.batch_size: Input should be greater than or equal to 1 (got 0)"),
        ({"task": "translation"}, "task: Input should be 'causal-lm' or 'classification'"),
        ({"task": "causal-lm", "eval": {"metric": "accuracy"}}, "eval.metric 'accuracy' is not available"),
        ({"data": {"packing": True}}, "data.packing only applies to task 'causal-lm'"),
        ({"freeze": {"rules": [{"match": "x", "lr_scale": 0}]}}, "freeze.rules.0.lr_scale"),
    ],
)
def test_bad_values_name_field_and_allowed(data, expected):
    with pytest.raises(UserError) as err:
        parse_config(data)
    assert expected in err.value.message


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("task: causal-lm\noptim:\n  lr: [1e-4\n  batch_size: 4\n", "at line 3, column 7", "fix line 3"),
        ("task: causal-lm\nmodel:\n  name_or_path: [oops\n", "at line 3, column 17", "fix line 3"),
        ("optim: {lr: 1e-4\nseed: 3\n", "at line 1, column 8", "fix line 1"),
        ("task: 'causal-lm\nseed: 3\n", "at line 1, column 7", "fix line 1"),
        ("task: causal-lm\nmodel:\n  name_or_path: x\n revision: main\n", "at line 4, column 2", "fix line 4"),
        ("model:\n\tname_or_path: x\n", "at line 2, column 1", "indent with spaces"),
        ("seed: 3\nseed: 4\n", "at line 2, column 1", "keep one of the two"),
        ("seed: !!python/object:os.system x\n", "at line 1, column 7", "remove the `!` tag on line 1"),
        ("seed: 3\n\x00\n", "at line 2", "delete that character from line 2"),
    ],
    ids=["unclosed-list", "unclosed-at-end-of-file", "unclosed-mapping", "unclosed-quote", "bad-indent", "tab",
         "duplicate-key", "python-tag", "nul"],
)
def test_yaml_error_names_the_line_to_fix(text, where, hint, tmp_path):
    """Defect: the line reported was where PyYAML gave up, one past the unclosed bracket (and past
    the end of a 3-line file); the line to fix is where the bracket or quote was opened."""
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert err.value.message.startswith(f"YAML syntax error in {path} {where}")
    assert hint in err.value.hint


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path):
    """Defect: PyYAML keeps the last of two equal keys, so the first `lr` was lost without a word."""
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  lr: 2e-3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"at line 3, column 3: the key 'lr' appears a second time \(first at line 2\)"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n# and another\n", "---\n"])
def test_a_config_without_settings_is_refused_not_run_on_defaults(text, tmp_path):
    """Defect: an empty file (or one of comments) loaded as {} and trained the built-in demo."""
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert err.value.message == f"config file {path} holds no settings (it is empty or only comments)"
    assert "`sft-tui init`" in err.value.hint


def test_missing_and_non_utf8_config(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "latin.yaml").write_bytes("task: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(tmp_path / "latin.yaml")


def test_overrides_are_parsed_and_validated():
    config = apply_overrides(example_config("classification"), ["optim.lr=3e-5", "schedule.max_steps=7"])
    assert config.optim.lr == 3e-5 and config.schedule.max_steps == 7
    with pytest.raises(UserError, match="optim.batch_size"):
        apply_overrides(config, ["optim.batch_size=0"])
    with pytest.raises(UserError, match="section.key=value"):
        apply_overrides(config, ["optim.lr"])


@pytest.mark.parametrize(
    "name", ["..", ".", "", "  ", "/abs/run", "a/b", "../../etc", "a\\b", "C:run", "runs/"])
def test_run_name_must_be_one_folder_name(name):
    """Defect: output.run_name `..` (or any path) put the run folder outside runs_dir and overwrote files."""
    with pytest.raises(UserError) as err:
        parse_config({"output": {"run_name": name}})
    assert err.value.message.startswith("invalid config:\n  output.run_name: must be a single folder name")
    assert "a plain folder name such as my-run" in err.value.hint


@pytest.mark.parametrize(("field", "value"), [
    ("output.run_name", "run\x00x"), ("model.name_or_path", "m\x1b]0;HACKED\x1b\\"), ("data.train", "a\x9b2J.jsonl"),
    ("freeze.rules", [{"match": "layer\u202e.0", "train": True}]), ("lora.targets", ["q_proj\x07"]),
])
def test_a_control_character_in_any_text_of_a_config_is_refused(field, value):
    """A config may come from anyone, and its paths and names are shown where text is edited as it
    is (the app's input boxes): an escape sequence there reached the terminal."""
    from core.config import set_dotted

    data = config_to_dict(example_config("causal-lm"))
    set_dotted(data, field, value)
    with pytest.raises(UserError) as err:
        parse_config(data)
    assert f"{field.split('.')[0]}" in err.value.message and "holds a control character" in err.value.message
    assert "\x1b" not in err.value.message  # named as an escape, not sent to the terminal


def test_line_breaks_and_tabs_stay_allowed_where_text_has_them():
    data = config_to_dict(example_config("causal-lm"))
    data["data"]["chat_template"] = "{% for m in messages %}\n\t{{ m.content }}\r\n{% endfor %}"
    assert "\t" in parse_config(data).data.chat_template


@pytest.mark.parametrize("name", ["my-run", "run.2", ".hidden", "2024-01-01_lr3e-5"])
def test_plain_run_names_are_kept(name):
    assert parse_config({"output": {"run_name": name}}).output.run_name == name


@pytest.mark.parametrize(
    ("data", "expected", "hint"),
    [
        ({"seed": -1}, "seed: Input should be greater than or equal to 0 (got -1)", "set seed to a value greater"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295", "set seed to a value less"),
        ({"schedule": {"epochs": 1e308}}, "schedule.epochs: Input should be less than or equal to 10000",
         "set schedule.epochs to a value less than or equal to 10000"),
        ({"optim": {"weight_decay": math.inf}}, "optim.weight_decay: Input should be a finite number (got inf)",
         "set optim.weight_decay to a finite number"),
        ({"optim": {"lr": math.nan}}, "optim.lr: Input should be a finite number (got nan)", "finite number"),
        ({"freeze": {"rules": [{"match": "x", "lr_scale": math.inf}]}}, "freeze.rules.0.lr_scale: Input should be a "
         "finite number", "set freeze.rules.0.lr_scale to a finite number"),
        ({"data": {"val_ratio": -math.inf}}, "data.val_ratio: Input should be a finite number", "finite number"),
    ],
    ids=["seed-negative", "seed-too-big", "epochs-1e308", "weight-decay-inf", "lr-nan", "lr-scale-inf",
         "val-ratio-minus-inf"],
)
def test_out_of_range_and_non_finite_numbers_are_refused(data, expected, hint):
    """Defects: a seed of -1 failed deep in the engine, epochs 1e308 raised OverflowError when the steps
    were counted, and `.inf`/`.nan` passed every bound (weight_decay: .inf trained)."""
    with pytest.raises(UserError) as err:
        parse_config(data)
    assert expected in err.value.message and hint in err.value.hint


def test_a_nan_evaluation_is_never_the_best():
    """Defect: a NaN evaluation compared as better than nothing, and then nothing beat it."""
    assert not is_better("loss", math.nan, None)
    assert not is_better("accuracy", math.nan, 0.5)
    assert is_better("loss", 2.0, math.nan) and is_better("accuracy", 0.1, math.nan)
    assert is_better("loss", 1.0, 2.0) and not is_better("accuracy", 0.4, 0.5)


@pytest.mark.parametrize(
    ("data", "expected", "hint"),
    [
        ({"optim": {"learning_rate": 1e-4}}, "optim.learning_rate: unknown field",
         "use one of the fields of optim: lr, weight_decay"),
        ({"optim": {"lrr": 1e-4}}, "optim.lrr: unknown field; did you mean 'lr'?", "rename it to optim.lr"),
        ({"optimizer": {"lr": 1e-4}}, "optimizer: unknown field; did you mean 'optim'?", "rename it to optim"),
        ({"freeze": {"rules": [{"mach": "x"}]}}, "freeze.rules.0.mach: unknown field; did you mean 'match'?",
         "rename it to freeze.rules.0.match"),
        ({"output": {"run_name": 2024}}, "output.run_name: Input should be a valid string", "quote"),
        ({"data": {"packing": "maybe"}}, "data.packing: Input should be a valid boolean", "true or false"),
        ({"optim": 5}, "optim: Input should be a valid dictionary", "write optim as a section"),
        ({"task": "causal-lm", "eval": {"metric": "accuracy"}}, "eval.metric 'accuracy' is not available",
         "set eval.metric to one of: loss, perplexity"),
        ({"schedule": {"scheduler": "step"}}, "schedule.scheduler: Input should be 'linear', 'cosine' or 'constant'",
         "set schedule.scheduler to 'linear', 'cosine' or 'constant'"),
        ({"data": {"group_by_length": "sometimes"}}, "data.group_by_length: Input should be auto, true or false",
         "set data.group_by_length to auto, true or false"),
    ],
    ids=["unknown-field", "misspelt-field", "misspelt-section", "misspelt-rule-field", "number-for-text",
         "not-a-bool", "not-a-section", "metric-for-other-task", "not-a-choice", "not-auto-or-a-bool"],
)
def test_each_error_comes_with_a_hint_that_says_what_to_do(data, expected, hint):
    """Defect: every validation error had the one hint "fix the fields named above"."""
    with pytest.raises(UserError) as err:
        parse_config(data)
    assert expected in err.value.message and hint in err.value.hint


def test_several_errors_get_one_hint_each():
    with pytest.raises(UserError) as err:
        parse_config({"optim": {"lr": 0, "batch_size": 0}})
    assert err.value.hint == ("set optim.lr to a value greater than 0; "
                              "set optim.batch_size to a value greater than or equal to 1")


@pytest.mark.parametrize(
    ("override", "expected", "hint"),
    [
        ("output.run_name=..", "output.run_name: must be a single folder name", "such as my-run"),
        ("seed=-1", "seed: Input should be greater than or equal to 0", "set seed"),
        ("optim.weight_decay=.inf", "optim.weight_decay: Input should be a finite number", "finite number"),
        ("schedule.epochs=1e308", "schedule.epochs: Input should be less than or equal to 10000", "schedule.epochs"),
        ("optm.lr=1e-4", "--set optm.lr: 'optm' is not a config section", "did you mean optim?"),
    ],
    ids=["run-name", "seed", "weight-decay", "epochs", "section"],
)
def test_overrides_get_the_same_validation(override, expected, hint):
    with pytest.raises(UserError) as err:
        apply_overrides(example_config("causal-lm"), [override])
    assert expected in err.value.message and hint in err.value.hint


def test_errors_carry_their_problems_by_field():
    """A form marks its own field from UserError.fields, never by parsing the message back."""
    with pytest.raises(UserError) as err:
        parse_config({"optim": {"lr": 0, "lrr": 1}, "seed": -1})
    assert err.value.fields == {"optim.lr": "Input should be greater than 0 (got 0)",
                                "optim.lrr": "unknown field; did you mean 'lr'?",
                                "seed": "Input should be greater than or equal to 0 (got -1)"}
    with pytest.raises(UserError) as err:
        parse_config({"task": "causal-lm", "eval": {"metric": "accuracy"}})
    assert list(err.value.fields) == ["eval.metric"]  # a whole-config check names the field it is about
    assert err.value.message.startswith("invalid config:\n  (top level): eval.metric 'accuracy'")
    with pytest.raises(UserError) as err:
        parse_config({"data": {"packing": True}})
    assert list(err.value.fields) == ["data.packing"]
    assert UserError("no such file").fields == {}


def test_one_dotted_path_setter():
    data = config_to_dict(example_config("classification"))
    set_dotted(data, "optim.lr", 1e-3)
    set_dotted(data, "seed", 7)
    assert (data["optim"]["lr"], data["seed"]) == (1e-3, 7)
    with pytest.raises(UserError) as err:
        set_dotted(data, "optm.lr", 1)
    assert err.value.message == "optm.lr: 'optm' is not a config section"
    assert err.value.hint.startswith("did you mean optim? sections: model, data")
    with pytest.raises(UserError, match="'lr' is not a config section"):
        set_dotted(data, "optim.lr.x", 1)


def test_fp16_needs_a_cuda_gpu():
    problem = precision_problem("fp16", cuda_available=False)
    assert (problem.message, problem.hint) == ("precision fp16 needs a CUDA GPU",
                                               "use precision: bf16 or fp32 on this machine")
    assert problem.fields == {"precision": "fp16 needs a CUDA GPU"}
    assert precision_problem("fp16", cuda_available=True) is None
    assert all(precision_problem(p, cuda_available=False) is None for p in ("auto", "fp32", "bf16"))


def test_task_names_are_the_task_literal():
    assert TASKS == ("causal-lm", "classification")
    assert {example_config(task).task for task in TASKS} == set(TASKS)


def test_a_bare_off_in_yaml_is_the_word_off(tmp_path):
    """YAML 1.1 reads `off` as false; a config that says `prefix_cache: off` means the word."""
    assert apply_overrides(RunConfig(), ["compute.prefix_cache=off"]).compute.prefix_cache == "off"
    path = tmp_path / "run.yaml"
    path.write_text("compute:\n  prefix_cache: off\n")
    assert load_config(path).compute.prefix_cache == "off"
    with pytest.raises(UserError) as err:
        apply_overrides(RunConfig(), ["compute.prefix_cache=on"])
    assert "compute.prefix_cache" in err.value.fields


def test_a_run_that_set_group_by_length_before_auto_resumes_with_its_digest(tmp_path):
    """Runs written before `auto` saved true or false; a resume refuses a config whose digest moved,
    so those must read back as the same booleans."""
    for value in (True, False):
        saved = config_to_dict(RunConfig()) | {"data": config_to_dict(RunConfig())["data"] | {"group_by_length": value}}
        path = tmp_path / f"{value}.yaml"
        path.write_text(yaml.safe_dump(saved, sort_keys=False))
        loaded = load_config(path)
        assert loaded.data.group_by_length is value
        assert config_to_dict(loaded) == saved  # what config_digest hashes: the digest the run started with
    assert apply_overrides(RunConfig(), ["data.group_by_length=off"]).data.group_by_length is False
    assert RunConfig().data.group_by_length == "auto"


@pytest.mark.parametrize(("columns", "first", "second"), [
    ({"text": "sentiment", "label": "sentiment"}, "text", "label"),
    ({"prompt": "q", "completion": "q"}, "prompt", "completion"),
    ({"text": "body", "messages": "body"}, "text", "messages"),
])
def test_two_roles_on_one_column_are_refused_naming_both(columns, first, second, tmp_path):
    """A newcomer's review: text and label mapped to one column loaded as valid, and the classifier
    read its own label. The YAML, --set and the app's data form (Session.update) all refuse it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"columns": columns}}), encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(path)
    expected = f"data.columns.{first} and data.columns.{second} both name column {columns[first]!r}"
    assert expected in err.value.message
    assert f"data.columns.{second}" in err.value.fields and f"point data.columns.{second} at another" in err.value.hint
    with pytest.raises(UserError, match=expected):
        apply_overrides(example_config("classification"), [f"data.columns.{k}={v}" for k, v in columns.items()])
    assert parse_config({"data": {"columns": {"text": "review", "label": "sentiment"}}}).data.columns.label == "sentiment"
