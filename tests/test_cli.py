"""The headless command line as a user meets it: real subprocesses, real output, no tracebacks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.events import EvalResult, RunFinished, RunStarted, read_events
from sft_tui.format.numbers import format_metric



def sft(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "120"})


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.fixture
def lm_setup(tmp_path, tiny_model_factory):
    rows = [{"prompt": f"Echo {w}:", "completion": f" {w}"} for w in "abc def ghi jkl mno pqr stu vwx".split() * 6]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {
        "task": "causal-lm",
        "model": {"name_or_path": str(tiny_model_factory("llama"))},
        "data": {"train": "train.jsonl", "max_length": 32},
        "optim": {"lr": 1e-3, "batch_size": 4},
        "schedule": {"max_steps": 6},
        "eval": {"every_steps": 3, "num_samples": 1, "max_new_tokens": 4},
        "output": {"runs_dir": "runs", "run_name": "cli"},
    }


def test_init_writes_a_config_that_trains(lm_setup, tmp_path):
    out = sft("init", "--task", "causal-lm", "my.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "sft-tui train my.yaml" in out.stdout
    text = (tmp_path / "my.yaml").read_text()
    assert "# Base learning rate of AdamW" in text
    again = sft("init", "my.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    spaced = sft("init", "my run.yaml", cwd=tmp_path)  # the command it prints can be pasted as it is
    assert spaced.stdout.strip().endswith("run it with: sft-tui train 'my run.yaml'")

    write_config(tmp_path / "run.yaml", **lm_setup)
    out = sft("train", "run.yaml", "--set", "optim.lr=2e-3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "evaluation at step 3" in out.stderr and "perplexity" in out.stderr
    assert "run completed at step 6" in out.stdout and "Traceback" not in out.stderr
    run = tmp_path / "runs" / "cli"
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 2e-3
    assert (run / "final" / "model.safetensors").exists()


def test_max_length_beyond_positions_warns_and_clips(lm_setup, tmp_path):
    lm_setup["data"]["max_length"] = 4096
    lm_setup["schedule"] = {"max_steps": 1}
    write_config(tmp_path / "run.yaml", **lm_setup)
    out = sft("train", "run.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "data.max_length 4096 is beyond the model's 256 positions; clipped to 256" in " ".join(out.stderr.split())


def test_demo_runs_the_pretrained_minilm(tmp_path):
    """The bundled demo, cut to a few steps: the real pretrained model and data, offline."""
    out = sft("train", "--demo", "--set", "schedule.max_steps=2", "--set", "output.run_name=demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "22,713,986/22,713,986" in out.stderr and "720 train / 80 validation rows" in out.stderr
    assert "accuracy" in out.stderr
    # MiniLM gets a new classification head: the evaluation before training scores random weights
    assert "evaluation before training (" in out.stderr and "; the new classification head is untrained)" in out.stderr
    assert out.stdout.splitlines()[-2:] == ["before: the new classification head is untrained",
                                            f"model saved to {Path('runs') / 'demo' / 'final'}"]
    assert "\nbefore -> after: loss " in out.stdout and " · accuracy " in out.stdout and " · f1 " in out.stdout
    labels = json.loads((tmp_path / "runs" / "demo" / "final" / "config.json").read_text())["id2label"]
    assert labels == {"0": "negative", "1": "positive"}


def test_model_output_and_messages_are_printed_as_text_not_markup():
    """A sample the model generated, or a path, holding `[/]` raised rich's MarkupError inside the
    training loop; long paths were broken across lines, so a copied resume path had a newline in it."""
    import io

    from rich.console import Console

    from core.events import LogMessage, RunFailed, SampleGenerated
    from sft_tui.headless import ProgressDisplay

    display = ProgressDisplay(Console(file=io.StringIO(), width=40))
    display.emit(SampleGenerated(step=1, prompt="[/]", output="[bold]x[/]", reference="[/oops]"))
    path = "/runs/" + "a-very-long-folder-name/" * 4 + "step-50/model.safetensors"
    display.emit(LogMessage(level="warning", logger="core", message=f"[/] {path}"))
    display.emit(RunFailed(message="[/x]", hint="[/]", last_checkpoint=None))
    out = display.console.file.getvalue()
    assert "model  '[bold]x[/]'" in out and f"warning: [/] {path}\n" in out
    assert "run failed: [/x]\nhint: [/]\n" in out


def test_progress_goes_to_stderr_and_the_result_to_stdout(lm_setup, tmp_path):
    """Issue 10.17: everything went to stderr and stdout was empty; a script capturing stdout now
    gets how the run ended, its metrics with their steps and where the model is."""
    write_config(tmp_path / "run.yaml", **lm_setup)
    out = sft("train", "run.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "evaluation at step 3" in out.stderr and "ETA" in out.stderr  # the progress
    lines = out.stdout.splitlines()
    assert lines[0].startswith("run completed at step 6 in ") and lines[0].endswith(" · run folder runs/cli")
    assert lines[1].startswith("best eval @ step ") and "perplexity" in lines[1]
    assert lines[-1] == "model saved to runs/cli/final"
    assert "evaluation" not in out.stdout and "ETA" not in out.stdout
    assert "evaluation before training (" in out.stderr and "evaluation at step 0" not in out.stderr
    evals = [e for e in read_events(tmp_path / "runs" / "cli" / "events.jsonl") if isinstance(e, EvalResult)]
    before, after = evals[0].metrics, evals[-1].metrics  # after: the last evaluation (final_metrics)
    assert lines[-2] == "before -> after: " + " · ".join(
        f"{name} {format_metric(before[name], name)} -> {format_metric(after[name], name)}"
        for name in ("loss", "perplexity"))
    assert "untrained" not in out.stdout  # the causal LM keeps its pretrained head


def summary(*events) -> tuple[str, str]:
    """What ProgressDisplay prints for `events`: (stderr, stdout)."""
    import io

    from rich.console import Console

    from sft_tui.headless import ProgressDisplay

    err, out = io.StringIO(), io.StringIO()
    display = ProgressDisplay(Console(file=err, width=200), Console(file=out, width=200))
    for event in events:
        display.emit(event)
    return err.getvalue(), out.getvalue()


CLS_STARTED = RunStarted(run_id="cls", run_dir="runs/cls", task="classification", model="m", config_digest="0",
                         total_params=10, trainable_params=10, planned_steps=4, steps_per_epoch=4, train_rows=8,
                         validation_rows=4, device="cpu", precision="fp32", time=0)
BEFORE = {"loss": 0.695, "accuracy": 0.36, "f1": 0.33}
AFTER = {"loss": 0.098, "accuracy": 1.0, "f1": 1.0}


def test_the_summary_shows_every_metric_before_and_after_and_says_the_head_was_untrained():
    err, out = summary(
        CLS_STARTED,
        EvalResult(step=0, epoch=0.0, metrics=BEFORE, is_best=False, seconds=1.0, before_training=True,
                   untrained_head=True, time=0),
        EvalResult(step=4, epoch=1.0, metrics=AFTER, is_best=True, seconds=1.0, time=0),
        RunFinished(step=4, reason="completed", final_metrics=AFTER, best_metrics=AFTER, best_step=4, output_path=None,
                    last_checkpoint=None, elapsed_s=3.0, before_metrics=BEFORE, before_untrained_head=True, time=0))
    assert "evaluation before training (1.0s; the new classification head is untrained)" in err
    assert out.splitlines()[1:] == [
        "best eval @ step 4: loss 0.0980 · accuracy 1.0000 · f1 1.0000",
        "before -> after: loss 0.6950 -> 0.0980 · accuracy 0.3600 -> 1.0000 · f1 0.3300 -> 1.0000",
        "before: the new classification head is untrained",
    ]


def test_the_summary_says_when_training_left_the_eval_loss_higher_than_it_started():
    """A continued run, or one with too high a learning rate, can save a model worse than the one it
    started from, which before -> after showed as two numbers only. An untrained head's start is no
    model to keep, so it gets no such line."""
    worse = {"loss": 0.9, "accuracy": 0.5, "f1": 0.5}
    finished = RunFinished(step=4, reason="completed", final_metrics=worse, best_metrics=worse, best_step=4,
                           output_path=None, last_checkpoint=None, elapsed_s=3.0, before_metrics=BEFORE, time=0)
    evaluated = EvalResult(step=4, epoch=1.0, metrics=worse, is_best=True, seconds=1.0, time=0)
    _, out = summary(CLS_STARTED, evaluated, finished)
    assert out.splitlines()[-1] == ("worse: eval loss above the model's before training · a lower optim.lr or fewer "
                                    "epochs may keep what it knew")
    _, out = summary(CLS_STARTED, evaluated, dataclasses.replace(finished, before_untrained_head=True))
    assert "worse" not in out and out.splitlines()[-1] == "before: the new classification head is untrained"


def test_the_summary_without_an_evaluation_before_training_is_unchanged_and_one_without_after_says_so():
    """eval.before_training false (or an events.jsonl from before it existed): no before line. A run
    stopped before its first evaluation after step 0 has only the before."""
    finished = RunFinished(step=4, reason="completed", final_metrics=AFTER, best_metrics=AFTER, best_step=4,
                           output_path=None, last_checkpoint=None, elapsed_s=3.0, time=0)
    _, out = summary(CLS_STARTED, EvalResult(step=4, epoch=1.0, metrics=AFTER, is_best=True, seconds=1.0, time=0),
                     finished)
    assert "before" not in out and len(out.splitlines()) == 2
    _, out = summary(CLS_STARTED, dataclasses.replace(finished, step=2, reason="stopped", final_metrics={},
                                                      best_metrics={}, best_step=None, before_metrics=BEFORE))
    assert out.splitlines()[1:] == ["before training: loss 0.6950 · accuracy 0.3600 · f1 0.3300"]


def test_a_stopped_runs_resume_command_goes_to_stdout(lm_setup, tmp_path):
    import signal
    import time

    lm_setup["schedule"] = {"max_steps": 100_000}
    lm_setup["eval"] = {"every_steps": 100_000, "num_samples": 0}
    write_config(tmp_path / "run.yaml", **lm_setup)
    proc = subprocess.Popen([sys.executable, "-m", "sft_tui.cli", "train", "run.yaml"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})
    events = tmp_path / "runs" / "cli" / "events.jsonl"
    deadline = time.monotonic() + 300
    while not (events.exists() and '"type": "step"' in events.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never reported a step"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr  # EXIT_STOPPED
    assert "SIGTERM: stopping after this step" in stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("run stopped at step ")
    assert lines[-1] == f"resume with `sft-tui train --resume {tmp_path / 'runs' / 'cli'}`"  # works from any folder


def test_a_start_on_a_full_disk_is_refused_with_the_reason_not_a_traceback(lm_setup, tmp_path, monkeypatch, capsys):
    """The run folder's lock and record are written before the run can report anything: on a full
    disk that was a raw traceback from `sft-tui train`."""
    import errno

    import core.runs
    from sft_tui.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "run.yaml", **lm_setup)
    lock = tmp_path / "runs" / "cli" / "engine.json"

    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(lock))

    monkeypatch.setattr(core.runs, "write_record", full)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {lock}: no space left on the device" in err
    assert f"hint: free space under {lock.parent}, then try again" in err and "Traceback" not in err


def test_a_resumed_then_paused_run_shows_one_bar_that_says_paused():
    """`attach --plain` on a run resumed and then paused drew the stopped start's bar beside the
    resumed one, and an ETA that ticked on while the run waited for `p`."""
    import io

    from rich.console import Console

    from core.events import Paused, StepMetrics
    from sft_tui.headless import ProgressDisplay

    def step(n):
        return StepMetrics(step=n, epoch=n / 4, loss=1.0, grad_norm=1.0, lr=1e-3, tokens_per_s=100, samples_per_s=10,
                           tokens_seen=100 * n, elapsed_s=n, eta_s=4 - n, time=0)

    resumed = dataclasses.replace(CLS_STARTED, resumed_from_step=2)
    display = ProgressDisplay(Console(file=io.StringIO(), width=200), Console(file=io.StringIO(), width=200))
    stopped = RunFinished(step=2, reason="stopped", final_metrics={}, best_metrics={}, best_step=0, output_path=None,
                          last_checkpoint=None, elapsed_s=2, time=0)
    for event in (CLS_STARTED, step(1), step(2), stopped, resumed, step(3), Paused(step=3, time=0)):
        display.emit(event)
    tasks = display.progress.tasks
    assert len(tasks) == 1 and tasks[0].completed == 3 and tasks[0].fields["eta"] == "paused"


def test_a_run_stopped_before_training_says_to_start_it_again_and_that_works(lm_setup, tmp_path, monkeypatch, capsys):
    """It has no checkpoint: "resume with" named a resume that would be refused."""
    import core.control
    from sft_tui.cli import main

    class StoppedAtOnce(core.control.Control):
        def __init__(self):
            super().__init__()
            self.stop()

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "run.yaml", **lm_setup)
    with monkeypatch.context() as patched:
        patched.setattr(core.control, "Control", StoppedAtOnce)
        assert main(["train", str(path)]) == 3
    out = " ".join(capsys.readouterr().out.split())
    again = tmp_path / "runs" / "cli" / "config.yaml"
    assert f"stopped before training; start it again with `sft-tui train {again}`" in out and "resume with" not in out
    assert main(["train", str(again)]) == 0
    assert "run completed at step 6" in capsys.readouterr().out
