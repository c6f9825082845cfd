"""The name a run gets when output.run_name is unset (core.runs.new_run_id, claim_run_id)."""

from __future__ import annotations

import re

from core.config import parse_config
from core.runs import RunPaths, new_run_id


def named(model: str) -> str:
    return new_run_id(parse_config({"task": "causal-lm", "model": {"name_or_path": model}, "data": {"train": "x.jsonl"}}))


def test_a_run_is_named_after_its_start_and_its_model():
    assert re.fullmatch(r"\d{8}-\d{6}-tiny-lm", named("demo:tiny-lm"))
    assert re.fullmatch(r"\d{8}-\d{6}-model", named("org/model"))  # a hub id's last part


def test_a_run_started_from_another_runs_final_model_is_named_after_that_run(tmp_path):
    """Not `<start>-final` (the folder's name), which said nothing about what trained."""
    parent = RunPaths(tmp_path / "runs" / "20261203-191140-minilm")
    parent.final.mkdir(parents=True)
    assert re.fullmatch(r"\d{8}-\d{6}-final", named(str(parent.final)))  # no config: not a run folder
    parent.config.write_text("task: classification\n")
    assert re.fullmatch(r"\d{8}-\d{6}-minilm-cont", named(str(parent.final)))


def test_runs_started_in_the_same_second_get_names_of_their_own(tmp_path, monkeypatch):
    """The second of two runs started in one second was refused as "in use by another engine"."""
    import time

    from core.runs import claim_run_id

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261205-000000")
    config = parse_config({"task": "causal-lm", "model": {"name_or_path": "demo:tiny-lm"},
                           "data": {"train": "x.jsonl"}, "output": {"runs_dir": str(tmp_path / "runs")}})
    claimed = [claim_run_id(config) for _ in range(3)]
    assert claimed == ["20261205-000000-tiny-lm", "20261205-000000-tiny-lm-2", "20261205-000000-tiny-lm-3"]
    assert all((tmp_path / "runs" / name).is_dir() for name in claimed)
    config.output.run_name = "mine"  # a name the user chose is theirs: create_run refuses one that holds a run
    assert claim_run_id(config) == "mine" and not (tmp_path / "runs" / "mine").exists()
