"""Runs that outlive the terminal (issue 9), from the command line: `sft-tui train --detach`
starts an engine in a session of its own, a SIGHUP to the terminal's process group does not reach
it, the control channel's commands round-trip, `sft-tui attach --plain` and `sft-tui runs` read
the run folder, and a killed engine shows as crashed and resumes to its planned step.

Real detached engines need real processes; the protocol's parts (liveness records, command files,
following events.jsonl) are also tested in-process below.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from core.commands import FolderControl, send_command
from core.config import parse_config
from core.errors import UserError
from core.events import StepMetrics
from core.follow import EventFollower
from core.liveness import ProcessRecord, live_record, read_record, write_record
from core.run_info import list_runs, run_info
from core.runs import RunPaths
from sft_tui.detach import start_detached
from helpers import tiny_lm_config, write_jsonl

STEPS = 200
CLI = [sys.executable, "-m", "sft_tui.cli"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_factory) -> Path:
    """A folder with config files of 200-step tiny-Llama runs, checkpointed every 20 steps."""
    root = tmp_path_factory.mktemp("detached")
    rows = [{"prompt": f"Echo {w} {i % 4}:", "completion": f" {w}"} for i, w in enumerate("abc def ghi jkl".split() * 10)]
    data = write_jsonl(root / "train.jsonl", rows)
    base = tiny_lm_config(tiny_model_factory("llama"), data, root / "runs", schedule={"max_steps": STEPS},
                          eval={"every_steps": 1000, "num_samples": 0}, checkpoint={"every_steps": 20, "keep_last": 2})
    for name in ("sighup", "killed"):
        config = {**base, "output": {**base["output"], "run_name": name}}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def sft(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=root, capture_output=True, text=True, timeout=timeout)


def wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state(paths: RunPaths) -> str:
    return run_info(paths.root).state


def count(paths: RunPaths, kind: str) -> int:
    return sum(1 for e in run_info(paths.root).events if e.type == kind)


def test_a_detached_run_outlives_its_terminal_and_obeys_every_command(root):
    paths = RunPaths(root / "runs" / "sighup")
    # The "terminal": a shell leading its own session, as an SSH login shell does.
    shell = subprocess.Popen(["bash", "-c", f"{' '.join(CLI)} train sighup.yaml --detach; sleep 600"], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    said = shell.stdout.readline() + shell.stdout.readline()
    assert "is training in the background (engine pid" in said, said
    send_command(paths.commands, "pause")  # before its first step: the test decides when it goes on
    engine = read_record(paths.engine)
    assert engine is not None and engine.pid != shell.pid and os.getsid(engine.pid) == engine.pid

    os.killpg(shell.pid, signal.SIGHUP)  # what a dropped SSH connection sends to the terminal's group
    shell.wait(timeout=10)
    wait(lambda: state(paths) == "paused", "the pause")
    assert live_record(paths.engine) == engine

    viewer = subprocess.Popen([*CLI, "attach", "--plain", str(paths.root)], cwd=root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    refused = sft(root, "train", "--resume", str(paths.root), "--detach")
    assert refused.returncode == 2 and "is training now (engine pid" in refused.stderr
    assert "sft-tui attach" in refused.stderr

    send_command(paths.commands, "resume")
    wait(lambda: state(paths) == "running" and count(paths, "step") > 0, "the resume")
    send_command(paths.commands, "pause")
    wait(lambda: state(paths) == "paused", "the second pause")
    checkpoints, evals = count(paths, "checkpoint"), count(paths, "eval")
    send_command(paths.commands, "save")
    send_command(paths.commands, "eval")
    send_command(paths.commands, "resume")
    wait(lambda: count(paths, "checkpoint") > checkpoints and count(paths, "eval") > evals, "save and eval")
    send_command(paths.commands, "stop")
    wait(lambda: state(paths) == "stopped", "the stop")
    info = run_info(paths.root)
    assert info.step < STEPS and info.last_checkpoint.name == f"step-{info.step}"

    out, _ = viewer.communicate(timeout=60)
    assert viewer.returncode == 3, out  # EXIT_STOPPED, as `sft-tui train` would
    assert "paused at step" in out and "resumed at step" in out and "evaluation at step" in out
    assert f"run stopped at step {info.step}" in out
    wait(lambda: live_record(paths.engine) is None, "the engine's exit", timeout=30)


def test_a_killed_engine_shows_as_crashed_and_resumes_to_its_planned_step(root):
    paths = RunPaths(root / "runs" / "killed")
    started = sft(root, "train", "killed.yaml", "--detach")
    assert started.returncode == 0, started.stderr
    send_command(paths.commands, "save")  # a checkpoint at its first step, then wait there
    send_command(paths.commands, "pause")
    wait(lambda: state(paths) == "paused" and run_info(paths.root).last_checkpoint is not None, "the checkpoint")
    os.kill(read_record(paths.engine).pid, signal.SIGKILL)
    wait(lambda: live_record(paths.engine) is None, "the engine's death", timeout=30)

    info = run_info(paths.root)
    assert info.state == "crashed" and info.resumable and info.last_checkpoint.name == "step-1"
    listed = sft(root, "runs")
    assert listed.returncode == 0 and any(line.split()[:2] == ["killed", "crashed"] for line in listed.stdout.splitlines())
    attached = sft(root, "attach", "--plain", str(paths.root))  # its history, then how it ended
    printed = " ".join((attached.stdout + attached.stderr).split())
    assert attached.returncode == 4 and "checkpoint saved" in printed and "paused at step 1" in printed
    assert "crashed: its engine ended without a final event at step 1" in printed
    assert f"its last complete checkpoint is step-1; resume with `sft-tui train --resume {paths.root}`" in printed

    resumed = sft(root, "train", "--resume", str(paths.root), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    info = run_info(paths.root)
    assert info.state == "finished" and info.step == STEPS and (paths.final / "model.safetensors").exists()


def test_attach_and_runs_explain_what_they_cannot_follow(root, tmp_path):
    not_a_run = sft(root, "attach", "--plain", str(tmp_path))
    assert not_a_run.returncode == 2 and "is not a run folder" in not_a_run.stderr
    nothing_live = sft(tmp_path, "attach", "--plain")
    assert nothing_live.returncode == 2 and "no run is training under runs/" in nothing_live.stderr
    assert "Traceback" not in not_a_run.stderr + nothing_live.stderr
    empty = sft(tmp_path, "runs")
    assert empty.returncode == 0 and "no runs under runs/" in empty.stdout


def test_an_ended_run_prints_its_history_and_exits_with_its_status(root):
    """`attach --plain` on a finished run was refused (exit 2, "bad input"); over SSH it is the way
    to read what a run did, as the app's attach shows it."""
    finished = [info for info in list_runs(root / "runs") if info.state == "finished"]
    if not finished:
        pytest.skip("needs the resumed run of the test before")
    out = sft(root, "attach", "--plain", str(finished[0].paths.root))
    history, result = " ".join(out.stderr.split()), " ".join(out.stdout.split())
    assert out.returncode == 0 and f"run completed at step {STEPS}" in result, out.stderr
    assert "paused at step 1" in history and "resumed at step 1" in history  # both of its engines' events


def test_a_run_resumed_a_moment_ago_is_starting_and_attach_waits_for_it(tmp_path):
    """Just after `train --resume RUN --detach`, `runs` said "stopped" and `attach --plain` replayed the
    old stop and exited 3, while the new engine was still importing torch."""
    from core.events import JsonlSink, RunFinished, RunStarted

    paths = RunPaths(tmp_path / "runs" / "again")
    paths.root.mkdir(parents=True)
    paths.config.write_text("task: causal-lm\n", encoding="utf-8")
    sink = JsonlSink(paths.events)
    sink.emit(RunStarted(run_id="again", run_dir=str(paths.root), task="causal-lm", model="m", config_digest="0",
                         total_params=1, trainable_params=1, planned_steps=10, steps_per_epoch=10, train_rows=8,
                         validation_rows=0, device="cpu", precision="fp32", time=time.time() - 60))
    sink.emit(RunFinished(step=4, reason="stopped", final_metrics={}, best_metrics={}, best_step=None,
                          output_path=None, last_checkpoint=None, elapsed_s=1.0, time=time.time() - 30))
    sink.close()
    assert run_info(paths.root).state == "stopped"
    engine = subprocess.Popen(["sleep", "3"])  # the resumed engine, loading: alive, no event yet
    write_record(paths.engine, ProcessRecord.of_process(engine.pid))
    info = run_info(paths.root)
    assert info.state == "starting" and info.live
    attached = sft(tmp_path, "attach", "--plain", str(paths.root))
    engine.wait()
    printed = " ".join((attached.stdout + attached.stderr).split())
    # followed until that engine ended, without a word: then the run stands where its events leave it
    assert attached.returncode == 4 and "run stopped at step 4" in printed
    assert "is not training: it stopped at step 4" in printed


# ---- the protocol's parts, in-process ---------------------------------------------------------
def test_a_record_of_a_reused_pid_is_not_alive(tmp_path):
    mine = write_record(tmp_path / "engine.json")
    assert live_record(tmp_path / "engine.json") == mine
    reused = ProcessRecord(mine.pid, mine.create_time - 3600, mine.host, mine.since)  # same pid, older process
    write_record(tmp_path / "engine.json", reused)
    assert read_record(tmp_path / "engine.json") == reused and live_record(tmp_path / "engine.json") is None
    gone = ProcessRecord(max(psutil.pids()) + 10_000, 0.0, mine.host, mine.since)
    assert not gone.alive()
    (tmp_path / "engine.json").write_text('{"pid": 1', encoding="utf-8")  # torn
    assert read_record(tmp_path / "engine.json") is None


def test_a_record_from_another_host_is_alive_while_its_heartbeat_keeps_it_fresh(tmp_path, monkeypatch):
    """A runs folder shared between hosts: another host's pid cannot be checked from here, and such a
    record counted as alive for good, so a run whose host crashed stayed "training" and refused its
    resume everywhere else. Its engine's heartbeat touches it; one silent for REMOTE_SILENCE_S is gone."""
    from core import liveness
    from sft_tui.detach import live_engine_problem

    path = tmp_path / "engine.json"
    remote = write_record(path, ProcessRecord(4242, 1.0, "gpu-node-7", time.time()))
    assert live_record(path) == remote
    assert "engine pid 4242 on gpu-node-7" in live_engine_problem(RunPaths(tmp_path)).message
    silent = time.time() - liveness.REMOTE_SILENCE_S - 5
    os.utime(path, (silent, silent))
    assert live_record(path) is None and live_engine_problem(RunPaths(tmp_path)) is None

    monkeypatch.setattr(liveness, "HEARTBEAT_S", 0.01)
    beat = liveness.Heartbeat(path, remote)  # as the engine on gpu-node-7 keeps it
    deadline = time.monotonic() + 10
    while live_record(path) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live_record(path) == remote
    beat.stop()
    beating = liveness.Heartbeat(path, remote)
    write_record(path, ProcessRecord(4343, 1.0, "gpu-node-8", time.time()))  # taken over: not its to touch
    os.utime(path, (silent, silent))
    time.sleep(0.2)
    beating.stop()
    assert live_record(path) is None


def test_an_ended_engine_not_yet_collected_by_its_parent_is_not_alive():
    child = subprocess.Popen(["sleep", "0.1"])
    record = ProcessRecord.of_process(child.pid)
    assert record.alive()
    wait(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, "the zombie", timeout=10)
    assert not record.alive()
    child.wait()


def test_a_run_being_launched_shows_as_starting_not_crashed(root):
    config = parse_config(yaml.safe_load((root / "killed.yaml").read_text()))
    config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": "launched"})})
    run = start_detached(config)
    info = run_info(run.paths.root)  # before the engine has imported torch and claimed the folder
    assert info.state == "starting" and info.engine.pid == run.process.pid
    send_command(run.paths.commands, "stop")
    assert run.process.wait(timeout=120) == 3  # stopped after its first step, a checkpoint saved
    assert run_info(run.paths.root).state == "stopped"


def test_a_start_on_a_read_only_disk_says_so_and_starts_nothing(root, monkeypatch):
    """A resume with --detach on a file system remounted read-only said "cannot create run folder
    ...: check output.runs_dir" of a folder that was there, named in no config."""
    import errno

    import sft_tui.detach

    def read_only(path, flags, mode=0o666):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    config = parse_config(yaml.safe_load((root / "killed.yaml").read_text()))
    config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": "read-only"})})
    monkeypatch.setattr(sft_tui.detach, "no_follow", read_only)
    with pytest.raises(UserError) as caught:
        start_detached(config)
    paths = RunPaths(root / "runs" / "read-only")
    assert caught.value.message == f"cannot write {paths.engine_log}: the file system is read-only"
    assert caught.value.hint == f"make it writable under {paths.root}, then try again"
    assert live_record(paths.engine) is None


def test_commands_apply_in_order_once_and_stale_ones_are_dropped(tmp_path):
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / f"{1_000_000_000:020d}-1-stop.json").write_text("{}")  # left by an engine that crashed
    control = FolderControl(folder)
    send_command(folder, "pause")
    control.poll()
    assert control.paused and not control.stop_requested and not list(folder.iterdir())
    send_command(folder, "save")
    send_command(folder, "resume")
    control._next_poll = 0.0
    control.poll()
    assert not control.paused and control.take_save_request() and not control.take_save_request()
    with pytest.raises(ValueError, match="unknown command"):
        send_command(folder, "explode")


def test_the_follower_reads_whole_lines_only_and_starts_over_on_a_new_file(tmp_path):
    path = tmp_path / "events.jsonl"
    event = StepMetrics(step=1, epoch=0.1, loss=1.0, lr=1e-3, grad_norm=None, tokens_per_s=1.0, samples_per_s=1.0,
                        tokens_seen=8, elapsed_s=1.0, eta_s=None)
    line = json.dumps(event.to_dict())
    follower = EventFollower(path)
    assert follower.read_new() == []
    path.write_text(line + "\n" + line[:20], encoding="utf-8")  # the engine is mid-way through line 2
    assert [e.step for e in follower.read_new()] == [1]
    with path.open("a", encoding="utf-8") as f:
        f.write(line[20:] + "\n")
    assert [e.step for e in follower.read_new()] == [1]
    assert follower.read_new() == []
    path.unlink()
    later = json.dumps({**event.to_dict(), "time": event.time + 60})
    path.write_text(later + "\n", encoding="utf-8")  # a failed start taken over: a new file, perhaps its inode
    assert len(follower.read_new()) == 1


def _day_of_reports(path: Path, steps: int) -> None:
    """An events.jsonl as a long run leaves it: a start, a step report a step and an evaluation every
    1,000 steps (the best at step 3,000), written by the engine's own sink."""
    from core.events import EvalResult, JsonlSink, RunStarted

    sink = JsonlSink(path)
    sink.emit(RunStarted(run_id="long", run_dir=str(path.parent), task="causal-lm", model="m", config_digest="0",
                         total_params=10, trainable_params=10, planned_steps=steps, steps_per_epoch=steps,
                         train_rows=steps, validation_rows=1, device="cpu", precision="fp32"))
    for step in range(1, steps + 1):
        sink.emit(StepMetrics(step=step, epoch=step / steps, loss=10_000.0 / step, grad_norm=1.0, lr=1e-4,
                              tokens_per_s=100.0, samples_per_s=1.0, tokens_seen=step * 50, elapsed_s=step / 4,
                              eta_s=(steps - step) / 4))
        if step % 1000 == 0:
            sink.emit(EvalResult(step=step, epoch=step / steps, metrics={"loss": abs(step - 3000) + 1.0},
                                 is_best=step <= 3000, seconds=1.0))
    sink.close()


def test_a_long_history_is_read_with_every_event_but_only_some_step_reports(tmp_path):
    """A day's run reports 345,600 times, and listing or attaching to it parsed every report (5.4 s to
    draw an attach, bench/attach_replay.py): run_info and a follower's first read now parse at most
    HISTORY_STEPS of them, the newest RECENT_STEPS all and the others spread from the first on, in
    the file's order, with every other event; what the follower reads later comes whole."""
    from core.events import HISTORY_STEPS, RECENT_STEPS, JsonlSink, read_events

    path = tmp_path / "long" / "events.jsonl"
    path.parent.mkdir()
    (path.parent / "config.yaml").write_text("task: causal-lm\n", encoding="utf-8")
    steps = 3 * HISTORY_STEPS
    _day_of_reports(path, steps)
    everything = read_events(path)
    assert len([e for e in everything if e.type == "step"]) == steps

    info = run_info(path.parent)
    follower = EventFollower(path)
    for events in (info.events, follower.read_new()):
        reports = [e.step for e in events if e.type == "step"]
        assert len(reports) == HISTORY_STEPS and reports == sorted(reports) and reports[0] == 1
        assert reports[-RECENT_STEPS:] == list(range(steps - RECENT_STEPS + 1, steps + 1))
        gaps = {b - a for a, b in zip(reports[:-RECENT_STEPS], reports[1:-RECENT_STEPS + 1])}
        assert max(gaps) <= -(-(steps - RECENT_STEPS) // (HISTORY_STEPS - RECENT_STEPS)), "spread evenly"
        assert [e for e in events if e.type != "step"] == [e for e in everything if e.type != "step"]
        assert [e.step for e in events if e.type == "eval"] == list(range(1000, steps + 1, 1000))
    assert info.step == steps and info.best == ("loss", 1.0, 3000)

    sink = JsonlSink(path)
    later = [StepMetrics(step=steps + n, epoch=1.0, loss=1.0, grad_norm=None, lr=0.0, tokens_per_s=1.0,
                         samples_per_s=1.0, tokens_seen=0, elapsed_s=0.0, eta_s=None) for n in (1, 2, 3)]
    for event in later:
        sink.emit(event)
    sink.close()
    assert [e.step for e in follower.read_new()] == [steps + 1, steps + 2, steps + 3]


def test_a_crashed_run_names_the_process_that_failed_first(tmp_path, monkeypatch):
    """Under NCCL, rank 0 can be ended inside the collective that a failed peer broke, before it
    writes a final event: the run is crashed, and the peer's record (core.rank_failure) says why, in
    run_info and in what attach and the app say. A record from before the run's last start (a
    resumed run's earlier launch) says nothing."""
    from core.events import JsonlSink, RunStarted
    from core.rank_failure import record_failure
    from sft_tui.attach import ended_problem

    paths = RunPaths(tmp_path / "runs" / "two")
    paths.root.mkdir(parents=True)
    paths.config.write_text("task: causal-lm\n", encoding="utf-8")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "first-launch")
    record_failure(paths.root, 1, "an earlier launch's failure", "", user=True)
    earlier = time.time() - 60
    os.utime(paths.root / "failed-rank-1.json", (earlier, earlier))
    sink = JsonlSink(paths.events)
    sink.emit(RunStarted(run_id="two", run_dir=str(paths.root), task="causal-lm", model="m", config_digest="0",
                         total_params=10, trainable_params=10, planned_steps=6, steps_per_epoch=6, train_rows=48,
                         validation_rows=0, device="cuda:0", precision="bf16", world_size=2))
    sink.close()
    assert run_info(paths.root).state == "crashed" and run_info(paths.root).reason == ""

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "second-launch")
    record_failure(paths.root, 1, "out of device memory at step 3", "train LoRA adapters", user=True)
    info = run_info(paths.root)
    assert info.state == "crashed" and info.reason == "process 1: out of device memory at step 3"
    assert ended_problem(info).message.endswith("without a final event at step 0; process 1: out of device memory "
                                                "at step 3")
