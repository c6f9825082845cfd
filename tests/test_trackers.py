"""output.report_to (issue 9.5): TensorBoard event files in the run folder, read back with TensorBoard's
own reader; W&B offline by default; missing packages and unknown names are clear errors."""

from __future__ import annotations

import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.config import parse_config
from core.engine import train
from core.errors import UserError
from core.events import EvalResult, ListSink, RunFailed, RunFinished, RunStarted, SampleGenerated, StepMetrics
from core.runs import RunPaths
from core.trackers import TENSORBOARD_DIR, tracker_sinks
from helpers import WORDS, tiny_lm_config, write_jsonl


@pytest.fixture
def lm_setup(tiny_model_factory, tmp_path):
    rows = [{"prompt": f"Say {w}:", "completion": f" {w} {w}"} for w in WORDS * 6]
    return tiny_model_factory("llama"), write_jsonl(tmp_path / "sft.jsonl", rows)


def _config(lm_setup, tmp_path, report_to):
    model_dir, data = lm_setup
    return parse_config(tiny_lm_config(model_dir, data, tmp_path / "runs", schedule={"max_steps": 8},
                                       eval={"every_steps": 4, "num_samples": 2, "max_new_tokens": 4},
                                       output={"report_to": report_to, "save_final": False}))


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _series(acc: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag, as TensorBoard reads them."""
    points = acc.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def _started(resumed_from_step: int = 0) -> RunStarted:
    return RunStarted(run_id="r", run_dir="r", task="causal-lm", model="m", config_digest="d", total_params=1,
                      trainable_params=1, planned_steps=10, steps_per_epoch=10, train_rows=1, validation_rows=1,
                      device="cpu", precision="fp32", resumed_from_step=resumed_from_step)


def _step(step: int, loss: float) -> StepMetrics:
    return StepMetrics(step=step, epoch=step / 10, loss=loss, lr=1e-3, grad_norm=0.5, tokens_per_s=100.0,
                       samples_per_s=4.0, tokens_seen=step * 10, elapsed_s=float(step), eta_s=None,
                       memory={"rss_bytes": 1e9})


def test_a_run_writes_tensorboard_files_with_its_loss_eval_and_samples(lm_setup, tmp_path):
    sink = ListSink()
    result = train(_config(lm_setup, tmp_path, ["tensorboard"]), [sink], report_interval_s=0)

    acc = _read(result.run_dir / TENSORBOARD_DIR)
    steps = sink.of_type(StepMetrics)
    assert _series(acc, "train/loss") == ([e.step for e in steps], pytest.approx([e.loss for e in steps]))
    assert _series(acc, "train/lr")[0] == [e.step for e in steps]
    assert {"train/grad_norm", "perf/tokens_per_s", "memory/rss_bytes"} <= set(acc.Tags()["scalars"])
    evals = sink.of_type(EvalResult)
    assert [e.step for e in evals] == [0, 4, 8]  # before training, then every 4: the curve starts where it began
    for metric in ("loss", "perplexity"):
        assert _series(acc, f"eval/{metric}") == ([0, 4, 8], pytest.approx([e.metrics[metric] for e in evals]))
    tensors = set(acc.Tags()["tensors"])
    assert {"samples/0/text_summary", "samples/1/text_summary", "config/text_summary"} <= tensors
    text = acc.Tensors("samples/0/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert sink.of_type(SampleGenerated)[-2].output.strip() in text and "**reference**" in text


def test_a_resume_shows_each_step_once(tmp_path):
    """A crash after the step-5 checkpoint logged steps 6-8; the resume from step 5 logs them again:
    TensorBoard must show the resumed values, once (purge_step)."""
    (sink,) = tracker_sinks(parse_config({"output": {"report_to": ["tensorboard"]}}), RunPaths(tmp_path))
    sink.emit(_started())
    for step in range(1, 9):
        sink.emit(_step(step, loss=10.0 + step))
    sink.emit(RunFailed(message="killed", hint="", last_checkpoint="checkpoints/step-5", step=8))
    sink.emit(_started(resumed_from_step=5))
    for step in range(6, 11):
        sink.emit(_step(step, loss=float(step)))
    sink.emit(RunFinished(step=10, reason="completed", final_metrics={}, best_metrics={}, best_step=None,
                          output_path=None, last_checkpoint=None, elapsed_s=1.0))

    assert _series(_read(tmp_path / TENSORBOARD_DIR), "train/loss") == (
        list(range(1, 11)), [10.0 + s for s in range(1, 6)] + [float(s) for s in range(6, 11)])


def test_a_start_that_fails_in_setup_leaves_no_tensorboard_folder(tmp_path):
    (sink,) = tracker_sinks(parse_config({"output": {"report_to": ["tensorboard"]}}), RunPaths(tmp_path))
    sink.emit(_started())
    sink.emit(RunFailed(message="bad data", hint="", last_checkpoint=None))
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_report_to_rejects_unknown_names_naming_the_field():
    with pytest.raises(UserError) as err:
        parse_config({"output": {"report_to": ["tensorbord"]}})
    assert "output.report_to" in err.value.message and "did you mean 'tensorboard'" in err.value.message
    assert "tensorboard, wandb" in err.value.hint and "output.report_to" in err.value.fields
    assert parse_config({"output": {"report_to": "tensorboard"}}).output.report_to == ["tensorboard"]
    assert parse_config({}).output.report_to == []


def test_missing_tensorboard_fails_the_start_with_the_pip_command(lm_setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    sink = ListSink()
    with pytest.raises(UserError) as err:
        train(_config(lm_setup, tmp_path, ["tensorboard"]), [sink], report_interval_s=0)
    assert "output.report_to" in err.value.message and "pip install 'tensorboard'" in err.value.hint
    assert sink.of_type(RunFailed) and not (tmp_path / "runs" / "lm").exists(), "the failed start leaves nothing"


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError) as err:
        tracker_sinks(parse_config({"output": {"report_to": ["wandb"]}}), RunPaths(tmp_path))
    assert "output.report_to" in err.value.message and "pip install 'wandb'" in err.value.hint


@pytest.mark.parametrize("user_mode", [None, "online"])
def test_wandb_is_offline_unless_the_user_sets_wandb_mode(tmp_path, monkeypatch, user_mode):
    calls: list = []

    class Run:
        def log(self, data, step):
            calls.append(("log", step, sorted(data)))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    fake = types.ModuleType("wandb")
    fake.Settings = lambda **kw: kw
    fake.Table = lambda columns, data: list(data)
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if user_mode:
        monkeypatch.setenv("WANDB_MODE", user_mode)
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)

    (sink,) = tracker_sinks(parse_config({"output": {"report_to": ["wandb"]}}), RunPaths(tmp_path))
    sink.emit(_started())
    sink.emit(_step(1, 2.0))
    sink.emit(EvalResult(step=1, epoch=0.1, metrics={"loss": 1.5}, is_best=True, seconds=0.1))
    sink.emit(RunFailed(message="x", hint="", last_checkpoint=None, step=1))

    init = calls[0][1]
    assert init.get("mode") == (None if user_mode else "offline") and init["dir"] == str(tmp_path)
    assert init["settings"]["console"] == "off", "wandb must not wrap the terminal the app draws on"
    assert calls[1][:2] == ("log", 1) and "train/loss" in calls[1][2] and calls[2] == ("log", 1, ["eval/loss"])
    assert calls[-1] == ("finish", 1)
