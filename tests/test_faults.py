"""Faults during real runs (issue 7): signals, kill -9, corrupt checkpoints, a torn event log, a full
disk. Each ends with a resume that reaches the planned step with the same weights as one run that
was never interrupted.

Real signals and crashes need a real process, so those runs are subprocesses of the headless CLI;
everything else calls the CLI's entry point in-process to keep the suite fast.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import parse_config
from core.control import Control
from core.engine import train
from core.events import read_events
from core.manifest import MANIFEST, latest_checkpoint, list_checkpoints
from core.run_info import run_info
from sft_tui.cli import main
from sft_tui.train_command import EXIT_STOPPED
from helpers import StopAt, tiny_lm_config, write_jsonl

STEPS, EVERY = 200, 20


@dataclass
class Setup:
    root: Path
    base: dict
    weights: dict[str, torch.Tensor]

    def config_file(self, name: str) -> Path:
        config = json.loads(json.dumps(self.base))
        config["output"]["run_name"] = name
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def assert_same_weights(self, name: str) -> None:
        got = load_file(str(self.run_dir(name) / "final" / "model.safetensors"))
        assert got.keys() == self.weights.keys()
        for key, expected in self.weights.items():
            torch.testing.assert_close(got[key], expected)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory) -> Setup:
    """A 200-step tiny-Llama run, checkpointed every 20 steps, trained once without interruption."""
    root = tmp_path_factory.mktemp("faults")
    rows = [{"prompt": f"Echo {w} {i % 4}:", "completion": f" {w}"} for i, w in enumerate("abc def ghi jkl mno".split() * 10)]
    data = write_jsonl(root / "train.jsonl", rows)
    base = tiny_lm_config(tiny_model_factory("llama"), data, root / "runs",
                          schedule={"max_steps": STEPS}, eval={"every_steps": 1000, "num_samples": 0},
                          checkpoint={"every_steps": EVERY, "keep_last": 3})
    base["data"]["train"], base["model"]["name_or_path"] = str(data), str(base["model"]["name_or_path"])
    setup = Setup(root, base, {})
    result = train(parse_config(yaml.safe_load(setup.config_file("reference").read_text())))
    assert result.reason == "completed" and result.step == STEPS
    setup.weights = load_file(str(result.output_path / "model.safetensors"))
    return setup


def stopped_run(setup: Setup, name: str, at: int) -> Path:
    """A run stopped (as by Ctrl+C) at step `at`: checkpoints at 20, 40, ... and at `at`."""
    config = parse_config(yaml.safe_load(setup.config_file(name).read_text()))
    result = train(config, control=StopAt(at))
    assert result.reason == "stopped" and result.step == at
    return result.run_dir


def resume(run_dir: Path, capsys) -> str:
    """`sft-tui train --resume RUN` in-process; returns what it printed (progress on stderr, then
    the result on stdout). Asserts it completed."""
    code = main(["train", "--resume", str(run_dir)])
    printed = capsys.readouterr()
    text = " ".join((printed.err + " " + printed.out).split())
    assert code == 0, text
    assert f"run completed at step {STEPS}" in printed.out and "Traceback" not in text
    return text


def start(setup: Setup, name: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sft_tui.cli", "train", str(setup.config_file(name))],
                            cwd=setup.root, text=True, **kw)


def wait_for(path: Path, text: str, count: int = 1, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text(encoding="utf-8", errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear {count} time(s) in {path}")


# ---- signals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_saves_a_checkpoint_exits_3_and_resumes(sig, setup, capsys):
    """Issue 7.3: SIGTERM (a job scheduler, `systemctl stop`) killed a run at once, with no
    checkpoint; a stopped run exited 0 like a completed one."""
    name = f"signal-{sig.name}"
    proc = start(setup, name, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    events = setup.run_dir(name) / "events.jsonl"
    wait_for(events, '"type": "step"')
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    err = " ".join(err.split())
    assert f"{sig.name}: stopping after this step" in err and "Traceback" not in err
    assert f"resume with `sft-tui train --resume {setup.run_dir(name)}`" in " ".join(out.split())
    finished = read_events(events)[-1]
    assert finished.type == "run_finished" and finished.reason == "stopped" and 0 < finished.step < STEPS
    assert latest_checkpoint(setup.run_dir(name) / "checkpoints").name == f"step-{finished.step}"

    assert f"resumed at step {finished.step}" in resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)


def test_sighup_from_a_closed_terminal_saves_a_checkpoint_and_resumes(setup, capsys):
    """Issue 7.3: a dropped SSH connection closes the terminal and sends SIGHUP. The run must stop
    at a checkpoint although its terminal is gone (writing to it fails with EIO)."""
    name = "signal-SIGHUP"
    leader, follower = pty.openpty()
    proc = start(setup, name, stdin=follower, stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    wait_for(setup.run_dir(name) / "events.jsonl", '"type": "step"')
    os.close(leader)  # the terminal goes away...
    proc.send_signal(signal.SIGHUP)  # ...and says so
    assert proc.wait(timeout=120) == EXIT_STOPPED
    finished = read_events(setup.run_dir(name) / "events.jsonl")[-1]
    assert finished.type == "run_finished" and finished.reason == "stopped"
    resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)


def test_a_run_whose_pipe_closes_goes_on_and_a_sighup_still_saves(setup, capsys):
    """`sft-tui train ... 2>&1 | tee train.log` over SSH: the drop ends tee and sends SIGHUP. rich
    exited the process at its next write into the closed pipe, so the run crashed without a
    checkpoint; and `| head` killed a run at its first line after head had read enough."""
    name = "pipe-SIGHUP"
    proc = start(setup, name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(setup.run_dir(name) / "events.jsonl", '"type": "step"')
    proc.stdout.close()  # tee has gone...
    proc.send_signal(signal.SIGHUP)  # ...with the terminal
    assert proc.wait(timeout=120) == EXIT_STOPPED
    finished = read_events(setup.run_dir(name) / "events.jsonl")[-1]
    assert finished.type == "run_finished" and finished.reason == "stopped"
    assert latest_checkpoint(setup.run_dir(name) / "checkpoints").name == f"step-{finished.step}"
    resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)

    name = "pipe-head"
    proc = start(setup, name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()  # head -1 has what it wanted
    assert proc.wait(timeout=120) == 0
    assert read_events(setup.run_dir(name) / "events.jsonl")[-1].reason == "completed"


class AbortAt(Control):
    """A second Ctrl+C at optimizer step `at`: the CLI's handler raises KeyboardInterrupt there."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def should_stop(self, step: int) -> bool:
        if step >= self.at:
            raise KeyboardInterrupt
        return super().should_stop(step)


def test_an_aborted_run_says_so_and_resumes_from_its_last_checkpoint(setup, capsys):
    """A second Ctrl+C ended the run without a final event, so `sft-tui runs` called it crashed,
    as if the engine had died, and nothing said what the last checkpoint still offered."""
    config = parse_config(yaml.safe_load(setup.config_file("aborted").read_text()))
    with pytest.raises(KeyboardInterrupt):
        train(config, control=AbortAt(EVERY + 5))
    info = run_info(setup.run_dir("aborted"))
    assert info.state == "failed" and info.resumable
    assert info.reason == f"aborted at step {EVERY + 5} by a second Ctrl+C, without saving"
    failed = info.events[-1]
    assert failed.last_checkpoint.endswith(f"step-{EVERY}")
    assert f"resume with `sft-tui train --resume {setup.run_dir('aborted')}`" in failed.hint
    assert f"resumed at step {EVERY}" in resume(setup.run_dir("aborted"), capsys)
    setup.assert_same_weights("aborted")
    # its history holds the abort, then the resumed start that completed: attach reads to the end
    assert main(["attach", "--plain", str(setup.run_dir("aborted"))]) == 0
    printed = capsys.readouterr()
    assert "aborted at step 25" in printed.err and f"run completed at step {STEPS}" in printed.out


def test_an_aborted_run_of_several_processes_exits_as_aborted(setup, monkeypatch):
    """`--nproc 2` read the processes' end from the events, where an abort is a failure without a
    traceback: it exited 2, bad input, where one process exits 130."""
    from core.errors import ABORTED
    from core.events import RunFailed
    from sft_tui.train_command import EXIT_ABORTED

    ended = {"aborted": RunFailed(last_checkpoint=None, message=f"aborted at step 3 {ABORTED}", hint=""),
             "refused": RunFailed(last_checkpoint=None, message="data.train: no such file", hint="")}
    for end, code in (("aborted", EXIT_ABORTED), ("refused", 2)):
        monkeypatch.setattr("sft_tui.detach.run_processes", lambda config, resume, e=ended[end]: (1, e))
        config = setup.config_file(f"several-{end}")
        assert main(["train", str(config), "--nproc", "2", "--set", "compute.devices=cpu"]) == code, end


def test_a_second_engine_on_a_running_run_is_refused_with_the_holders_pid(setup, capsys):
    """Issue 7.6: two `--resume` of one run both trained and interleaved events.jsonl."""
    name = "locked"
    proc = start(setup, name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(setup.run_dir(name) / "events.jsonl", '"type": "step"')
        assert main(["train", "--resume", str(setup.run_dir(name))]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"in use by another sft-tui engine (pid {proc.pid})" in err and "kill -TERM" in err
        assert main(["train", str(setup.config_file(name))]) == 2  # nor may a new run take the name
        assert f"pid {proc.pid}" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == EXIT_STOPPED
    assert [e.type for e in read_events(setup.run_dir(name) / "events.jsonl")].count("run_started") == 1


# ---- crashes ----------------------------------------------------------------------------------
def test_kill_9_mid_run_resumes_from_the_last_checkpoint(setup, capsys):
    name = "kill-9"
    proc = start(setup, name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = setup.run_dir(name) / "events.jsonl"
    wait_for(events, '"type": "checkpoint"')
    proc.kill()
    proc.wait(timeout=60)
    saved = latest_checkpoint(setup.run_dir(name) / "checkpoints")
    assert saved is not None
    resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)


_KILLED_IN_WRITE = """
import pathlib, sys, time
import core.checkpoint as checkpoint
real, calls = checkpoint.write_manifest, []
def stall_second_write(folder, step):
    calls.append(step)
    if len(calls) == 2:  # every other file of the second checkpoint is on disk; its manifest is not
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(600)
    real(folder, step)
checkpoint.write_manifest = stall_second_write
from sft_tui.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(setup, capsys):
    name = "kill-9-in-write"
    marker = setup.root / "in-write"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_IN_WRITE, str(setup.config_file(name)), str(marker)],
                            cwd=setup.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    checkpoints = setup.run_dir(name) / "checkpoints"
    assert (checkpoints / f".tmp-step-{2 * EVERY}").is_dir()
    assert [p.name for p in list_checkpoints(checkpoints)] == [f"step-{EVERY}"]
    assert f"resumed at step {EVERY}" in resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)


# ---- damaged run folders ----------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_json(path: Path) -> None:
    """Same size, no longer JSON: only loading it can tell."""
    text = path.read_bytes()
    path.write_bytes(b"#" + text[1:])


@pytest.mark.parametrize(("file", "damage"), [("model.safetensors", _truncate), ("optimizer.pt", _truncate),
                                              ("state.json", _break_json), ("rng.safetensors", _truncate)])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(file, damage, setup, capsys):
    """Issue 7.4: a truncated or broken file in the newest checkpoint blocked resume with a traceback."""
    name = f"corrupt-{file}"
    run_dir = stopped_run(setup, name, at=50)
    damage(run_dir / "checkpoints" / "step-50" / file)
    err = resume(run_dir, capsys)
    assert f"checkpoint step-50 is unusable: {run_dir / 'checkpoints' / 'step-50' / file}" in err
    assert "trying the one before it" in err and "resumed at step 40" in err
    setup.assert_same_weights(name)


def test_a_torn_event_log_does_not_swallow_the_next_event(setup, capsys):
    """Issue 7.12: a crash mid-line left a torn last line, and the first event appended on resume
    was glued onto it and lost."""
    name = "torn-log"
    run_dir = stopped_run(setup, name, at=30)
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type": "step", "step": 31, "epo')
    resume(run_dir, capsys)
    started = [e for e in read_events(run_dir / "events.jsonl") if e.type == "run_started"]
    assert [e.resumed_from_step for e in started] == [0, 30]
    setup.assert_same_weights(name)


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left on the device"),
                                             (errno.EFBIG, "the file size limit (ulimit -f) is reached")])
def test_a_full_disk_keeps_the_previous_checkpoint(code, words, setup, capsys, monkeypatch):
    """Issue 7.7: a full disk while checkpointing gave a traceback."""
    import core.checkpoint

    name = f"full-disk-{code}"
    real, calls = core.checkpoint.save_model, []

    def disk_fills_up(model, filename, *args, **kw):
        calls.append(filename)
        if len(calls) == 3:
            Path(filename).write_bytes(b"\0" * 1000)  # what was written before the disk filled up
            raise OSError(code, os.strerror(code))
        return real(model, filename, *args, **kw)

    monkeypatch.setattr(core.checkpoint, "save_model", disk_fills_up)
    assert main(["train", str(setup.config_file(name))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write checkpoint {setup.run_dir(name) / 'checkpoints' / 'step-60'}: {words}" in err
    assert "(a checkpoint needs about 1 MB, and the run needs room for at least 3 of them)" in err
    assert "Traceback" not in err and "keep_last" not in err  # a resume cannot change it: no hint to
    assert f"hint: free space under {setup.run_dir(name) / 'checkpoints'}" in err
    assert "the last complete checkpoint is step-40" in err
    checkpoints = setup.run_dir(name) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"step-{EVERY}", f"step-{2 * EVERY}"]

    monkeypatch.setattr(core.checkpoint, "save_model", real)
    assert "resumed at step 40" in resume(setup.run_dir(name), capsys)
    setup.assert_same_weights(name)


def test_a_disk_that_fills_up_under_torch_save_is_the_same_message(setup, capsys, monkeypatch):
    """torch.save's zip writer reports a full disk as "unexpected pos ..." with no errno: a traceback
    and "this looks like a bug" when the disk filled up on optimizer.pt rather than on the weights."""
    import shutil

    import torch

    name = "full-disk-torch-save"
    real_save, real_usage, calls = torch.save, shutil.disk_usage, []

    def disk_fills_up(obj, f, *args, **kw):
        calls.append(f)
        if len(calls) == 5:  # optimizer.pt of the third checkpoint
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 34902080 vs 34901968")
        return real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=4096))
    assert main(["train", str(setup.config_file(name))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write checkpoint {setup.run_dir(name) / 'checkpoints' / 'step-60'}: no space left" in err
    assert "Traceback" not in err and "the last complete checkpoint is step-40" in err


def test_a_real_file_size_limit_is_a_message_not_a_crash(setup):
    """RLIMIT_FSIZE makes the kernel refuse the weights file (Python ignores SIGXFSZ: EFBIG)."""
    import resource

    name = "fsize"
    out = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", str(setup.config_file(name))],
                         cwd=setup.root, capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)))
    err = " ".join(out.stderr.split())
    assert out.returncode == 2, err
    assert "the file size limit (ulimit -f) is reached" in err and "Traceback" not in err
    assert not list((setup.run_dir(name) / "checkpoints").iterdir())


# ---- what a resume refuses ----------------------------------------------------------------------
def test_resuming_a_completed_run_says_so_instead_of_retraining(setup, capsys):
    """Issue 7.12: resuming a completed run silently retrained from its last checkpoint."""
    final = setup.run_dir("reference") / "final" / "model.safetensors"
    before = final.stat().st_mtime_ns
    assert main(["train", "--resume", str(setup.run_dir("reference"))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"run {setup.run_dir('reference')} is complete (completed at step {STEPS}, model in final/)" in err
    assert "--set output.run_name=NEW" in err
    assert final.stat().st_mtime_ns == before


def test_checkpoint_files_share_one_mode_that_follows_the_umask(setup):
    """Issue 7.12: weights were saved 0600 while the other run files were 0644."""
    previous = os.umask(0o027)
    try:
        run_dir = stopped_run(setup, "modes", at=EVERY)
    finally:
        os.umask(previous)
    files = [p for folder in (run_dir / "checkpoints" / f"step-{EVERY}",) for p in folder.iterdir()]
    assert {p.name for p in files} >= {"model.safetensors", "optimizer.pt", MANIFEST}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}
    assert oct((run_dir / ".lock").stat().st_mode & 0o777) == oct(0o600)  # readable, any user could hold it
    (run_dir / ".lock").chmod(0o644)  # made before this rule, or copied with its mode
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert oct((run_dir / ".lock").stat().st_mode & 0o777) == oct(0o600)
    shutil.rmtree(run_dir)
