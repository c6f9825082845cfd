"""The train screen (step 5) driven through the real app: tiny runs to their results and "try it",
pause/resume/stop from the keys, resuming a stopped run with its whole history, failures in a
dialog, a UI that answers while the engine trains (its snapshots are in tests/test_snapshots.py).

Most runs here train in a thread of the app (`in_process=True`): the same screen and the same
events, without an engine process to start for each test. tests/test_app_detached.py drives runs
in engine processes of their own, the app's default; so does the failed start below."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Button, ContentSwitcher, Input, RichLog, Static

from core.config import example_config, load_config, parse_config, save_config
from core.events import (CheckpointSaved, EvalResult, RunFailed, RunFinished, RunStarted, SampleGenerated,
                         StepMetrics, read_events)
from core.manifest import latest_checkpoint, write_manifest
from sft_tui.app import create_app
from sft_tui.format.numbers import format_metric
from sft_tui.messages import EngineEvent
from sft_tui.screens.dialogs import ErrorDialog, PathDialog, QuitDialog
from sft_tui.screens import train_events
from sft_tui.screens.help import HelpScreen
from sft_tui.screens.train import TrainScreen
from sft_tui.widgets.freeze.rules import RuleTable
from sft_tui.widgets.train.charts import TrainCharts
from sft_tui.widgets.train.evals import BEFORE, BEST, EvalTable
from sft_tui.widgets.train.progress import RunProgress
from sft_tui.widgets.train.results import ResultsPanel
from sft_tui.widgets.train.samples import SamplesPanel
from sft_tui.widgets.train.stats import RunStats
from helpers import WORDS, StopAt, settle, tiny_lm_config, visible_text, write_jsonl


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """The same screen on every machine: the GPU pane always says there is none."""
    monkeypatch.setattr(RunStats, "gpu_probe", staticmethod(lambda: []))


def lm_config_file(tmp_path: Path, model_dir: Path, **sections) -> Path:
    """A causal-LM config on a tiny model and prompt/completion rows; `sections` override fields."""
    data = write_jsonl(tmp_path / "sft.jsonl",
                       [{"prompt": f"Say {w} {i % 3}:", "completion": f" {w} {w}"} for i, w in enumerate(WORDS * 4)])
    shorter = {"schedule": {"max_steps": 20}, "eval": {"every_steps": 5, "num_samples": 1, "max_new_tokens": 4},
               "checkpoint": {"keep_last": 1}}
    for name, fields in sections.items():
        shorter.setdefault(name, {}).update(fields)
    config = tiny_lm_config(model_dir, data, tmp_path / "runs", **shorter)
    path = tmp_path / "config.yaml"
    save_config(parse_config(config), path)
    return path


def cls_config_file(tmp_path: Path, model_dir: Path) -> Path:
    data = write_jsonl(tmp_path / "cls.jsonl", [
        {"text": f"{w} is {'good great fine' if i % 2 else 'bad awful poor'}", "label": "pos" if i % 2 else "neg"}
        for i, w in enumerate(WORDS * 4)])
    path = tmp_path / "config.yaml"
    save_config(parse_config({
        "task": "classification", "seed": 3, "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 16, "val_ratio": 0.2},
        "optim": {"lr": 1e-3, "batch_size": 8}, "schedule": {"max_steps": 10},
        "eval": {"every_steps": 5, "metric": "accuracy"},
        "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "cls"},
    }), path)
    return path


def text_of(widget: Static) -> str:
    return str(widget.render())


async def wait_until(pilot, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


@contextlib.asynccontextmanager
async def live_run_test(app):
    """run_test for long runs: a failing assertion must not leave a 100,000-step run training in a
    thread that the test process then waits for at exit."""
    async with app.run_test(size=(120, 40)) as pilot:
        try:
            yield pilot
        finally:
            if app.followed is not None and app.run_state.live:
                app.followed.send("stop")


async def finish(pilot) -> None:
    """Wait for every worker (training, try-it, loaders) and for the messages they queued."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def seconds_to_handle(pilot, key: str, char: str | None, handled) -> float:
    """Time from a key press to its effect, polled every 2 ms. (pilot.press itself waits until the
    process is idle, up to a second per wait, which it never is while a run trains here.)"""
    started = time.perf_counter()
    pilot.app.post_message(events.Key(key, char))
    while not handled():
        if time.perf_counter() - started > 5:
            raise AssertionError(f"key {key} not handled within 5 s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started


def on_screen(app) -> str:
    return "help" if isinstance(app.screen, HelpScreen) else app.current_mode


async def start_run(pilot) -> TrainScreen:
    await pilot.press("escape", "5")  # out of the model's path box, to step 5
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    await pilot.press("enter")
    return screen


async def try_it(pilot, screen: TrainScreen, text: str) -> str:
    await pilot.press("t")
    box = screen.query_one("#try-input", Input)
    assert box.has_focus
    box.value = text
    await pilot.press("enter")
    await finish(pilot)
    return text_of(screen.query_one("#try-answer", Static))


async def test_causal_lm_run_shows_progress_evals_samples_results_and_try_it(tiny_model_factory, tmp_path):
    app = create_app(lm_config_file(tmp_path, tiny_model_factory("llama")), in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_run(pilot)
        await finish(pilot)

        assert app.run_state == "finished" and not app.run_state.live
        bar = screen.query_one(RunProgress)
        assert bar.total == 20 and bar.progress == 20
        assert bar.label.startswith("step 20/20 · completed in ")

        events = read_events(tmp_path / "runs" / "lm" / "events.jsonl")
        evals = [e for e in events if isinstance(e, EvalResult)]
        rows = screen.query_one(EvalTable).rows_as_text()
        assert [int(r[0]) for r in rows] == [e.step for e in evals] == [0, 5, 10, 15, 20]
        assert [float(r[2]) for r in rows] == pytest.approx([e.metrics["loss"] for e in evals], abs=1e-4)
        assert evals[0].before_training and not evals[0].untrained_head  # the LM keeps its pretrained head
        best = max(i for i, e in enumerate(evals) if e.is_best)
        assert [r[-1] for r in rows] == [BEFORE] + [BEST if i == best else "" for i in range(1, len(rows))]

        sample = [e for e in events if isinstance(e, SampleGenerated)][-1]
        samples = screen.query_one(SamplesPanel)
        assert samples.display and sample.prompt in samples.text and sample.reference in samples.text

        finished = [e for e in events if isinstance(e, RunFinished)][0]
        results = text_of(screen.query_one("#results-text", Static))
        assert finished.output_path and finished.output_path in results
        assert f'pipeline("text-generation", model="{finished.output_path}")' in results
        assert screen.query_one(ResultsPanel).display
        before, after = evals[0].metrics, evals[-1].metrics  # after: the last evaluation, the run's final metrics
        assert finished.before_metrics == before and finished.final_metrics == after
        assert "before -> after: " + "\n                 ".join(  # one metric a line, aligned under the first
            f"{name} {format_metric(before[name], name)} -> {format_metric(after[name], name)}"
            for name in ("loss", "perplexity")
        ) in results
        assert "untrained" not in results

        log = "\n".join(line.text for line in screen.query_one("#log", RichLog).lines)
        assert "checkpoint step-5 saved" in log and "run completed at step 20" in log
        assert "evaluation before training: " in log and "evaluation at step 0" not in log

        answer = await try_it(pilot, screen, "Say red 1:")
        assert answer and not answer.startswith(("could not", "running"))


async def test_classification_run_and_try_it_labels_a_text_visible_at_80x24(tiny_model_factory, tmp_path):
    app = create_app(cls_config_file(tmp_path, tiny_model_factory("bert")), in_process=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await start_run(pilot)
        await finish(pilot)
        assert app.run_state == "finished"
        rows = screen.query_one(EvalTable).rows_as_text()
        assert [r[0] for r in rows] == ["0", "5", "10"] and rows[0][-1] == BEFORE
        assert screen.query_one(EvalTable).metric_names == ["loss", "accuracy", "f1"]
        assert not screen.query_one(SamplesPanel).display  # no generations for classification
        output = str(tmp_path / "runs" / "cls" / "final")
        results = text_of(screen.query_one("#results-text", Static))
        assert f'AutoModelForSequenceClassification.from_pretrained("{output}")' in results
        # the bare encoder gets a new head: "before" scores random weights, and the panel says so
        assert "before: the new classification head is untrained" in results
        assert all(f"{name} {rows[0][i]} -> {rows[2][i]}" in results
                   for i, name in enumerate(["loss", "accuracy", "f1"], start=2))
        answer = await try_it(pilot, screen, "cat is good great fine")
        assert answer.split(" ")[0] in ("neg", "pos") and "score" in answer
        await pilot.pause(0.1)
        assert answer in visible_text(app)  # the results panel scrolls to it in a short terminal


async def test_keys_pause_resume_save_and_stop_a_live_run(tiny_model_factory, tmp_path):
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), schedule={"max_steps": 100_000},
                            eval={"every_steps": 100_000, "num_samples": 0}, checkpoint={"every_steps": 100_000})
    app = create_app(config, in_process=True)
    async with live_run_test(app) as pilot:
        screen = await start_run(pilot)
        bar = screen.query_one(RunProgress)
        await wait_until(pilot, lambda: bar.progress >= 2)
        assert app.run_state == "running"

        await pilot.press("p")
        assert app.followed.control.paused
        await wait_until(pilot, lambda: app.run_state == "paused")  # once the engine has paused
        log = screen.query_one("#log", RichLog)
        assert any("paused at step" in line.text for line in log.lines)
        paused_at = bar.progress
        assert bar.label == f"step {paused_at}/100000 · paused"  # where it paused, not the last report drawn
        await pilot.pause(0.5)
        assert bar.progress == paused_at  # nothing trains while paused
        await pilot.press("p")
        assert not app.followed.control.paused
        await wait_until(pilot, lambda: app.run_state == "running" and bar.progress > paused_at)
        await pilot.press("p", "p")  # two quick presses, before the engine answers: pause, then resume
        assert not app.followed.control.paused
        await wait_until(pilot, lambda: app.run_state == "running" and screen.pause_asked is None)

        await pilot.press("c")  # the only checkpoint before the stop: none is due for 100,000 steps
        await wait_until(pilot, lambda: any("checkpoint step-" in line.text for line in log.lines))
        await pilot.press("e")  # the table holds the evaluation before training, then this one
        await wait_until(pilot, lambda: screen.query_one(EvalTable).row_count == 2)

        await pilot.press("s")
        assert app.followed.control.stop_requested and app.run_state in ("stopping", "stopped")
        await finish(pilot)
        events = read_events(tmp_path / "runs" / "lm" / "events.jsonl")
        finished = [e for e in events if isinstance(e, RunFinished)][0]
        assert finished.reason == "stopped" and finished.output_path is None
        assert latest_checkpoint(tmp_path / "runs" / "lm" / "checkpoints") is not None
        assert app.run_state == "stopped" and screen.resumable == str(tmp_path / "runs" / "lm")
        assert "no final model was saved" in text_of(screen.query_one("#results-text", Static))


async def test_resume_continues_the_last_stopped_run_with_its_whole_history(tiny_model_factory, tmp_path):
    """Stopped at step 7, after the evaluation of step 5: the resumed run shows that evaluation too
    (issue 9: it used to disappear), and the curves from the first step on."""
    from core.engine import train

    config_path = lm_config_file(tmp_path, tiny_model_factory("llama"), eval={"every_steps": 5, "num_samples": 0})
    train(load_config(config_path), [], StopAt(7))
    app = create_app(config_path, in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5", "R")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PathDialog)
        assert dialog.query_one(Input).value == str(tmp_path / "runs" / "lm")
        await pilot.press("enter")
        await finish(pilot)
        screen = app.screen
        assert app.run_state == "finished" and screen.query_one(RunProgress).progress == 20
        events = read_events(tmp_path / "runs" / "lm" / "events.jsonl")
        assert [e.resumed_from_step for e in events if isinstance(e, RunStarted)] == [0, 7]
        assert [r[0] for r in screen.query_one(EvalTable).rows_as_text()] == ["0", "5", "10", "15", "20"]
        charts = screen.query_one("#charts")
        assert [s for s, _ in charts.train_loss] == [e.step for e in events if isinstance(e, StepMetrics)]
        log = "\n".join(line.text for line in screen.query_one("#log", RichLog).lines)
        assert "run stopped at step 7" in log and "resumed at step 7" in log and "run completed at step 20" in log


async def test_a_resumed_classifier_keeps_its_evaluations_and_announces_its_new_head_once(tiny_model_factory,
                                                                                          tmp_path):
    """The resume loads the base model with a new head, then its checkpoint over it: the log says
    "new task head initialised" for the first start only."""
    from core.engine import train

    config_path = cls_config_file(tmp_path, tiny_model_factory("bert"))
    train(load_config(config_path), [], StopAt(5))
    app = create_app(config_path, in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5", "R")
        await pilot.pause()
        await pilot.press("enter")
        await finish(pilot)
        screen = app.screen
        assert app.run_state == "finished"
        rows = screen.query_one(EvalTable).rows_as_text()
        assert [r[0] for r in rows] == ["0", "5", "10"] and rows[0][-1] == BEFORE  # the first start's, kept
        # the resumed run's end still says what "before" was: the step-0 evaluation is in the history
        assert "before: the new classification head is untrained" in text_of(screen.query_one("#results-text", Static))
        log = "".join(line.text for line in screen.query_one("#log", RichLog).lines).replace(" ", "")
        assert log.count("newtaskheadinitialised") == 1 and "resumedatstep5" in log


async def test_resume_dialog_refuses_a_folder_that_is_not_a_run(tmp_path):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5", "R")
        await pilot.pause()
        dialog = app.screen
        dialog.query_one(Input).value = str(tmp_path)
        await pilot.press("enter")
        assert app.screen is dialog and "is not a run folder" in dialog.error
        await pilot.press("escape")
        assert isinstance(app.screen, TrainScreen) and app.run_state == "idle"


async def test_resume_offers_the_newest_resumable_run_and_refuses_the_others_in_the_dialog(tmp_path):
    """R's default is core.runs.latest_resumable (complete checkpoints only, runs it could resume),
    and the dialog asks core.runs.resume_problem before anything starts."""
    runs = tmp_path / "runs"

    def run_folder(name: str, *events, checkpoint: bool = True) -> Path:
        root = runs / name
        (root / "checkpoints").mkdir(parents=True)
        save_config(example_config("causal-lm"), root / "config.yaml")
        (root / "events.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
        if checkpoint:
            step = root / "checkpoints" / "step-40"
            step.mkdir()
            (step / "model.safetensors").write_bytes(b"weights")
            write_manifest(step, 40)
        return root

    from core.runs import config_digest

    # started by the config the folders hold: an edited config is refused (core.runs.resume_problem)
    started = dataclasses.replace(FINISHED_RUN[0], config_digest=config_digest(example_config("causal-lm")))
    completed = FINISHED_RUN[-1]
    stopped = run_folder("stopped", started, dataclasses.replace(completed, reason="stopped", output_path=None))
    os.utime(stopped / "checkpoints" / "step-40", (1, 1))  # the oldest checkpoint, yet the one to offer
    done = run_folder("done", started, completed)
    cut_short = run_folder("cut-short", started, checkpoint=False)
    (cut_short / "checkpoints" / "step-20").mkdir()  # a checkpoint whose write never finished
    config = example_config("classification")
    config.output.runs_dir = str(runs)
    save_config(config, tmp_path / "config.yaml")
    app = create_app(tmp_path / "config.yaml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5", "R")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PathDialog) and dialog.query_one(Input).value == str(stopped)
        for folder, words in ((done, "is complete"), (cut_short, "has no complete checkpoint")):
            dialog.query_one(Input).value = str(folder)
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is dialog and words in dialog.error, dialog.error
        await pilot.press("escape")
        assert isinstance(app.screen, TrainScreen) and app.run_state == "idle" and app.followed is None


async def test_a_vanished_data_file_fails_into_a_dialog_and_the_app_keeps_running(tiny_model_factory, tmp_path):
    config = lm_config_file(tmp_path, tiny_model_factory("llama"))
    app = create_app(config)  # the engine of its own process finds it gone, and says so in events.jsonl
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)  # the app has read the data (it loads after the model); then the file goes
        (tmp_path / "sft.jsonl").unlink()
        screen = await start_run(pilot)
        await finish(pilot)
        dialog = app.screen
        assert isinstance(dialog, ErrorDialog) and "sft.jsonl" in dialog.message
        assert dialog.title_text == "Training failed" and app.run_state == "failed"
        assert screen.query_one(RunProgress).label == "failed before its first step"  # not "starting: loading…"
        await pilot.press("escape")
        assert app.screen is screen and app.is_running
        assert len(app.screen_stack) == 1  # one dialog: the RunFailed event and the worker error agree
        await pilot.press("v")  # the setup view, where Enter starts the next run
        assert screen.check_action("start", ()) is True


async def test_a_data_file_missing_at_start_is_a_problem_on_step_5_before_step_2_is_visited(tiny_model_factory,
                                                                                              tmp_path):
    """The data loads after the model, so a config whose data file is gone says so on the Train
    step without a visit to step 2, and Start stays off."""
    config = lm_config_file(tmp_path, tiny_model_factory("llama"))
    (tmp_path / "sft.jsonl").unlink()
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.data_state == "failed"
        await pilot.press("escape", "5")
        await pilot.pause()
        assert "• data: did not load" in squeezed(visible_text(app)) and "sft.jsonl" in visible_text(app)
        assert app.screen.query_one("#start", Button).disabled


async def test_an_engine_crash_outside_the_engine_handler_opens_the_dialog_naming_its_traceback(monkeypatch,
                                                                                                tmp_path):
    def crash(config, sink, control, resume_dir=None):
        raise RuntimeError("the engine fell over")

    monkeypatch.setattr("sft_tui.run_following.run_training", crash)
    monkeypatch.chdir(tmp_path)  # the demo's output.runs_dir is ./runs
    app = create_app(in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await start_run(pilot)
        await finish(pilot)
        dialog = app.screen
        assert isinstance(dialog, ErrorDialog) and "RuntimeError: the engine fell over" in dialog.message
        assert app.run_state == "failed"
        log = Path("runs") / "sft-tui-error.log"  # no run folder yet: the run never started
        assert f"traceback: {log}" in dialog.detail and "terminal" not in dialog.hint + dialog.detail
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "RuntimeError: the engine fell over" in text
        assert "in crash" in text  # the frame that raised


async def test_an_unexpected_engine_failure_names_the_run_folders_error_log(monkeypatch, tiny_model_factory,
                                                                           tmp_path):
    def evaluate(*args, **kwargs):
        raise RuntimeError("evaluation fell over")

    monkeypatch.setattr("core.evaluate.evaluate", evaluate)
    app = create_app(lm_config_file(tmp_path, tiny_model_factory("llama")), in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await start_run(pilot)
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))  # finish() re-raises the failure
        await pilot.pause(0.2)
        dialog = app.screen
        assert "RuntimeError: evaluation fell over" in dialog.message
        log = tmp_path / "runs" / "lm" / "error.log"
        assert str(log) in dialog.hint + dialog.detail and "terminal" not in dialog.hint + dialog.detail
        assert "error.log" in visible_text(app)
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "RuntimeError: evaluation fell over" in text
        await pilot.press("escape")
        assert len(app.screen_stack) == 1  # one dialog: the RunFailed event and the worker error agree
        logged = "".join(line.text for line in app.screen.query_one("#log", RichLog).lines)
        assert f"evaluation fell over (traceback in {log})".replace(" ", "") in logged.replace(" ", "")  # wrapped


async def test_the_ui_answers_keys_while_training_and_quit_stops_and_saves_an_in_process_run(tiny_model_factory,
                                                                                           tmp_path):
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), schedule={"max_steps": 100_000},
                            eval={"every_steps": 100_000, "num_samples": 0})
    app = create_app(config, in_process=True)
    async with live_run_test(app) as pilot:
        screen = await start_run(pilot)
        bar = screen.query_one(RunProgress)
        await wait_until(pilot, lambda: bar.progress >= 2)

        help_and_back = (("question_mark", "?", "help"), ("escape", None, "train"))
        keys = (("4", "4", "hyper"), ("5", "5", "train")) + help_and_back * 4
        for key, char, shown in keys:  # each within 5 s: the training thread never starves the UI
            await seconds_to_handle(pilot, key, char, lambda: on_screen(app) == shown)
            await asyncio.sleep(0.2)
        # how fast (5-50 ms here) is a benchmark's question, not a test's: bench/ui_latency.py
        await pilot.press("4")
        steps = bar.progress
        await wait_until(pilot, lambda: bar.progress > steps)  # the screen follows the run from the background
        await pilot.press("5")

        await pilot.press("q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, QuitDialog) and app.is_running and not dialog.query("#detach")
        assert "cannot outlive it" in text_of(dialog.query_one(".dialog-text", Static))  # a thread of the app
        await pilot.press("escape")
        assert app.screen is screen and app.run_state == "running"
        await pilot.press("ctrl+q")  # the same question
        await pilot.pause()
        assert isinstance(app.screen, QuitDialog)
        await pilot.click("#stop")
        deadline = time.monotonic() + 120
        while app.is_running and time.monotonic() < deadline:  # it quits once the checkpoint is saved
            await asyncio.sleep(0.05)
    assert not app.is_running
    finished = [e for e in read_events(tmp_path / "runs" / "lm" / "events.jsonl") if isinstance(e, RunFinished)]
    assert [e.reason for e in finished] == ["stopped"] and finished[0].last_checkpoint


async def test_start_is_disabled_while_the_draft_has_problems():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5")
        await pilot.pause()
        screen = app.screen
        app.session.invalid["optim.lr"] = "must be > 0"
        app.changed()
        await pilot.pause()
        assert screen.query_one("#start", Button).disabled
        assert "• optim.lr: must be > 0" in squeezed(visible_text(app))
        await pilot.press("enter")
        assert app.run_state == "idle"
        del app.session.invalid["optim.lr"]
        app.changed()
        await pilot.pause()
        assert not screen.query_one("#start", Button).disabled


# ---- problems the engine would fail on at once: listed on step 5, Start refused ------------------
BROKEN_JSONL = '{"prompt": "Say red:", "completion": " red red"}\n{not json\n'


def squeezed(text: str) -> str:
    """Screen text with every run of blanks and line breaks as one space: wrapped lines read on."""
    return " ".join(text.split())


async def press_enter_on_setup(pilot) -> None:
    """Enter on the setup view (the view itself has the focus): refused, with a note saying why."""
    app = pilot.app
    assert app.screen.query_one(ContentSwitcher).current == "setup"
    await pilot.press("enter")
    await pilot.pause(0.2)
    assert app.run_state == "idle" and app.followed is None
    assert "Cannot start yet" in visible_text(app)


async def test_data_that_failed_to_load_is_listed_and_enter_starts_nothing_until_it_loads(tiny_model_factory,
                                                                                         tmp_path):
    config = lm_config_file(tmp_path, tiny_model_factory("llama"))
    data = tmp_path / "sft.jsonl"
    good = data.read_text()
    data.write_text(BROKEN_JSONL)
    app = create_app(config)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await pilot.press("escape", "2")
        await settle(pilot)
        assert app.data_state == "failed"
        await pilot.press("5")
        await pilot.pause()
        screen = app.screen
        shown = squeezed(visible_text(app))
        assert "1 problem(s) keep Start disabled: • data: did not load: data.train:" in shown
        assert "line 2: malformed JSON" in shown and "ready to start" not in shown
        assert "sft-tui 1 problem(s): data ·" in shown  # the draft bar
        assert screen.query_one("#start", Button).disabled  # Enter still answers: it says what to fix
        await press_enter_on_setup(pilot)
        assert "fix first: data" in squeezed(visible_text(app))
        assert not (tmp_path / "runs").exists()  # nothing started, not even a run folder

        data.write_text(good)
        await pilot.press("2", "ctrl+l")  # load the fixed file
        await settle(pilot)
        assert app.data_state == "ready" and not app.session.problems()
        await pilot.press("5")
        await pilot.pause()
        assert "no problems: ready to start" in visible_text(app)
        assert not screen.query_one("#start", Button).disabled
        await pilot.press("enter")
        await finish(pilot)
        assert app.run_state == "finished"


async def test_a_bad_freeze_regex_from_a_yaml_config_keeps_start_off_until_the_rule_is_deleted(tiny_model_factory,
                                                                                               tmp_path):
    bad_rule = {"match": "re:[", "train": False}
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), freeze={"rules": [bad_rule]})
    app = create_app(config)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await pilot.press("escape", "5")  # before the model has loaded: the regex alone is the problem
        await pilot.pause()
        screen = app.screen
        shown = squeezed(visible_text(app))
        assert "• freeze.rules.0.match: 're:[' is not a valid regular expression" in shown
        assert "1 problem(s): freeze.rules.0.match ·" in shown
        assert screen.query_one("#start", Button).disabled
        await press_enter_on_setup(pilot)

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RuleTable)
        table.focus()
        table.move_cursor(row=1)  # the user's rule, after the preset's one
        await pilot.press("x")
        await pilot.press("5")
        await pilot.pause()
        assert app.session.config.freeze.rules == []
        assert "no problems: ready to start" in visible_text(app)
        assert "sft-tui ready ·" in visible_text(app)
        await pilot.press("enter")
        await finish(pilot)
        assert app.run_state == "finished"


async def test_every_problem_is_visible_at_80x24(tiny_model_factory, tmp_path):
    bad_rule = {"match": "re:(", "train": False}
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), freeze={"rules": [bad_rule]})
    (tmp_path / "sft.jsonl").write_text(BROKEN_JSONL)
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape", "2")
        await settle(pilot)
        await pilot.press("5")
        await pilot.pause()
        shown = squeezed(visible_text(app))
        assert shown.startswith("2 problem(s): data, freeze.rule")  # the status line, shortened to fit
        assert "2 problem(s) keep Start disabled: • data: did not load: data.train:" in shown
        assert "• freeze.rules.0.match: 're:(' is not a valid regular expression" in shown
        assert "fix them on their step" in shown


async def test_a_map_that_trains_nothing_and_fp16_without_a_gpu_are_problems(tiny_model_factory, tmp_path):
    """Both fail the engine at once: apply_freeze_map refuses an empty map, and fp16 needs CUDA."""
    path = lm_config_file(tmp_path, tiny_model_factory("llama"), freeze={"rules": [{"match": "*", "train": False}]})
    config = load_config(path)
    config.precision = "fp16"
    save_config(config, path)
    app = create_app(path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)  # the warm-up has asked torch for a GPU, the model screen loaded the model
        await pilot.press("escape", "5")
        await pilot.pause()
        shown = squeezed(visible_text(app))
        assert "• freeze: the map leaves no trainable parameters" in shown
        assert "• precision: " in shown and "fp16 needs a CUDA GPU" in shown and "bf16 or fp32" in shown
        assert app.session.cuda is False
        assert app.screen.query_one("#start").disabled
        await pilot.press("enter")  # Enter answers with what to fix instead of starting
        await pilot.pause()
        assert app.followed is None and any("fix first: freeze, precision" in n.message
                                            for n in app._notifications)


async def test_a_loader_bug_names_its_traceback_and_the_model_is_a_problem(monkeypatch, tiny_model_factory, tmp_path):
    def load_model_info(config, labels=None):
        raise RuntimeError("the loader fell over")

    monkeypatch.setattr("sft_tui.loading.load_model_info", load_model_info)
    app = create_app(lm_config_file(tmp_path, tiny_model_factory("llama")))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))  # settle() re-raises the failure
        await pilot.pause(0.2)
        dialog = app.screen
        assert "RuntimeError: the loader fell over" in dialog.message
        log = tmp_path / "runs" / "sft-tui-error.log"
        assert f"traceback: {log}" in dialog.detail and "RuntimeError: the loader fell over" in log.read_text()
        await pilot.press("escape", "escape", "5")  # close the dialog, leave the model's path box
        await pilot.pause()
        assert "• model: did not load: RuntimeError: the loader fell over" in squeezed(visible_text(app))


# ---- a finished run from a fixed sequence of events: the handlers, and the snapshots --------------
FINISHED_RUN = [
    RunStarted(run_id="demo-run", run_dir="runs/demo-run", task="causal-lm", model="demo:tiny-lm",
               config_digest="0123456789ab", total_params=1_200_000, trainable_params=1_200_000, planned_steps=40,
               steps_per_epoch=20, train_rows=320, validation_rows=32, device="cpu", precision="fp32", time=0),
    EvalResult(step=0, epoch=0.0, metrics={"loss": 4.6, "perplexity": 99.5}, is_best=False, seconds=1.0, time=0,
               before_training=True),
    *(StepMetrics(step=s, epoch=s / 20, loss=4.0 * 0.96 ** s, lr=3e-3 * min(1.0, s / 4) * (1 - s / 48), grad_norm=1.5,
                  tokens_per_s=1010.0, samples_per_s=31.0, tokens_seen=s * 512, elapsed_s=s * 0.5,
                  eta_s=(40 - s) * 0.5, memory={"rss_bytes": 1_181_116_006}, time=0) for s in range(2, 41, 2)),
    *(EvalResult(step=s, epoch=s / 20, metrics={"loss": loss, "perplexity": ppl}, is_best=best, seconds=1.0, time=0)
      for s, loss, ppl, best in ((10, 2.91, 18.4, True), (20, 2.42, 11.2, True), (30, 2.47, 11.8, False),
                                 (40, 2.35, 10.5, True))),
    SampleGenerated(step=40, prompt="Uppercase: lake small", output="LAKE SMALL", reference="LAKE SMALL", time=0),
    CheckpointSaved(step=40, path="runs/demo-run/checkpoints/step-40", seconds=0.2, time=0),
    RunFinished(step=40, reason="completed", final_metrics={"loss": 2.35, "perplexity": 10.5},
                best_metrics={"loss": 2.35, "perplexity": 10.5}, best_step=40, output_path="runs/demo-run/final",
                last_checkpoint="runs/demo-run/checkpoints/step-40", elapsed_s=42.0, time=0,
                before_metrics={"loss": 4.6, "perplexity": 99.5}),
]


async def open_train(pilot) -> None:
    await settle(pilot)
    await pilot.press("escape", "5")
    await pilot.pause()


async def post_finished_run(pilot) -> None:
    await open_train(pilot)
    screen = pilot.app.screen
    for event in FINISHED_RUN:  # one at a time: queued step metrics would merge (EngineEvent.can_replace)
        screen.post_message(EngineEvent(event))
        await pilot.pause()
    await pilot.pause()


async def test_y_shows_the_snippet_it_sends_to_the_clipboard():
    """Over SSH a terminal may refuse OSC 52: "copied to the clipboard" was said of nothing copied,
    and the snippet's import line was nowhere on screen."""
    from sft_tui.format.train import load_snippet

    app = create_app(task="causal-lm")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await post_finished_run(pilot)
        await pilot.press("y")
        await pilot.pause()
        snippet = load_snippet("causal-lm", "runs/demo-run/final")
        assert app.clipboard == snippet
        assert [(n.title, n.message.endswith(f":\n{snippet}"), n.markup) for n in app._notifications
                if n.title == "Load snippet"] == [("Load snippet", True, False)]


async def test_a_fixed_event_sequence_fills_every_pane():
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await post_finished_run(pilot)
        screen = app.screen
        assert screen.query_one(ContentSwitcher).current == "run" and app.run_state == "finished"
        assert screen.query_one(RunProgress).progress == 40
        assert [r[0] for r in screen.query_one(EvalTable).rows_as_text()] == ["0", "10", "20", "30", "40"]
        assert [r[-1] for r in screen.query_one(EvalTable).rows_as_text()] == [BEFORE, "", "", "", BEST]
        charts = screen.query_one("#charts")
        assert len(charts.train_loss) == 20 and [s for s, _ in charts.eval_loss] == [0, 10, 20, 30, 40]
        assert "LAKE SMALL" in screen.query_one(SamplesPanel).text
        stats = text_of(screen.query_one(RunStats))
        assert "1,010 tok/s" in stats and "RSS 1.1 GB" in stats and "no GPU" in stats
        results = text_of(screen.query_one("#results-text", Static))
        assert "best eval @ step 40: loss 2.3500" in results
        assert "before -> after: loss 4.6000 -> 2.3500\n                 perplexity 99.50 -> 10.50" in results
        assert "untrained" not in results  # a causal LM keeps its pretrained head
        snippet = screen.query_one(ResultsPanel).snippet
        assert snippet == 'from transformers import pipeline\npipeline("text-generation", model="runs/demo-run/final")'


async def test_the_evaluation_before_training_alone_is_drawn_at_step_0():
    """Before the first step report the loss chart holds one point, the evaluation at step 0: its
    axis is labelled 0, not plotext's -1.00 ... 1.00 around it."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_train(pilot)
        for event in FINISHED_RUN[:2]:  # started, the evaluation before training
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        await pilot.pause()
        plot = "\n".join(line.text for line in app.screen.query_one("#loss-plot").render_lines(
            app.screen.query_one("#loss-plot").region.reset_offset))
        assert "•" in plot and "-1.00" not in plot and "-0.50" not in plot
        assert [r[-1] for r in app.screen.query_one(EvalTable).rows_as_text()] == [BEFORE]


async def test_an_edit_after_a_run_returns_the_draft_bar_to_ready_or_its_problems():
    """FINISHED or FAILED stays in the draft bar until the draft changes: an edit is the next run's
    draft, and the bar then says whether that one can start."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await post_finished_run(pilot)
        assert app.run_state == "finished" and "sft-tui FINISHED ·" in visible_text(app)
        app.changed()  # a change of the session that edits nothing (a load finishing) keeps it
        await pilot.pause()
        assert "sft-tui FINISHED ·" in visible_text(app)

        await pilot.press("4")
        await pilot.pause()
        lr = app.screen.fields["optim.lr"].control
        lr.focus()
        await pilot.press("end", "shift+home", *"0.001")
        await pilot.pause()
        assert app.session.config.optim.lr == 0.001
        assert app.run_state == "idle" and "sft-tui ready ·" in visible_text(app)

        await pilot.press("escape", "5")
        await pilot.pause()
        app.screen.post_message(EngineEvent(RunFailed(message="boom", hint="", last_checkpoint=None)))
        await pilot.pause()
        assert app.run_state == "failed"
        await pilot.press("4")
        await pilot.pause()
        lr.focus()
        await pilot.press("end", "shift+home", "0")
        await pilot.pause()
        assert app.run_state == "idle" and "sft-tui 1 problem(s): optim.lr ·" in visible_text(app)


def test_the_shown_throughput_is_smoothed_over_training_time_and_the_eta_says_when_it_guesses():
    """Issue 10.16: reports swung between 3 and 814 samples/s. Steady 100 samples/s reports every
    0.25 s, and two outliers that each cover a few hundredths of a second (a report of one or two
    steps): the shown rate stays near 100, the events keep the raw rates."""
    from sft_tui.format.train import SmoothedRate, format_eta

    def report(at: float, rate: float, eta_estimated: bool = False) -> StepMetrics:
        return StepMetrics(step=int(at * 4), epoch=0.0, loss=1.0, grad_norm=None, lr=1e-3, tokens_per_s=rate * 10,
                           samples_per_s=rate, tokens_seen=0, elapsed_s=at, eta_s=75.0, eta_estimated=eta_estimated)

    smoothed = SmoothedRate()
    shown = []
    for i in range(1, 90):
        smoothed.add(report(i * 0.25, 100.0))
        shown.append(smoothed.samples_per_s)
        if i in (20, 30):
            smoothed.add(report(i * 0.25 + 0.02, {20: 3.0, 30: 814.0}[i]))
            shown.append(smoothed.samples_per_s)
    assert all(95 < r < 110 for r in shown), shown
    assert smoothed.tokens_per_s == pytest.approx(1000.0)  # the outliers left the 10 s span
    assert format_eta(report(1, 1, eta_estimated=True)) == "~1:15" and format_eta(report(1, 1)) == "1:15"


def shown_whole(app, selector: str) -> bool:
    """The pane is on screen from its top border to its bottom one."""
    screen = app.screen
    return screen.query_one(selector).display and screen.query_one("#panes").region.contains_region(
        screen.query_one(selector).region)


def shown_readably(app, selector: str) -> bool:
    """At least six rows of the pane are on screen (all of it when it is smaller)."""
    screen = app.screen
    region = screen.query_one(selector).region
    return screen.query_one(selector).display and region.intersection(
        screen.query_one("#panes").region).height >= min(region.height, 6)


async def test_every_pane_of_a_finished_run_is_reached_with_keys_at_80x24():
    """Issue 10.2: at 80x24 the eval table, the log and the samples were hidden after a run, and
    PageDown and Tab did nothing. The panes now stack and scroll: PageDown pages through them from
    the first to the last, and Tab brings each focusable pane into view."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape")  # out of the model screen's text box
        await post_finished_run(pilot)
        panes = ("#charts", "#evals", "#results", "#samples", "#log")
        seen = {p for p in panes if shown_readably(app, p)}
        assert "#charts" in seen and not {"#samples", "#log"} <= seen  # it does not all fit at once
        for _ in range(6):
            await pilot.press("pagedown")
            seen |= {p for p in panes if shown_readably(app, p)}
        assert seen == set(panes)

        await pilot.press("home")
        for selector in ("#evals", "#samples", "#log"):
            for _ in range(6):  # Tab to the pane, past the try-it box
                if app.focused is app.screen.query_one(selector):
                    break
                await pilot.press("tab")
            assert app.focused is app.screen.query_one(selector) and shown_whole(app, selector), selector
        samples = app.screen.query_one(SamplesPanel)
        assert "LAKE SMALL" in samples.text


async def test_the_log_and_the_samples_are_reached_while_a_run_trains_at_80x24():
    """Issue 10.2: while a run trained at 80x24 there was no log panel at all."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        for event in FINISHED_RUN[:9]:  # started, the evaluation before training, steps 2-14: training
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        assert app.run_state == "running"
        await pilot.press("end")
        assert shown_whole(app, "#log")
        assert "run demo-run started" in " ".join(line.text for line in app.screen.query_one("#log", RichLog).lines)
        await pilot.press("home")
        assert shown_whole(app, "#charts") and shown_whole(app, "#stats") is False
        for _ in range(4):
            await pilot.press("pagedown")
            if shown_whole(app, "#stats"):
                break
        assert shown_whole(app, "#stats") and "step 14: train loss" in text_of(app.screen.query_one(RunStats))


async def test_the_lr_chart_draws_the_planned_schedule_and_marks_the_reported_step(tmp_path):
    """Issue 10.12: the LR chart was drawn from the reports, redrawn every 10 s: at step 9 its axis
    ended at step 4, with another value than the stats line. The whole planned curve (core.plan, the
    hyperparameter preview's schedule) is drawn from the run's config; the title and the marker
    follow the reports."""
    from core.config import RunConfig

    run_dir = tmp_path / "runs" / "demo-run"
    run_dir.mkdir(parents=True)
    config = RunConfig.model_validate({"task": "causal-lm", "model": {"name_or_path": "demo:tiny-lm"},
                                       "data": {"train": "demo:instructions"}, "optim": {"lr": 3e-3},
                                       "schedule": {"max_steps": 40, "warmup_steps": 4, "scheduler": "linear"}})
    save_config(config, run_dir / "config.yaml")
    started = dataclasses.replace(FINISHED_RUN[0], run_dir=str(run_dir))
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        for event in [started, *FINISHED_RUN[1:6]]:  # the evaluation before training, steps 2 to 8
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        await pilot.pause(train_events.STEP_DRAW_S)  # the last reports came within a second: they wait for it
        charts = app.screen.query_one(TrainCharts)
        assert charts.planned_lr[0] == (0, 0.0) and charts.planned_lr[-1][0] == 40  # the whole run, ahead of it
        assert charts.planned_lr[4] == (4, pytest.approx(3e-3))  # the end of the warmup
        reported = FINISHED_RUN[5]
        title = f"learning rate {reported.lr:.2e} @ step {reported.step}"
        assert app.screen.query_one("#lr-plot").border_title == title
        assert f"lr {reported.lr:.2e}" in text_of(app.screen.query_one(RunStats))  # the same value


async def test_step_reports_are_drawn_at_most_once_a_second_and_the_last_one_is_not_lost(monkeypatch):
    """A detached engine writes four reports a second; drawing each cost the app's process about
    5% of a core, which the engine's threads gave up (app / headless 0.974). Reports that come
    within STEP_DRAW_S of a drawing wait for it: the progress bar, the stats and the LR title then
    show the last of them, together."""
    monkeypatch.setattr(train_events, "STEP_DRAW_S", 3.0)  # a slow machine's pauses stay well within it
    started, *rest = FINISHED_RUN
    steps = [e for e in rest if isinstance(e, StepMetrics)]
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        app.screen.post_message(EngineEvent(started))
        app.screen.post_message(EngineEvent(steps[0]))
        await pilot.pause()
        stats, bar = app.screen.query_one(RunStats), app.screen.query_one(RunProgress)
        assert f"step {steps[0].step}: train loss" in text_of(stats) and bar.progress == steps[0].step
        for event in steps[1:3]:
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        assert f"step {steps[0].step}: train loss" in text_of(stats) and bar.progress == steps[0].step
        await pilot.pause(train_events.STEP_DRAW_S)
        last = steps[2]
        assert f"step {last.step}: train loss" in text_of(stats) and bar.progress == last.step
        assert app.screen.query_one("#lr-plot").border_title == f"learning rate {last.lr:.2e} @ step {last.step}"


async def test_samples_show_every_generation_of_the_latest_evaluation_whole_and_earlier_below():
    """Issue 10.11: three samples per evaluation, but the pane showed the last one, cut to 4 lines."""
    long_output = "\n".join(f"line {i} of a long answer" for i in range(8))
    samples = [SampleGenerated(step=step, prompt=f"prompt {step}.{i}", output=f"answer {step}.{i}\n{long_output}",
                               reference=f"ref {step}.{i}", time=0) for step in (10, 20) for i in range(3)]
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        app.screen.apply([FINISHED_RUN[0], *samples])
        await pilot.pause()
        panel = app.screen.query_one(SamplesPanel)
        text = panel.text
        assert all(f"answer 20.{i}" in text and f"ref 20.{i}" in text for i in range(3))
        assert text.count("line 7 of a long answer") == 6  # nothing cut
        assert text.index("step 20") < text.index("step 10")  # the latest first, the earlier below
        assert panel.border_title == "samples @ step 20 · earlier below"
        panel.focus()
        await pilot.press("end")
        assert panel.scroll_y > 0  # the earlier ones are reached by scrolling


STOPPED_RUN = [
    FINISHED_RUN[0], *FINISHED_RUN[2:10],  # started, steps 2-16; no evaluation before training (an older run's log)
    EvalResult(step=10, epoch=0.5, metrics={"loss": 0.41}, is_best=True, seconds=1.0, time=0),
    EvalResult(step=15, epoch=0.75, metrics={"loss": 0.5}, is_best=False, seconds=1.0, time=0),
    RunFinished(step=17, reason="stopped", final_metrics={"loss": 0.5}, best_metrics={"loss": 0.41}, best_step=10,
                output_path=None, last_checkpoint="runs/demo-run/checkpoints/step-17", elapsed_s=9.0, time=0),
]


@pytest.mark.parametrize("reason, shown", [("stopped", "STOPPED"), ("early-stopped", "EARLY-STOPPED")])
async def test_a_stopped_run_is_labelled_stopped_everywhere_and_its_metrics_carry_their_step(reason, shown):
    """Issue 10.13: the status bar said FINISHED while the progress line said stopped, and "final
    loss" was really the step-15 evaluation."""
    events = [*STOPPED_RUN[:-1], dataclasses.replace(STOPPED_RUN[-1], reason=reason)]
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        app.screen.apply(events)
        await pilot.pause()
        assert app.run_state == reason
        screen = squeezed(visible_text(app))
        assert f"{shown} ·" in screen and "FINISHED" not in screen
        assert app.screen.query_one(RunProgress).label.startswith(f"step 17/40 · {reason} in ")
        results = text_of(app.screen.query_one("#results-text", Static))
        assert results.startswith(f"{reason} at step 17") and "best eval @ step 10: loss 0.4100" in results
        assert "last eval @ step 15: loss 0.5000" in results and "final loss" not in results
        assert "before" not in results  # nothing to compare with


async def test_a_halved_micro_batch_is_logged_and_notified_while_the_run_goes_on():
    """Issue 11.3: a step out of device memory is taken again with half the micro-batch; the user
    sees that in the log and a notification, and the run still trains."""
    from core.events import MicroBatchHalved

    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await pilot.press("escape")
        await open_train(pilot)
        for event in [*FINISHED_RUN[:3], MicroBatchHalved(step=5, batch_size=4, grad_accum=2, time=0,
                                                          reason="CUDA out of memory. Tried to allocate 2.00 GiB")]:
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        assert app.run_state == "running"
        log = "".join(line.text for line in app.screen.query_one("#log", RichLog).lines).replace(" ", "")
        assert "step5ranoutofmemory:micro-batchesof4rowsx2accumulatedfromnowon" in log
        assert "Triedtoallocate2.00GiB" in log
        assert [(n.title, n.severity) for n in app._notifications if "micro-batches of 4 rows" in n.message] == \
            [("Out of memory", "warning")]


async def test_the_setup_says_a_run_trains_lora_adapters_and_how_it_computes_at_80x24(tiny_model_factory, tmp_path):
    """The trainable share alone does not say that adapters train: the setup names LoRA with its
    variants, and how the run computes, before Start, each on one row in 80 columns; a rate too low
    for LoRA gets a word there."""
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), lora={"enabled": True, "use_dora": True},
                            compute={"gradient_checkpointing": True})
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape", "5")
        await settle(pilot)
        shown = visible_text(app)
        assert "LoRA        r 16 · alpha 32 · all-linear · DoRA" in shown
        assert "compute     precision auto · devices auto · gradient checkpointing" in shown
        assert "no problems: ready to start" in shown and "low for LoRA" not in shown

        await pilot.press("4")  # a full fine-tuning rate under LoRA gets a word, and does not block Start
        await settle(pilot)
        app.screen.query_one("#field-optim-lr").query_one(Input).value = "5e-5"
        await pilot.press("escape", "5")
        await settle(pilot)
        shown = squeezed(visible_text(app))
        assert "! optim.lr 5e-05 is low for LoRA: adapters usually train at 1e-4 to 5e-4" in shown
        assert "no problems: ready to start" in shown


async def test_the_setup_says_what_the_processes_will_do_other_than_asked(tiny_model_factory, tmp_path, monkeypatch):
    """FSDP on CPU processes trains as DDP, and three processes on two cores slow each other down:
    the dry run says so, and so does step 5 before Start, without blocking it."""
    from core import launch

    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    config = lm_config_file(tmp_path, tiny_model_factory("llama"),
                            compute={"nproc": 3, "devices": "cpu", "distributed": "fsdp"})
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape", "5")
        await settle(pilot)
        shown = squeezed(visible_text(app))
        assert "! compute.distributed fsdp shards across GPUs: processes on the CPU train as ddp" in shown
        assert "! compute.nproc 3: 3 processes share 2 CPU cores and slow each other down; 2 or fewer train faster" in shown
        assert "no problems: ready to start" in shown


async def test_a_loaded_config_loads_its_model_and_data_without_a_visit_to_steps_1_and_2(tiny_model_factory,
                                                                                         tmp_path):
    """After ctrl+o (or l on step 6) the draft's model and data loaded only once steps 1 and 2 were
    visited: step 4 said "load the data (step 2) to see steps" and step 5 "known once the model is loaded"."""
    config = lm_config_file(tmp_path, tiny_model_factory("llama"))
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "4")
        await settle(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one(Input).value = str(config)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.session.data is not None and app.session.model is not None)
        assert app.session.model.task == "causal-lm" and on_screen(app) == "hyper"
        await settle(pilot)
        assert "load the data" not in visible_text(app)


@pytest.mark.parametrize("height", [5, 7, 8, 9, 11, 13, 17, 30])
def test_each_y_label_names_the_value_of_its_own_row(height):
    """plotext's own labels, more than a short plot's rows, were merged onto rows they do not name:
    a review read evaluations of 4.1-4.9 beside the row labelled 3.79."""
    from types import SimpleNamespace

    from sft_tui.widgets.train.charts import row_ticks

    drawn = {}
    plot = SimpleNamespace(size=SimpleNamespace(height=height),
                           plt=SimpleNamespace(yticks=lambda ticks, labels: drawn.update(zip(ticks, labels))))
    row_ticks(plot, [7.0, 2.18, 4.4])
    rows = height - 3
    positions = [(tick - 2.18) / (7.0 - 2.18) * (rows - 1) for tick in drawn]
    assert all(abs(p - round(p)) < 1e-9 for p in positions) and len(set(map(round, positions))) == len(drawn)
    assert min(drawn) == 2.18 and max(drawn) == 7.0 and 2 <= len(drawn) <= 5
    assert len({len(label.split(".")[-1]) for label in drawn.values()}) == 1  # one number of decimals
