"""One malformed or hostile run folder among many (reviewB, findings 9, 10, 11, 13 and 13b): the
runs list (`sft-tui runs`, `sft-tui attach`, the app's runs screen) still shows every other run and
says which one cannot be read; a record of another user's process is no engine of this user's; the
config diff never expands YAML aliases; a checkpoint with an impossible state.json is skipped for the
one before it; and a held lock names a pid to kill only when it is a live engine's."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest
import torch

from core.checkpoint import TrainState, load_latest, save_checkpoint
from core.config import parse_config
from core.errors import UserError
from core.events import MAX_LINE_BYTES, LogMessage, RunStarted, StepMetrics, read_events
from core.liveness import ProcessRecord, live_record, read_record, write_record
from core.manifest import write_manifest
from core.run_catalog import RunCatalog
from core.run_info import config_dict, list_runs, newest_live_run, run_info
from core.runs import RunLock, RunPaths
from sft_tui.format.compare import MAX_VALUE_CHARS, MISSING, config_diff
from helpers import StopAt, tiny_lm_config
from test_app_runs import draft_over, notes, open_runs, select, write_fake_run

T0 = 1_700_000_000.0


def started(name: str, planned: int = 40) -> dict:
    return RunStarted(run_id=name, run_dir=name, task="causal-lm", model="m", config_digest="0", total_params=10,
                      trainable_params=10, planned_steps=planned, steps_per_epoch=10, train_rows=80,
                      validation_rows=20, device="cpu", precision="fp32", time=T0).to_dict()


def step(n: int, **fields) -> dict:
    return {**StepMetrics(step=n, epoch=n / 10, loss=1.0, grad_norm=1.0, lr=1e-3, tokens_per_s=1.0,
                          samples_per_s=1.0, tokens_seen=n, elapsed_s=n, eta_s=0.0, time=T0 + n).to_dict(), **fields}


def run_folder(runs: Path, name: str, *events: dict | list | str) -> RunPaths:
    """A run folder of a minimal config and these events, one JSON line each (a str as it is)."""
    paths = RunPaths(runs / name)
    paths.root.mkdir(parents=True)
    paths.config.write_text("task: causal-lm\n", encoding="utf-8")
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    paths.events.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths


def within(seconds: float, call):
    """`call()`'s result, failing the test (not hanging it) when it blocks longer than `seconds`."""
    outcome = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # noqa: BLE001 - raised again on the test's thread
            outcome.append(err)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"blocked for more than {seconds}s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def sft(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


# ---- finding 9: events and records of the wrong type or shape -----------------------------------
def test_events_of_wrong_types_or_shapes_are_skipped_and_the_run_is_still_read(tmp_path):
    bad = [
        {"type": "eval", "step": 3, "epoch": 1, "metrics": {}, "is_best": True, "seconds": 1, "time": T0 + 3},
        step(4, time="soon"),
        step(5, time=float("inf")),  # "Infinity": an age no row can print
        {k: v for k, v in step(6).items() if k != "loss"},
        step(7, loss=[1]),
        {"type": "no-such-event", "time": T0},
        [1, 2],
        "[" * 100_000,  # JSON nested past the recursion limit
    ]
    paths = run_folder(tmp_path / "runs", "odd", started("odd"), *bad, step(8, future_field=1))
    info = run_info(paths.root)
    assert [(e.type, getattr(e, "step", None)) for e in info.events] == [("run_started", None), ("eval", 3), ("step", 8)]
    assert info.state == "crashed" and info.step == 8 and info.best is None and info.updated == T0 + 8

    out = sft("runs", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0 and out.stdout.splitlines()[1].split()[:3] == ["odd", "crashed", "0/40"], out.stderr  # no checkpoint kept


@pytest.mark.parametrize("record", [
    {"pid": "1", "create_time": 1.0, "host": "h", "since": 1.0},
    {"pid": os.getpid(), "create_time": "x", "host": "h", "since": 1.0},
    {"pid": True, "create_time": 1.0, "host": "h", "since": 1.0},
    {"pid": os.getpid(), "create_time": 1.0, "since": 1.0},
    [os.getpid(), 1.0, "h", 1.0],
])
def test_a_malformed_engine_record_is_no_record_and_the_list_goes_on(tmp_path, record):
    paths = run_folder(tmp_path / "runs", "odd", started("odd"), step(3))
    run_folder(tmp_path / "runs", "fine", started("fine"), step(1))
    paths.engine.write_text(json.dumps(record), encoding="utf-8")
    assert read_record(paths.engine) is None
    assert [(info.name, info.state, info.engine) for info in list_runs(tmp_path / "runs")] == \
        [("odd", "crashed", None), ("fine", "crashed", None)]


def test_a_fifo_events_log_is_an_unreadable_run_not_a_hang(tmp_path):
    runs = tmp_path / "runs"
    run_folder(runs, "fine", started("fine"), step(2))
    fifo = run_folder(runs, "fifo")
    fifo.events.unlink()
    os.mkfifo(fifo.events)
    link = run_folder(runs, "link")
    link.events.unlink()
    link.events.symlink_to(runs / "fine" / "events.jsonl")  # a link could point at any file

    infos = {info.name: info for info in within(30, lambda: list_runs(runs))}
    assert {name: (info.state, info.reason) for name, info in infos.items()} == {
        "fine": ("crashed", ""),
        "fifo": ("unreadable", "not a regular file: events.jsonl"),
        "link": ("unreadable", "not a regular file: events.jsonl"),
    }
    assert not infos["fifo"].live and infos["fifo"].events == []
    assert {info.name: info.state for info in within(30, lambda: RunCatalog().read(runs))} == \
        {"fine": "crashed", "fifo": "unreadable", "link": "unreadable"}
    write_record(fifo.engine)  # a live engine's record beside it: the catalog follows live runs' logs
    assert {info.name: info.state for info in within(30, lambda: RunCatalog().read(runs))} == \
        {"fine": "crashed", "fifo": "unreadable", "link": "unreadable"}
    fifo.engine.unlink()
    out = sft("runs", "--runs-dir", runs)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[1:]} == \
        {"fine": "crashed", "fifo": "unreadable", "link": "unreadable"}
    newest = sft("attach", "--plain", "--runs-dir", runs)  # the newest live run: none, and no hang
    assert newest.returncode == 2 and newest.stderr.startswith(f"error: no run is training under {runs}/"), newest.stderr
    attach = sft("attach", "--plain", fifo.root)
    assert attach.returncode == 2 and attach.stderr.startswith(
        f"error: run {fifo.root} cannot be read: not a regular file: events.jsonl\n"), attach.stderr
    assert "unreadable (not a regular file: events.jsonl)" in " ".join(out.stdout.split())
    resumed = sft("train", "--resume", fifo.root)  # refused with the reason, not a hang or a traceback
    assert resumed.returncode == 2 and f"run {fifo.root} cannot be read: events.jsonl" in resumed.stderr, resumed.stderr


@pytest.mark.parametrize("where", ["engine.json", "failed-rank-1.json", "checkpoints/step-2/manifest.json"])
def test_a_fifo_among_a_runs_other_files_is_passed_over(tmp_path, where):
    """engine.json (its record), a rank's failure record and a checkpoint's manifest are read by
    every listing too: each as a FIFO blocked `sft-tui runs` for good."""
    paths = run_folder(tmp_path / "runs", "odd", started("odd"), step(2))
    (paths.root / where).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(paths.root / where)
    info = within(30, lambda: run_info(paths.root))
    assert (info.state, info.engine, info.reason, info.last_checkpoint, info.step) == ("crashed", None, "", None, 2)


def test_a_huge_events_log_is_streamed_and_an_over_long_line_skipped(tmp_path):
    """A sparse file of 256 MB (a few KB on disk) was read whole into memory: 1 GB took 2.4 GB."""
    paths = run_folder(tmp_path / "runs", "huge", started("huge"))
    log = {"type": "log", "level": "info", "logger": "core", "time": T0}
    with paths.events.open("ab") as f:
        f.write(json.dumps({**log, "message": "x" * (MAX_LINE_BYTES - 200)}).encode() + b"\n")  # long, kept
        f.write(json.dumps({**log, "message": "y" * MAX_LINE_BYTES}).encode() + b"\n")  # too long: skipped
        f.truncate(f.tell() + (256 << 20))  # one line of 256 MB of zero bytes
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + json.dumps(step(9)).encode() + b"\n")
    tracemalloc.start()
    try:
        events = read_events(paths.events)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.type for e in events] == ["run_started", "log", "step"] and events[1].message[0] == "x"
    assert peak < 8 * MAX_LINE_BYTES, f"{peak:,} bytes held to read it"
    assert run_info(paths.root).step == 9


# ---- finding 10: a live process of another user ----------------------------------------------
@pytest.fixture
def others_process():
    """A live process of another user: one started as nobody when the tests run as root, else init."""
    if os.getuid() != 0:
        assert psutil.Process(1).uids().real != os.getuid()
        yield 1
        return
    child = subprocess.Popen(["sleep", "60"], user=65534)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def test_a_record_of_another_users_live_process_is_no_engine(tmp_path, others_process):
    runs = tmp_path / "runs"
    planted = run_folder(runs, "planted", started("planted"), step(3, time=time.time()))
    record = write_record(planted.engine, ProcessRecord.of_process(others_process))
    assert record.here and not record.alive() and live_record(planted.engine) is None
    mine = run_folder(runs, "mine", started("mine"), step(1, time=T0))
    write_record(mine.engine)  # this process: the control that the check does not refuse every record
    assert [(info.name, info.state) for info in list_runs(runs)] == [("planted", "crashed"), ("mine", "running")]
    assert newest_live_run(runs).name == "mine"


# ---- finding 11: the runs screen's config diff ---------------------------------------------------
def alias_bomb(levels: int) -> str:
    """A config whose `a` expands to 10**levels strings through nested YAML aliases."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntask: causal-lm\na: *l{levels}\n"


def test_the_config_diff_refuses_yaml_aliases_and_cuts_long_values(tmp_path):
    bomb = run_folder(tmp_path / "runs", "bomb")
    bomb.config.write_text(alias_bomb(5), encoding="utf-8")
    assert config_dict(bomb) == {}
    odd = {"task": "causal-lm", "model": {"name_or_path": "m" * 5000},
           "when": {"day": datetime.date(2024, 1, 1), "days": [{datetime.date(2024, 1, 2): 1}]}}
    diff = dict(config_diff([odd, {"task": "causal-lm"}]))  # a YAML date failed json.dumps on the UI thread
    assert diff == {"model.name_or_path": ["m" * (MAX_VALUE_CHARS - 1) + "…", MISSING],
                    "when.day": ['"2024-01-01"', MISSING],
                    "when.days": ["[{datetime.date(2024, 1, 2): 1}]", MISSING]}


async def test_the_runs_screen_lists_an_unreadable_run_says_why_and_diffs_no_alias(tmp_path, monkeypatch):
    from sft_tui.app import SftApp, create_app
    from sft_tui.widgets.runs.diff import ConfigDiff
    from sft_tui.widgets.runs.table import RunTable

    runs = tmp_path / "runs"
    write_fake_run(runs, "good", 1e-3)
    fifo = run_folder(runs, "fifo")
    fifo.events.unlink()
    os.mkfifo(fifo.events)
    bomb = run_folder(runs, "bomb", started("bomb"))
    bomb.config.write_text(alias_bomb(6), encoding="utf-8")
    draft = draft_over(runs)
    launched = []
    monkeypatch.setattr(SftApp, "launch_run", lambda self, **kw: launched.append(kw), raising=False)
    app = create_app(draft)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunTable)
        assert {info.name: info.state for info in table.infos.values()} == \
            {"good": "finished", "fifo": "unreadable", "bomb": "crashed"}
        await select(pilot, screen, "fifo")
        await pilot.press("r")
        assert not launched and "run fifo cannot be read: not a regular file: events.jsonl" in notes(app)
        for name in ("good", "bomb"):
            await select(pilot, screen, name)
            await pilot.press("space")
        await pilot.pause()
        diff = dict(screen.query_one(ConfigDiff).diff)
        assert diff and all(values[1] == MISSING for values in diff.values()), diff


# ---- finding 13: a checkpoint's state.json -----------------------------------------------------
@pytest.mark.parametrize(("state", "why"), [
    ({"step": "2"}, "step input should be a valid integer"),
    ({"step": 2.0}, "step input should be a valid integer"),
    ({"step": 2, "tokens_seen": -5}, "tokens_seen is -5"),
    ({"step": 2, "elapsed_s": float("nan")}, "elapsed_s is nan"),
    ({"step": 2, "best_step": -1}, "best_step is -1"),
    ({"step": 2, "best_metrics": {"loss": "low"}}, "best_metrics loss input should be a valid number"),
    ({"step": 7}, "step 7 with step_in_epoch 2 cannot be step-2"),
    ({"step": 2, "step_in_epoch": 3}, "step 2 with step_in_epoch 3 cannot be step-2"),
])
def test_a_checkpoint_with_an_impossible_state_gives_way_to_the_one_before(tmp_path, state, why):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    for n in (1, 2):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=n, step_in_epoch=n), keep_last=2)
    newest = tmp_path / "step-2"
    (newest / "state.json").write_text(json.dumps({**json.loads((newest / "state.json").read_text()), **state}))
    write_manifest(newest, 2)  # the file's new size agrees: only its values are wrong
    warnings = []
    path, loaded = load_latest(tmp_path, model, optimizer, scheduler, warn=warnings.append)
    assert path.name == "step-1" and loaded == TrainState(step=1, step_in_epoch=1)
    assert warnings == [f"checkpoint step-2 is unusable: {newest / 'state.json'} cannot be loaded (ValueError: "
                        f"{why}); trying the one before it"]


def test_a_resume_skips_a_checkpoint_whose_step_is_text(tiny_model_factory, sft_file, tmp_path):
    """The review's demonstration: `"step": "20"` failed the resumed run with two tracebacks and a
    "this looks like a bug", and wrote the text into events.jsonl as resumed_from_step."""
    from core.engine import train
    from core.events import ListSink

    config = parse_config(tiny_lm_config(tiny_model_factory("llama"), sft_file, tmp_path / "runs",
                                         schedule={"max_steps": 6}, eval={"every_steps": 0, "num_samples": 0},
                                         checkpoint={"every_steps": 2, "keep_last": 3}))
    first = train(config, [ListSink()], StopAt(4), report_interval_s=0)
    newest = first.run_dir / "checkpoints" / "step-4"
    (newest / "state.json").write_text(json.dumps({**json.loads((newest / "state.json").read_text()), "step": "4"}))
    write_manifest(newest, 4)
    sink = ListSink()
    resumed = train(None, [sink], None, report_interval_s=0, resume_dir=first.run_dir)
    assert resumed.step == 6 and sink.of_type(RunStarted)[0].resumed_from_step == 2
    assert any("checkpoint step-4 is unusable" in e.message and "step input should be a valid integer" in e.message
               for e in sink.of_type(LogMessage))


# ---- finding 13b: the pid a held lock names --------------------------------------------------
def refusal(paths: RunPaths, text: str) -> UserError:
    """What a second engine is told while this test holds the run's lock with `text` in it."""
    paths.lock.write_text(text, encoding="utf-8")
    with open(paths.lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError) as refused:
            RunLock(paths)
    return refused.value


def test_a_held_lock_names_a_pid_to_kill_only_for_the_live_engine_on_record(tmp_path):
    paths = run_folder(tmp_path / "runs", "held", started("held"))
    write_record(paths.engine)  # this process is the engine on record
    engine = refusal(paths, str(os.getpid()))
    assert engine.message == f"run folder {paths.root} is in use by another sft-tui engine (pid {os.getpid()})"
    assert engine.hint == f"wait for it to end, or stop it with `kill -TERM {os.getpid()}` (it saves a checkpoint)"

    stale = ProcessRecord(max(psutil.pids()) + 10_000, 0.0, ProcessRecord.of_this_process().host, 0.0)
    for text, record in [("1; rm -rf ~", None), (f"{stale.pid}", stale), ("1", None), ("", None)]:
        paths.engine.unlink(missing_ok=True)
        if record is not None:
            write_record(paths.engine, record)  # a long-dead engine's pid, maybe another process's by now
        other = refusal(paths, text)
        assert other.message == (f"run folder {paths.root} is in use: a process holds its lock ({paths.lock}), "
                                 "and it is not a live sft-tui engine on record"), text
        assert other.hint == f"wait for it to end; `fuser -v {paths.lock}` names the process" and "kill" not in other.hint


# ---- a disk with room for keep_last checkpoints, not one more ------------------------------------
def _checkpoint_set(tmp_path, monkeypatch, free: int, keep_last: int, best_step: int | None = None) -> list[str]:
    """Save steps 1-4 of a small model with keep_last, the disk reporting `free` bytes once step 2
    is written; the checkpoints left, and each save's view of the folder just before it wrote."""
    import shutil

    from core.manifest import list_checkpoints

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    real_usage = shutil.disk_usage
    for n in (1, 2, 3, 4):
        if n == 3:
            monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=free))
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=n, step_in_epoch=n, best_step=best_step),
                        keep_last=keep_last)
    return [p.name for p in list_checkpoints(tmp_path)]


def test_a_disk_without_room_for_one_more_checkpoint_loses_the_oldest_before_the_write(tmp_path, monkeypatch, caplog):
    """A disk that holds keep_last checkpoints but not keep_last + 1 failed the save, although the
    save would have removed the oldest right after: now it is removed first and the run goes on,
    saying so; the best evaluated checkpoint stays, as after a save."""
    with caplog.at_level("WARNING", logger="core.engine"):
        assert _checkpoint_set(tmp_path / "a", monkeypatch, free=1000, keep_last=2) == ["step-3", "step-4"]
    assert "the disk has no room for step-3 beside the 2 checkpoints kept: step-1, which it replaces, is removed " \
           "before it is written rather than after" in caplog.messages
    assert _checkpoint_set(tmp_path / "b", monkeypatch, free=1000, keep_last=2, best_step=1) == \
        ["step-1", "step-3", "step-4"]


def test_a_disk_with_room_or_keep_last_1_removes_nothing_before_the_write(tmp_path, monkeypatch, caplog):
    """With room the old ones go after the new one is complete, as before; with keep_last 1 the one
    to go is the only one, which a failed write must leave to resume from."""
    with caplog.at_level("WARNING", logger="core.engine"):
        assert _checkpoint_set(tmp_path / "room", monkeypatch, free=1 << 40, keep_last=2) == ["step-3", "step-4"]
        assert _checkpoint_set(tmp_path / "one", monkeypatch, free=1000, keep_last=1) == ["step-4"]
    assert not [m for m in caplog.messages if "no room" in m]
