"""RunConfig: YAML round-trip, the commented example, and errors that name the field."""

import pytest
import yaml

from core.config import (FreezeRule, RunConfig, apply_overrides, commented_yaml, example_config, load_config,
                         parse_config, save_config)
from core.errors import UserError


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_yaml_round_trip(task, tmp_path):
    config = example_config(task)
    config.freeze.rules.append(FreezeRule(match="re:.*layer\\.[0-3]\\..*", train=False))
    config.freeze.rules.append(FreezeRule(match="classifier", lr_scale=10.0))
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


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


def test_yaml_syntax_error_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: causal-lm\noptim:\n  lr: [1e-4\n  batch_size: 4\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "YAML syntax error" in err.value.message and "line 4" in err.value.message


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
