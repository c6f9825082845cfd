"""The training loop end to end on tiny models: learning, freezing, resume, guards, export."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import RunConfig, parse_config
from core.control import Control
from core.engine import train
from core.errors import UserError
from core.manifest import latest_checkpoint, list_checkpoints
from core.events import (CheckpointSaved, EvalResult, ListSink, Paused, Resumed, RunFailed, RunFinished, RunStarted,
                         SampleGenerated, StepMetrics, read_events)
from helpers import StopAt, tiny_lm_config

STATE_KEYS = {"step", "epoch", "step_in_epoch", "epoch_progress", "tokens_seen", "best", "best_step", "best_metrics",
              "before_metrics", "before_untrained_head", "bad_evals", "elapsed_s", "micro_batch_size"}
"""The keys of a checkpoint's state.json: runs of every version wrote these, but micro_batch_size
(issue 11's out-of-memory recovery), which a resume of an older run takes as 0, and before_metrics
and before_untrained_head (issue 13's evaluation before training), which it takes as none."""


def lm_config(model_dir, data, tmp_path, **over) -> RunConfig:
    """helpers.tiny_lm_config with `section__field=value` overrides."""
    sections: dict[str, dict] = {}
    for key, value in over.items():
        section, _, field = key.partition("__")
        sections.setdefault(section, {})[field] = value
    return parse_config(tiny_lm_config(model_dir, data, tmp_path / "runs", **sections))


def run(config, control=None, **kw):
    sink = ListSink()
    result = train(config, [sink], control, report_interval_s=0, **kw)
    return result, sink


def step_losses(sink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of_type(StepMetrics)}


def test_loss_falls_frozen_params_stay_trainable_change(tiny_model_factory, sft_file, tmp_path):
    model_dir = tiny_model_factory("llama")
    config = lm_config(model_dir, sft_file, tmp_path, freeze__preset="top-n", freeze__top_n=1)
    result, sink = run(config)

    losses = list(step_losses(sink).values())
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    started = sink.of_type(RunStarted)[0]
    assert 0 < started.trainable_params < started.total_params
    evals = sink.of_type(EvalResult)
    assert [e.step for e in evals] == [0, 10, 20, 30]  # before training (eval.before_training), then every 10
    assert evals[0].before_training and not evals[0].is_best and not evals[0].untrained_head  # the LM head is pretrained
    assert evals[-1].metrics["loss"] < evals[0].metrics["loss"]
    assert sink.of_type(RunFinished)[0].before_metrics == evals[0].metrics
    assert {"loss", "perplexity"} <= set(sink.of_type(EvalResult)[-1].metrics)
    samples = sink.of_type(SampleGenerated)
    assert len(samples) == 8 and all(s.prompt.startswith("Say") for s in samples)  # 2 at each evaluation

    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(result.output_path / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "no parameter changed"
    assert all(name.startswith(("model.layers.1.", "model.norm", "lm_head", "model.embed_tokens")) for name in changed)
    assert not any(name.startswith("model.layers.0.") for name in changed)
    assert result.reason == "completed"


def test_events_log_and_run_folder(tiny_model_factory, sft_file, tmp_path):
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=4, eval__every_steps=2)
    result, sink = run(config)
    root = result.run_dir
    assert (root / "config.yaml").exists() and (root / "final" / "config.json").exists()
    on_disk = read_events(root / "events.jsonl")
    assert [e.type for e in on_disk] == [e.type for e in sink.events]
    assert on_disk[0].type == "run_started" and on_disk[-1].type == "run_finished"
    assert isinstance(sink.events[-1], RunFinished) and sink.events[-1].output_path == str(root / "final")

    from transformers import AutoModelForCausalLM, pipeline

    assert AutoModelForCausalLM.from_pretrained(root / "final").config.model_type == "llama"
    generate = pipeline("text-generation", model=str(root / "final"), device="cpu")
    out = generate("Say red 1:", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert out.startswith("Say red 1:")


def test_resume_equals_uninterrupted(tiny_model_factory, sft_file, tmp_path):
    """GPT-2 has dropout, so this also checks that the RNG state is restored."""
    model_dir = tiny_model_factory("gpt2")
    full_cfg = lm_config(model_dir, sft_file, tmp_path, schedule__max_steps=12, eval__every_steps=0,
                         eval__num_samples=0, optim__grad_accum=2, output__run_name="full")
    _, full = run(full_cfg)

    cut_cfg = full_cfg.model_copy(deep=True)
    cut_cfg.output.run_name = "cut"
    first, part1 = run(cut_cfg, StopAt(5))
    assert first.reason == "stopped" and first.step == 5
    assert first.last_checkpoint.name == "step-5"
    saved = json.loads((first.last_checkpoint / "state.json").read_text())
    assert set(saved) == STATE_KEYS and saved["step"] == 5  # runs saved before TrainState resume too
    resumed, part2 = run(None, resume_dir=first.run_dir)
    assert resumed.step == 12 and part2.of_type(RunStarted)[0].resumed_from_step == 5

    expected = step_losses(full)
    got = {**step_losses(part1), **step_losses(part2)}
    assert sorted(got) == list(range(1, 13))
    torch.testing.assert_close(torch.tensor([got[s] for s in range(1, 13)]),
                               torch.tensor([expected[s] for s in range(1, 13)]))
    a = load_file(str(Path(full_cfg.output.runs_dir) / "full" / "final" / "model.safetensors"))
    b = load_file(str(resumed.output_path / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert read_events(first.run_dir / "events.jsonl")[-1].type == "run_finished"


def test_a_resume_removes_what_killed_saves_left_and_keeps_every_complete_checkpoint(tiny_model_factory, sft_file,
                                                                                     tmp_path):
    """A kill during a save at a stop left its hidden .tmp-step-N for good (87 MB on MiniLM, tens of
    GB on a 7B model), and a kill while keep_last pruned left a step-N of a manifest alone."""
    import shutil

    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=8,
                       checkpoint__every_steps=2, checkpoint__keep_last=3, eval__num_samples=0)
    first, _ = run(config, StopAt(5))
    checkpoints = first.run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-2", "step-4", "step-5"]
    (checkpoints / ".tmp-step-7").mkdir()  # a stop's save, killed
    (checkpoints / ".tmp-step-7" / "model.safetensors").write_bytes(b"0" * 1000)
    (first.run_dir / ".old-final").mkdir()
    for name in ("model.safetensors", "optimizer.pt"):  # a prune of step-2, killed half way
        (checkpoints / "step-2" / name).unlink()
    shutil.copytree(checkpoints / "step-5", checkpoints / "step-9")  # newer and broken: not a leftover to judge
    (checkpoints / "step-9" / "optimizer.pt").write_bytes(b"")
    resumed, _ = run(None, resume_dir=first.run_dir)
    assert resumed.reason == "completed"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-5", "step-6", "step-8", "step-9"]
    assert not (first.run_dir / ".old-final").exists() and (first.run_dir / "final").is_dir()


def test_a_resume_on_data_that_changed_since_the_start_is_refused(tiny_model_factory, sft_file, tmp_path):
    """Only the config was compared: a data file cut from 1,500 to 700 rows resumed into a plan of 160
    steps instead of 340, another validation split and a data position among other rows."""
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=8,
                       checkpoint__every_steps=2, eval__num_samples=0)
    first, sink = run(config, StopAt(3))
    started = sink.of_type(RunStarted)[0]
    assert len(started.data_digest) == 16 and started.train_rows > 40
    rows = sft_file.read_text(encoding="utf-8").splitlines(keepends=True)
    sft_file.write_text("".join(rows[:40]), encoding="utf-8")
    with pytest.raises(UserError) as refused:
        run(None, resume_dir=first.run_dir)
    assert refused.value.message == (
        f"the data of run {first.run_dir} changed since it started ({started.train_rows:,} training and "
        f"{started.validation_rows:,} validation rows then, 32 and 8 now)")
    assert "put the data back as it was" in refused.value.hint
    sft_file.write_text("".join(rows), encoding="utf-8")  # put back: it resumes
    resumed, _ = run(None, resume_dir=first.run_dir)
    assert resumed.reason == "completed" and resumed.step == 8


def test_a_run_folder_moved_while_it_trains_ends_the_run_instead_of_splitting_it(tiny_model_factory, sft_file,
                                                                                  tmp_path):
    """The engine writes by path: a save after a `mv` made a new folder at the old place holding only
    checkpoints and final/, which no client lists, while the moved folder said the run finished."""
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=8,
                       checkpoint__every_steps=3, eval__num_samples=0)
    root = Path(config.output.runs_dir) / "lm"
    moved = root.with_name("lm-old")

    class MoveAtTwo(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, StepMetrics) and event.step == 2:
                root.rename(moved)

    with pytest.raises(UserError, match="was moved or deleted while the run trained"):
        train(config, [MoveAtTwo()], None, report_interval_s=0)
    assert not root.exists()
    assert read_events(moved / "events.jsonl")[-1].type == "run_failed"


def test_a_run_started_with_relative_paths_resumes_from_another_folder(tiny_model_factory, sft_file, tmp_path,
                                                                    monkeypatch):
    """The run's config named its data relative to the folder it started in: a resume from anywhere
    else failed with "file data.jsonl does not exist"."""
    import shutil

    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    shutil.copy(sft_file, here / "data.jsonl")
    monkeypatch.chdir(here)
    config = lm_config(tiny_model_factory("llama"), "data.jsonl", here, schedule__max_steps=6, eval__every_steps=0,
                       eval__num_samples=0)
    config.output.runs_dir = "runs"
    first, _ = run(config, StopAt(3))
    assert first.reason == "stopped"
    saved = parse_config(yaml.safe_load((here / first.run_dir / "config.yaml").read_text()))
    assert saved.data.train == str(here / "data.jsonl")
    monkeypatch.chdir(elsewhere)
    config_file = here / first.run_dir / "config.yaml"
    as_started = config_file.read_text()
    config_file.write_text(as_started.replace("lr: 0.003", "lr: 0.0001"))
    with pytest.raises(UserError, match=r"config.yaml was changed after the run started"):
        run(None, resume_dir=here / first.run_dir)  # the new lr was ignored, a new batch size misread the position
    assert read_events(here / first.run_dir / "events.jsonl")[-1].type == "run_finished"  # not marked failed
    config_file.write_text(as_started)
    resumed, _ = run(None, resume_dir=here / first.run_dir)
    assert resumed.reason == "completed" and resumed.step == 6


def test_interrupted_checkpoint_write_keeps_previous(tiny_model_factory, sft_file, tmp_path, monkeypatch):
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=8,
                       checkpoint__every_steps=3, eval__num_samples=0)
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # first file of the second checkpoint
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError):
        run(config)
    ckpt_dir = Path(config.output.runs_dir) / "lm" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-3"]
    assert not any(p.name.startswith(".tmp") for p in ckpt_dir.iterdir())
    events = read_events(Path(config.output.runs_dir) / "lm" / "events.jsonl")
    assert events[-1].type == "run_failed" and events[-1].last_checkpoint.endswith("step-3")

    monkeypatch.setattr(torch, "save", real_save)
    resumed, _ = run(None, resume_dir=Path(config.output.runs_dir) / "lm")
    assert resumed.reason == "completed" and resumed.step == 8


def test_a_full_disk_at_the_final_save_and_in_the_events_is_said_not_called_a_bug(tiny_model_factory, sft_file,
                                                                                   tmp_path, monkeypatch):
    """final/ on a full disk ended with "SafetensorError ... this looks like a bug", and an events
    file that could not flush its last line buried that under three chained tracebacks."""
    import errno

    import core.export
    from core.events import JsonlSink

    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6,
                       checkpoint__every_steps=3, eval__num_samples=0)
    root = Path(config.output.runs_dir) / "lm"

    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(core.export, "save_final", full)
    real_close = JsonlSink.close

    def close_on_a_full_disk(self):
        real_close(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonlSink, "close", close_on_a_full_disk)
    with pytest.raises(UserError) as failed:
        run(config)
    assert failed.value.message == f"cannot write {root}: no space left on the device"
    assert failed.value.hint == f"free space under {root}, then resume with `sft-tui train --resume {root.absolute()}`"
    last = read_events(root / "events.jsonl")[-1]
    assert last.type == "run_failed" and "bug" not in last.hint and last.last_checkpoint.endswith("step-6")
    assert not (root / "error.log").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_factory, sft_file, tmp_path, monkeypatch):
    import core.loss

    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=10,
                       checkpoint__every_steps=3, eval__num_samples=0)
    real = core.loss.batch_loss_sum
    calls = {"n": 0}

    def poisoned(model, batch, task, **kw):  # from the 4th training batch on: evaluations do not count
        calls["n"] += model.training
        loss, logits = real(model, batch, task, **kw)
        return (loss * float("nan") if calls["n"] >= 4 else loss), logits

    monkeypatch.setattr(core.loss, "batch_loss_sum", poisoned)
    with pytest.raises(UserError, match="NaN|nan"):
        run(config)
    root = Path(config.output.runs_dir) / "lm"
    failed = read_events(root / "events.jsonl")[-1]
    assert failed.type == "run_failed" and failed.last_checkpoint.endswith("step-3")
    assert "lr" in failed.hint
    assert latest_checkpoint(root / "checkpoints").name == "step-3"
    state = load_file(str(root / "checkpoints" / "step-3" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (root / "final").exists()


def test_classification_exports_a_loadable_model(tiny_model_factory, cls_file, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    config = parse_config({
        "task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
        "data": {"train": str(cls_file), "max_length": 16},
        "optim": {"lr": 1e-3, "batch_size": 8}, "schedule": {"epochs": 2},
        "eval": {"metric": "accuracy"}, "output": {"runs_dir": str(tmp_path / "runs")},
    })
    result, sink = run(config)
    evals = sink.of_type(EvalResult)
    assert len(evals) == 3 and evals[0].step == 0  # before training, then once per epoch
    assert evals[0].untrained_head and not evals[1].untrained_head  # the new head's "before" is an untrained one
    assert {"loss", "accuracy", "f1"} == set(evals[-1].metrics)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_path)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    classify = pipeline("text-classification", model=str(result.output_path), device="cpu")
    assert classify("cat is good great fine")[0]["label"] in {"neg", "pos"}
    assert sink.of_type(CheckpointSaved)  # saved after the first epoch's evaluation


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral", "bert", "roberta", "distilbert"])
def test_every_architecture_trains_a_step_with_top_n_freezing(arch, tiny_model_factory, sft_file, cls_file, tmp_path):
    encoder = arch in ("bert", "roberta", "distilbert")
    data = cls_file if encoder else sft_file
    config = parse_config({
        "task": "classification" if encoder else "causal-lm",
        "model": {"name_or_path": str(tiny_model_factory(arch))},
        "data": {"train": str(data), "max_length": 16},
        "freeze": {"preset": "top-n", "top_n": 1},
        "optim": {"batch_size": 4}, "schedule": {"max_steps": 1},
        "eval": {"num_samples": 1, "max_new_tokens": 2},
        "output": {"runs_dir": str(tmp_path / "runs"), "save_final": False},
    })
    result, sink = run(config)
    started = sink.of_type(RunStarted)[0]
    assert result.step == 1 and 0 < started.trainable_params < started.total_params
    assert sink.of_type(StepMetrics)[0].loss > 0


def test_pause_and_resume_from_another_thread(tiny_model_factory, sft_file, tmp_path):
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6, eval__num_samples=0)
    control = Control()

    class PauseAtTwo(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, StepMetrics) and event.step == 2:
                control.pause()
                threading.Timer(0.3, control.resume).start()

    sink = PauseAtTwo()
    result = train(config, [sink], control, report_interval_s=0)
    assert result.step == 6
    assert [e.step for e in sink.of_type(Paused)] == [2] and [e.step for e in sink.of_type(Resumed)] == [2]


def test_unknown_label_column_fails_before_training(tiny_model_factory, cls_file, tmp_path):
    config = parse_config({
        "task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
        "data": {"train": str(cls_file), "columns": {"label": "sentiment"}},
        "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "bad"},
    })
    sink = ListSink()
    with pytest.raises(UserError, match="sentiment"):
        train(config, [sink])
    failed = sink.events[-1]
    assert isinstance(failed, RunFailed) and "sentiment" in failed.message


def test_a_failed_start_does_not_block_its_run_name(tiny_model_factory, cls_file, tmp_path):
    """Issue 7.5: a start that failed on bad data left a stub folder, and the fixed config was then
    refused with "already holds a run"."""
    bad = {"task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
           "data": {"train": str(cls_file), "columns": {"label": "sentiment"}},
           "schedule": {"max_steps": 2}, "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "again"}}
    with pytest.raises(UserError, match="sentiment"):
        run(parse_config(bad))
    assert not (tmp_path / "runs" / "again").exists()
    bad["data"]["columns"] = {}
    result, _ = run(parse_config(bad))
    assert result.reason == "completed" and result.step == 2


def test_early_stopping_after_patience_evaluations_without_improvement(tiny_model_factory, sft_file, tmp_path,
                                                                       monkeypatch):
    import core.evaluate

    losses = iter([0.1, 1.0, 0.9, 0.95, 0.97, 0.5])  # the first, before training, is neither best nor counted

    def scripted(*args, **kwargs):
        loss = next(losses)
        return {"loss": loss, "perplexity": 2.718 ** loss}

    monkeypatch.setattr(core.evaluate, "evaluate", scripted)
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=20, eval__every_steps=2,
                       eval__patience=2, eval__num_samples=0, checkpoint__keep_last=1)
    result, sink = run(config)
    assert result.reason == "early-stopped" and result.step == 8
    assert [e.is_best for e in sink.of_type(EvalResult)] == [False, True, True, False, False]
    finished = sink.of_type(RunFinished)[0]
    assert finished.best_step == 4 and finished.best_metrics["loss"] == 0.9
    # The best checkpoint outlives keep_last 1, and final/ holds its model, as Trainer's early stopping
    # loads the best at the end: it was deleted, and final/ held the worse model of step 8.
    assert [p.name for p in list_checkpoints(result.run_dir / "checkpoints")] == ["step-4", "step-8"]
    assert finished.output_step == 4 and finished.output_metrics == finished.best_metrics
    from sft_tui.format.train import best_weights_note  # what both front ends add after the model's path

    assert best_weights_note(finished) == " (the weights of step 4, the best evaluation)"
    final = load_file(str(result.run_dir / "final" / "model.safetensors"))
    best = load_file(str(result.run_dir / "checkpoints" / "step-4" / "model.safetensors"))
    last = load_file(str(result.run_dir / "checkpoints" / "step-8" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(final[name], best[name]) and not torch.equal(final[name], last[name])


def test_a_run_that_stopped_early_and_failed_at_final_ends_there_on_resume(tiny_model_factory, sft_file, tmp_path,
                                                                            monkeypatch):
    """Its checkpoint holds the count that stopped it: the resume trained on, past the step where the
    uninterrupted run had stopped, and could have ended with another model."""
    import core.evaluate
    import core.export

    losses = iter([0.1, 1.0, 0.9, 0.95, 0.97])  # no sixth: an evaluation after the resume would raise

    def scripted(*args, **kwargs):
        loss = next(losses)
        return {"loss": loss, "perplexity": 2.718 ** loss}

    monkeypatch.setattr(core.evaluate, "evaluate", scripted)
    save_final = core.export.save_final

    def crashed(*args, **kwargs):
        raise RuntimeError("killed while writing final/")

    monkeypatch.setattr(core.export, "save_final", crashed)
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=20, eval__every_steps=2,
                       eval__patience=2, eval__num_samples=0, checkpoint__every_steps=2)
    with pytest.raises(RuntimeError):
        run(config)
    monkeypatch.setattr(core.export, "save_final", save_final)
    result, sink = run(None, resume_dir=Path(config.output.runs_dir) / "lm")
    assert result.reason == "early-stopped" and result.step == 8 and not sink.of_type(StepMetrics)
    assert sink.of_type(RunFinished)[0].output_step == 4 and (result.run_dir / "final" / "model.safetensors").exists()


def test_evaluations_asked_for_change_neither_the_best_step_nor_early_stopping(tiny_model_factory, sft_file,
                                                                              tmp_path, monkeypatch):
    """A review paused a run with eval.patience 2 and pressed `e` three times: three evaluations of the
    same weights, none better, ended the run as early-stopped with no checkpoint to resume."""
    import core.evaluate

    losses = iter([2.0, 1.0, 1.5, 1.5, 1.5, 0.9])  # before training, step 2, three asked for at step 3, step 4

    def scripted(*args, **kwargs):
        loss = next(losses)
        return {"loss": loss, "perplexity": 2.718 ** loss}

    monkeypatch.setattr(core.evaluate, "evaluate", scripted)
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=4, eval__every_steps=2,
                       eval__patience=2, eval__num_samples=0)
    control = Control()

    class AskThriceAtThree(ListSink):
        """Pauses after step 3 and asks for an evaluation, then another as each one comes, three in all."""

        def emit(self, event):
            super().emit(event)
            asked = [e for e in self.of_type(EvalResult) if e.step == 3]
            if isinstance(event, StepMetrics) and event.step == 3:
                control.pause()
                control.eval_now()
            elif isinstance(event, EvalResult) and event.step == 3:
                control.eval_now() if len(asked) < 3 else control.resume()

    sink = AskThriceAtThree()
    result = train(config, [sink], control, report_interval_s=0)
    assert result.reason == "completed" and result.step == 4
    evals = sink.of_type(EvalResult)
    assert [(e.step, e.is_best) for e in evals] == [(0, False), (2, True), (3, False), (3, False), (3, False),
                                                   (4, True)]
    assert sink.of_type(RunFinished)[0].best_step == 4


def test_save_now_and_eval_now_from_the_control(tiny_model_factory, sft_file, tmp_path):
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6, eval__every_steps=100,
                       checkpoint__every_steps=100, eval__num_samples=0)
    control = Control()

    class AskAtTwo(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, StepMetrics) and event.step == 2:
                control.save_now()
                control.eval_now()

    sink = AskAtTwo()
    train(config, [sink], control, report_interval_s=0)
    assert [e.step for e in sink.of_type(CheckpointSaved)] == [2]
    assert [e.step for e in sink.of_type(EvalResult)] == [0, 2, 6]  # before training, on request, at the end


def test_the_runs_clock_saves_a_checkpoint_where_no_step_plan_does(tiny_model_factory, sft_file, tmp_path):
    """A one-epoch run with the defaults evaluates once, at its end, and so saved no checkpoint: a crash
    lost it all. checkpoint.every_minutes saves one once that much of the run's time has passed
    without one: here a nanosecond, so after every step, the last one's tail included."""
    over = {"schedule__max_steps": 4, "eval__every_steps": 100, "eval__num_samples": 0}
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, checkpoint__every_minutes=1e-11, **over)
    _, sink = run(config)
    assert [e.step for e in sink.of_type(CheckpointSaved)] == [1, 2, 3, 4]
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, checkpoint__every_minutes=0,
                       output__run_name="off", **over)
    _, sink = run(config)
    assert sink.of_type(CheckpointSaved) == []


def test_a_stop_asked_while_the_run_is_set_up_ends_it_before_any_work(tiny_model_factory, sft_file, tmp_path):
    """A scheduler's SIGTERM during setup still ran the evaluation before training, a step and a
    checkpoint, which on a large model outlast the grace before its SIGKILL; a resumed run keeps
    the checkpoint it has."""
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6,
                       checkpoint__every_steps=2, eval__num_samples=0)
    stopped = Control()
    stopped.stop()
    result, sink = run(config, stopped)
    assert (result.reason, result.step, result.last_checkpoint) == ("stopped", 0, None)
    assert not sink.of_type(EvalResult) and not sink.of_type(StepMetrics) and not sink.of_type(CheckpointSaved)

    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6,
                       checkpoint__every_steps=2, eval__num_samples=0, output__run_name="later")
    first, _ = run(config, StopAt(3))
    stopped = Control()
    stopped.stop()
    again, sink = run(None, stopped, resume_dir=first.run_dir)
    assert (again.reason, again.step, again.last_checkpoint.name) == ("stopped", 3, "step-3")
    assert not sink.of_type(StepMetrics) and not sink.of_type(CheckpointSaved)


def test_checkpoint_now_while_paused_saves_at_once(tiny_model_factory, sft_file, tmp_path):
    """Issue 10.14: "checkpoint now" on a paused run said "saved after the current step" and saved
    nothing until the user resumed. Resumed here only once the checkpoint is on disk (or, with the
    old loop, after 60 s, which the order of the events then gives away)."""
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=4, eval__every_steps=100,
                       checkpoint__every_steps=100, eval__num_samples=0)
    control = Control()
    fallback = threading.Timer(60, control.resume)

    class SaveWhilePaused(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, StepMetrics) and event.step == 2:
                control.pause()
            elif isinstance(event, Paused):
                control.save_now()
                fallback.start()
            elif isinstance(event, CheckpointSaved) and control.paused:
                control.resume()

    sink = SaveWhilePaused()
    train(config, [sink], control, report_interval_s=0)
    fallback.cancel()
    kinds = [type(e).__name__ for e in sink.events if isinstance(e, (Paused, CheckpointSaved, Resumed))]
    assert kinds == ["Paused", "CheckpointSaved", "Resumed"]
    assert [e.step for e in sink.of_type(CheckpointSaved)] == [2]


def test_a_folder_control_wakes_a_paused_run_for_a_save(tmp_path):
    from core.commands import FolderControl, send_command

    control = FolderControl(tmp_path)
    send_command(tmp_path, "pause")
    control.poll()
    assert control.paused
    send_command(tmp_path, "save")
    assert control.wait_while_paused() is True and control.paused and control.take_save_request()
    send_command(tmp_path, "resume")
    assert control.wait_while_paused() is False


def eta_for(tmp_path, **over):
    from core.eta import Eta
    from core.plan import plan_steps

    config = lm_config(tmp_path, tmp_path / "x.jsonl", tmp_path, schedule__max_steps=10, eval__every_steps=5,
                       optim__batch_size=4, **over)
    return Eta(plan_steps(config, 40), validation_rows=8, samples_per_eval=2, max_new_tokens=6, model_bytes=100,
               checkpoint_bytes=300, save_final=True)


def test_the_eta_counts_evaluations_generations_checkpoints_and_the_final_save(tmp_path):
    """Issue 10.15: the ETA was the steps alone, 0:10 with 19 s left. Measured durations in, seconds
    out, for a run of 10 steps at 1 s a step, with evaluations after steps 5 and 10 and a checkpoint
    after step 5. A step's report comes before the evaluation and checkpoint due after it."""
    eta = eta_for(tmp_path)
    eta.stepped(5.0, 5)
    before = eta.remaining(5)
    assert before.estimated and before.seconds > 5 * 1.0  # evaluations, generations and saves guessed
    eta.evaluated(3.0, 2.0)
    eta.checkpointed(1.5)  # 300 bytes in 1.5 s: the final save's 100 bytes take 0.5 s
    eta.stepped(1.0, 1)
    after = eta.remaining(6)
    assert not after.estimated
    assert after.seconds == pytest.approx(4 * 1.0 + (3.0 + 2.0) + 0.5)
    assert eta.remaining(10).seconds == pytest.approx(3.0 + 2.0 + 0.5)  # the last evaluation, then the save
    assert eta_for(tmp_path).remaining(0) is None  # nothing timed yet


def test_the_eta_counts_the_checkpoints_the_clock_adds(tmp_path):
    """checkpoint.every_minutes saves between the planned checkpoints, and the ETA left those out: a
    long run without evaluations writes one every 30 minutes, minutes each for a 7B model's AdamW
    state. Here the clock saves every 2 s of training; from step 6 (1 s after the save at step 5,
    4 steps of 1 s left, none planned) it saves 1 s and 3 s from now, 1.5 s each."""
    def timed(eta):
        eta.stepped(5.0, 5)
        eta.evaluated(3.0, 2.0)
        eta.checkpointed(1.5)
        eta.stepped(1.0, 1)
        return eta

    plain, clocked = timed(eta_for(tmp_path)), timed(eta_for(tmp_path))
    clocked.clock_s = 2.0
    assert clocked.remaining(6, since_save_s=1.0).seconds - plain.remaining(6).seconds == pytest.approx(2 * 1.5)
    assert clocked.remaining(6, since_save_s=1.5).seconds - plain.remaining(6).seconds == pytest.approx(2 * 1.5)
    # from step 5, its planned save next: that one resets the clock, which then saves 2 s and 4 s on
    assert clocked.remaining(5, since_save_s=1.9).seconds - plain.remaining(5).seconds == pytest.approx(2 * 1.5)


def test_the_first_steps_warm_up_and_do_not_set_the_pace(tmp_path):
    """After a resume the first report's step took 10 times a later one's: the ETA read 1:38:41, then
    13:01 ten seconds later."""
    eta = eta_for(tmp_path)

    def step_time() -> float:  # one step more done: the ETA's step time, whatever comes after the steps
        return eta.remaining(3).seconds - eta.remaining(4).seconds

    eta.stepped(10.0, 1)  # caches built, memory allocated
    assert step_time() == pytest.approx(10.0)  # nothing better known yet
    eta.stepped(2.0, 2)
    assert step_time() == pytest.approx(1.0)


def test_reported_etas_say_when_they_are_estimates(tiny_model_factory, sft_file, tmp_path):
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, schedule__max_steps=6, eval__every_steps=3,
                       eval__num_samples=1, eval__max_new_tokens=2)
    _, sink = run(config)
    reports = {e.step: e for e in sink.of_type(StepMetrics)}
    assert reports[1].eta_estimated and reports[1].eta_s > 0  # nothing but steps timed yet
    assert not reports[4].eta_estimated  # the evaluation, its sample and a checkpoint were timed at step 3
    assert reports[6].eta_s > 0  # the last evaluation and the final save are still to come
