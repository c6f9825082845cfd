"""The app's runs in engine processes of their own (issue 9), driven through the real app: a run
outlives the app that started it and a new app re-attaches to its whole history; every control
key round-trips through the run folder; a second app is a viewer; a killed engine shows as
crashed and resumes with its history whole; a resume dialog offers attach for a live run; and a
SIGHUP to the app's terminal does not reach the engine.

Each test starts real engines (several seconds each to import torch), so runs are few and short.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from textual.widgets import Input, RichLog, Static

from core.commands import send_command
from core.config import parse_config
from core.events import LogMessage, RunFinished, RunStarted, SampleGenerated, StepMetrics, read_events
from core.liveness import ProcessRecord, live_record, read_record, write_record
from core.run_info import run_info
from core.runs import RunPaths
from sft_tui.app import create_app
from sft_tui.detach import start_detached
from sft_tui.screens.dialogs import ConfirmDialog, ErrorDialog, PathDialog, QuitDialog
from sft_tui.widgets.train.charts import TrainCharts
from sft_tui.widgets.train.evals import EvalTable
from sft_tui.widgets.train.progress import RunProgress
from sft_tui.widgets.train.samples import SamplesPanel
from sft_tui.widgets.train.stats import RunStats
from test_app_train import lm_config_file, text_of, wait_until

ENGINE_START_S = 120
"""An engine imports torch and transformers first: seconds on a shared 2-core machine."""


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(RunStats, "gpu_probe", staticmethod(lambda: []))


def log_text(screen) -> str:
    return "\n".join(line.text for line in screen.query_one("#log", RichLog).lines)


def engine_pid(run: Path) -> int:
    record = read_record(RunPaths(run).engine)
    assert record is not None and record.pid != os.getpid()
    return record.pid


def stop_engine(run: Path) -> None:
    """A failing test must not leave a 100,000-step engine behind."""
    record = live_record(RunPaths(run).engine)
    if record is not None:
        os.kill(record.pid, signal.SIGKILL)


async def test_a_run_outlives_the_app_and_a_new_app_shows_its_whole_history(tiny_model_factory, tmp_path):
    # 240 steps: on a loaded machine a run of 60 was over before the test saw it train
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), schedule={"max_steps": 240},
                            eval={"every_steps": 40, "num_samples": 1, "max_new_tokens": 4},
                            checkpoint={"every_steps": 80},
                            freeze={"rules": [{"match": "no.such.module", "train": False}]})  # the engine logs it
    run = tmp_path / "runs" / "lm"
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "5", "enter")
        bar = app.screen.query_one(RunProgress)
        await wait_until(pilot, lambda: bar.progress >= 1, ENGINE_START_S)
        assert app.run_state == "running" and app.followed.controls
        assert read_record(RunPaths(run).controller).pid == os.getpid()
        pid = app.followed.process.pid  # engine.json goes when the engine ends: on a loaded machine, already
        assert pid != os.getpid()
        await pilot.press("q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, QuitDialog) and dialog.focused.id == "detach"  # the default: it trains on
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.is_running, 5)
    assert read_record(RunPaths(run).controller) is None  # the app let go of the run
    assert run_info(run).state in ("running", "finished")  # not crashed: the engine did not end with the app

    again = create_app(config, attach=run)
    async with again.run_test(size=(120, 40)) as pilot:
        screen = again.screen
        await wait_until(pilot, lambda: again.run_state == "finished", ENGINE_START_S)
        await pilot.pause()
        events = read_events(run / "events.jsonl")
        assert [e.step for e in events if isinstance(e, RunFinished)] == [240]
        assert screen.query_one(RunProgress).progress == 240
        charts = screen.query_one(TrainCharts)
        steps = [e.step for e in events if isinstance(e, StepMetrics)]
        assert [s for s, _ in charts.train_loss] == steps  # from the first report on: the whole curve
        assert [s for s, _ in charts.eval_loss] == list(range(0, 241, 40))  # from the evaluation before training
        assert [r[0] for r in screen.query_one(EvalTable).rows_as_text()] == [str(s) for s in range(0, 241, 40)]
        sample = [e for e in events if isinstance(e, SampleGenerated)][-1]
        assert sample.output in screen.query_one(SamplesPanel).text
        log = log_text(screen)
        assert "run lm started" in log and "checkpoint step-80 saved" in log and "run completed at step 240" in log
        warning = next(e for e in events if isinstance(e, LogMessage) and "matches no parameter" in e.message)
        assert f"warning {warning.logger}: {warning.message}" in log.replace("\n", "")  # the engine's, from events.jsonl
        assert log.count(" started: ") == 1  # each line once
        await wait_until(pilot, lambda: not psutil.pid_exists(pid), 30)  # reaped by the app that started it


def long_run_config(tmp_path: Path, model_dir: Path) -> Path:
    """A run that would train for hours: the test decides when it pauses and stops."""
    return lm_config_file(tmp_path, model_dir, schedule={"max_steps": 100_000},
                          eval={"every_steps": 100_000, "num_samples": 0}, checkpoint={"every_steps": 100_000})


async def test_every_control_key_round_trips_and_a_second_app_only_views(tiny_model_factory, tmp_path):
    config = long_run_config(tmp_path, tiny_model_factory("llama"))
    run = tmp_path / "runs" / "lm"
    app = create_app(config)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("escape", "5", "enter")
            screen = app.screen
            bar = screen.query_one(RunProgress)
            await wait_until(pilot, lambda: bar.progress >= 2, ENGINE_START_S)
            await pilot.press("c")  # the only checkpoint: none is due for 100,000 steps
            await wait_until(pilot, lambda: "checkpoint step-" in log_text(screen))
            await pilot.press("p")
            await wait_until(pilot, lambda: app.run_state == "paused")  # when the engine says so
            assert "paused at step" in log_text(screen)
            paused_at = bar.progress
            await pilot.pause(0.5)
            assert bar.progress == paused_at  # nothing trains while paused
            await viewer_sees_the_pause_and_is_refused_a_second_trainer(config, run)
            assert read_record(RunPaths(run).controller) == app.followed._record  # the viewer took nothing

            await pilot.press("p")
            await wait_until(pilot, lambda: app.run_state == "running" and bar.progress > paused_at)
            await pilot.press("e")
            await wait_until(pilot, lambda: screen.query_one(EvalTable).row_count == 1)
            await pilot.press("s")
            assert app.run_state in ("stopping", "stopped")
            await wait_until(pilot, lambda: app.run_state == "stopped")
            finished = [e for e in read_events(run / "events.jsonl") if isinstance(e, RunFinished)]
            assert [e.reason for e in finished] == ["stopped"] and finished[0].last_checkpoint
            assert "no final model was saved" in text_of(screen.query_one("#results-text", Static))
            assert screen.resumable == str(run)
            assert read_record(RunPaths(run).controller) is None  # an ended run needs no controller
    finally:
        stop_engine(run)


async def test_a_viewer_takes_control_once_the_controlling_app_has_gone(tiny_model_factory, tmp_path):
    """A review killed the terminal of the app that controlled a run: the app that viewed it kept its
    pause, stop, checkpoint and eval keys off for good."""
    config = parse_config(yaml.safe_load(long_run_config(tmp_path, tiny_model_factory("llama")).read_text()))
    started = start_detached(config)
    run = started.paths.root
    controller = subprocess.Popen(["sleep", "4"])  # the other app, whose terminal is killed in 4 s
    write_record(started.paths.controller, ProcessRecord.of_process(controller.pid))
    app = create_app(attach=run)
    try:
        async with app.run_test(size=(120, 40), notifications=True) as pilot:
            await wait_until(pilot, lambda: app.followed is not None and app.followed.controller is not None)
            screen = app.screen
            assert not screen.controls
            controller.wait()
            await wait_until(pilot, lambda: app.followed.controls, ENGINE_START_S)
            assert read_record(started.paths.controller) == app.followed._record
            await wait_until(pilot, lambda: "this app controls it now" in " ".join(log_text(screen).split()))
            # notify posts a message: the toast lands a moment after the log line written beside it
            await wait_until(pilot, lambda: any(n.title == "Control" for n in app._notifications))
            await wait_until(pilot, lambda: app.run_state == "running", ENGINE_START_S)
            await pilot.press("s")  # its keys work: the run stops at a checkpoint
            await wait_until(pilot, lambda: app.run_state == "stopped", ENGINE_START_S)
    finally:
        stop_engine(run)


async def viewer_sees_the_pause_and_is_refused_a_second_trainer(config: Path, run: Path) -> None:
    """A second app on the same draft: R does not offer the live run, refuses to resume it when it
    is typed in, offers to attach instead, and attached it is a viewer of the paused run."""
    viewer = create_app(config)
    async with viewer.run_test(size=(120, 40), notifications=True) as pilot:
        # opened anew beside a live run, the app names it: a user back after a dropped connection
        await wait_until(pilot, lambda: any(n.title == "A run trains" for n in viewer._notifications))
        note = next(n.message for n in viewer._notifications if n.title == "A run trains")
        assert note.startswith("lm is paused, step ") and "6 lists the runs, and Enter on one follows it" in note
        await pilot.press("escape", "5", "R")
        await pilot.pause()
        dialog = viewer.screen
        assert isinstance(dialog, PathDialog) and dialog.query_one(Input).value == ""  # its checkpoint is no offer
        dialog.query_one(Input).value = str(run)
        await pilot.press("enter")
        await pilot.pause()
        offer = viewer.screen
        assert isinstance(offer, ConfirmDialog) and "is training now (engine pid" in offer.question
        await pilot.click("#yes")
        await wait_until(pilot, lambda: viewer.run_state == "paused")
        screen = viewer.screen
        assert not viewer.followed.controls and screen.check_action("pause", ()) is False
        assert f"pid {os.getpid()} controls this run" in log_text(screen).replace("\n", "")
        assert "paused at step" in log_text(screen)  # the same history as the controller's
        await pilot.press("s", "p")  # a viewer's keys do nothing
        await pilot.pause(0.3)
        assert viewer.run_state == "paused" and not (RunPaths(run).commands.exists()
                                                     and any(RunPaths(run).commands.iterdir()))


async def test_a_killed_engine_shows_crashed_and_the_resumed_run_keeps_its_history(tiny_model_factory, tmp_path):
    # 200 steps: under a loaded machine a run of 60 once ended before the pause typed after step 10 landed
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), schedule={"max_steps": 200},
                            eval={"every_steps": 10, "num_samples": 0}, checkpoint={"every_steps": 10, "keep_last": 2})
    run = tmp_path / "runs" / "lm"
    paths = RunPaths(run)
    app = create_app(config)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("escape", "5", "enter")
            screen = app.screen
            evals = screen.query_one(EvalTable)
            await wait_until(pilot, lambda: evals.row_count >= 2, ENGINE_START_S)  # before training and step 10
            await pilot.press("p")  # hold it mid-run, after the checkpoint of step 10 (190 steps left: it lands)
            await wait_until(pilot, lambda: app.run_state == "paused")
            os.kill(engine_pid(run), signal.SIGKILL)
            await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog) and app.run_state == "failed")
            await pilot.pause()  # mounted before escape closes it
            dialog = app.screen
            checkpoint = run_info(run).last_checkpoint
            assert dialog.title_text == "Training crashed" and "crashed: its engine ended without a final event" in dialog.message
            assert "the engine was killed by SIGKILL (as the kernel's out-of-memory killer does" in dialog.message
            assert f"its last complete checkpoint is {checkpoint.name}" in dialog.hint
            assert f"--resume {run}" in dialog.hint and "R on this screen" in dialog.hint
            assert "crashed" in screen.query_one(RunProgress).label
            before = [row[0] for row in evals.rows_as_text()]
            await pilot.press("escape")

            write_record(paths.controller, ProcessRecord(max(psutil.pids()) + 10_000, 0.0, socket.gethostname(), 0.0))
            await pilot.press("R")  # the crashed run is the one to resume; a dead client's claim is stale
            await pilot.pause()
            assert app.screen.query_one(Input).value == str(run)
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.run_state == "running")
            # until the resumed engine has loaded, the line says so, not "crashed" (the history's end)
            assert screen.query_one(RunProgress).label.startswith("resuming from the last checkpoint")
            assert app.followed.controls and read_record(paths.controller).pid == os.getpid()
            await wait_until(pilot, lambda: app.run_state == "finished", ENGINE_START_S)
            await pilot.pause()
            resumed_from = [e.resumed_from_step for e in read_events(paths.events) if isinstance(e, RunStarted)]
            assert resumed_from == [0, int(checkpoint.name.removeprefix("step-"))]
            rows = [row[0] for row in evals.rows_as_text()]
            assert rows == [str(s) for s in range(0, 201, 10)] and rows[:len(before)] == before  # the pre-resume evals stay
            charts = screen.query_one(TrainCharts)
            assert [s for s, _ in charts.eval_loss] == list(range(0, 201, 10))
            # the history before the resume stays: its first report is at or before the resumed step (a report
            # precedes every checkpoint, so on a fast machine the first can be the checkpoint's own step)
            assert charts.train_loss.points[0][0] <= resumed_from[1] < charts.train_loss.points[-1][0]
            assert [s for s, _ in charts.train_loss] == sorted({s for s, _ in charts.train_loss})  # no step twice
            assert screen.query_one(RunProgress).progress == 200
    finally:
        stop_engine(run)


async def test_an_engine_that_ends_before_its_first_event_shows_its_output(tiny_model_factory, tmp_path):
    """Here a lock the test holds on the run folder, as another engine would: the engine refuses
    before it writes any event, and the app shows what it printed."""
    config = lm_config_file(tmp_path, tiny_model_factory("llama"))
    run = tmp_path / "runs" / "lm"
    run.mkdir(parents=True)
    with open(run / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        app = create_app(config)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("escape", "5", "enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog) and app.run_state == "failed",
                             ENGINE_START_S)
            dialog = app.screen
            assert dialog.title_text == "The engine did not start"
            assert app.screen_stack[0].query_one(RunProgress).label == "the engine did not start"
            assert "is in use: a process holds its lock" in dialog.message and str(run / "engine.log") in dialog.hint


class Tmux:
    """The app in a terminal of its own: a tmux server of this test's, started with its environment."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", f"{name}-{os.getpid()}"]

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.base, *args], capture_output=True, text=True)

    def start(self, folder: Path, *args: str) -> int:
        """Start `sft-tui ARGS` in `folder`; returns the pid of the pane's process."""
        command = shlex.join([sys.executable, "-m", "sft_tui.cli", *args])
        self("new-session", "-d", "-s", "app", "-x", "120", "-y", "40", f"cd {shlex.quote(str(folder))} && {command}")
        return int(self("list-panes", "-t", "app", "-F", "#{pane_pid}").stdout.split()[0])

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "app").stdout

    def wait(self, condition, what: str, timeout: float = ENGINE_START_S) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline, f"timed out waiting for {what}; the screen:\n{self.screen()}"
            time.sleep(0.05)

    def kill(self) -> None:
        self("kill-server")


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@needs_tmux
def test_ctrl_q_while_the_app_still_imports_torch_returns_the_shell_at_once(tmp_path):
    """Issue 9: the shell came back about 8 s after ctrl+q, once the warm-up thread had imported
    torch; now the app quits without waiting for its threads (the bound is loose for a loaded
    machine; the import alone takes longer)."""
    tmux = Tmux("sft-quit")
    try:
        tmux.start(tmp_path)
        tmux.wait(lambda: "Model" in tmux.screen(), "the app")
        asked = time.time()
        tmux("send-keys", "-t", "app", "C-q")
        tmux.wait(lambda: tmux("has-session", "-t", "app").returncode != 0, "the app's end", 30)
        assert time.time() - asked < 2.5
    finally:
        tmux.kill()


@needs_tmux
def test_a_sighup_to_the_apps_terminal_does_not_stop_its_run(tiny_model_factory, tmp_path):
    """What a dropped SSH connection does: the app, in a terminal of its own (tmux), starts a run;
    SIGHUP to the terminal's process group ends the app, and the run trains on to its end."""
    config = lm_config_file(tmp_path, tiny_model_factory("llama"), schedule={"max_steps": 200},
                            eval={"every_steps": 100, "num_samples": 0})
    paths = RunPaths(tmp_path / "runs" / "lm")
    tmux = Tmux("sft-sighup")
    try:
        shell = tmux.start(tmp_path, str(config))
        tmux.wait(lambda: "Leave the form" in tmux.screen(), "the app, in the model's path box")
        tmux("send-keys", "-t", "app", "Escape")  # out of the path box, so that 5 is a key
        tmux.wait(lambda: "? Help" in tmux.screen(), "the form left")
        tmux("send-keys", "-t", "app", "5")
        tmux.wait(lambda: "Start training" in tmux.screen(), "step 5")
        tmux("send-keys", "-t", "app", "Enter")
        tmux.wait(lambda: run_info(paths.root).state == "running", "the run")
        send_command(paths.commands, "pause")  # it must not end on its own before the test looks
        tmux.wait(lambda: run_info(paths.root).state == "paused", "the pause")
        group = os.getpgid(shell)  # the terminal's group: its shell (or the app it became) and the app
        app_pids = [shell, *(p.pid for p in psutil.Process(shell).children(recursive=True) if os.getpgid(p.pid) == group)]
        engine = read_record(paths.engine)
        assert engine.pid not in app_pids and os.getsid(engine.pid) == engine.pid  # a session of its own

        os.killpg(group, signal.SIGHUP)
        tmux.wait(lambda: not any(psutil.pid_exists(pid) for pid in app_pids), "the app's end", 30)
        time.sleep(0.5)
        assert live_record(paths.engine) == engine  # the engine never heard it
        send_command(paths.commands, "resume")
        tmux.wait(lambda: run_info(paths.root).state == "finished", "the run's end")
        assert run_info(paths.root).step == 200
    finally:
        stop_engine(paths.root)
        tmux.kill()


def test_a_runs_own_config_opens_as_the_draft_of_a_new_run(tmp_path):
    """`sft-tui attach` and `sft-tui runs/X/config.yaml` made the run's config the draft, name and
    file included: Start said "ready" and then was refused (the folder holds a run), and ctrl+s
    offered to overwrite the run's config.yaml, whose resume would then refuse the changed config."""
    from core.config import example_config, save_config

    root = tmp_path / "runs" / "r1"
    root.mkdir(parents=True)
    config = example_config("classification")
    config.output.run_name, config.optim.lr = "r1", 3e-4
    save_config(config, root / "config.yaml")
    (root / "events.jsonl").write_text("", encoding="utf-8")
    for app in (create_app(root / "config.yaml"), create_app(root / "config.yaml", attach=root)):
        draft = app.session.config
        assert draft.output.run_name is None and draft.optim.lr == 3e-4 and app.session.config_path is None
    other = tmp_path / "mine.yaml"  # a config of one's own keeps its name and file
    save_config(config, other)
    app = create_app(other)
    assert app.session.config.output.run_name == "r1" and app.session.config_path == other
