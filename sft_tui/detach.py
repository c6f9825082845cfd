"""Starting a run's engine: as a process of its own, detached from the terminal, and with several
processes under torchrun (detached, or in the terminal that started them).

The app and `sft-tui train --detach` start the engine with `start_new_session`: it leads a session
of its own with no controlling terminal, so neither a closed terminal (SIGHUP) nor Ctrl+C in it
reaches the engine. The engine is `sft-tui train - --engine`, reading the resolved config from its
stdin and writing its output to the run folder's engine.log; clients follow the run through the run
folder (core.follow, core.commands, core.run_info), never through the process. A run of
compute.nproc > 1 starts as torchrun with that many engines: rank 0 holds the run folder and writes
its events, so clients follow it like any other.

Cheap to import: no torch; the checks a start can make without loading anything happen here, so a
busy or finished run is refused before a process starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from core.atomic import no_follow
from core.config import RunConfig, config_to_dict, save_config
from core.disk import disk_problem
from core.errors import UserError
from core.events import Event, read_events
from core.launch import check_launch, launch_env
from core.liveness import ProcessRecord, live_record, write_record
from core.runs import (RunPaths, claim_run_id, discard_stub, foreign_problem, not_a_stub_problem, occupied_problem,
                       open_run, resume_problem, run_root)
from core.trust import trusted_env


@dataclass
class DetachedRun:
    paths: RunPaths
    process: subprocess.Popen
    """The engine, for the client that started it: its exit status tells a failed start at once."""
    launch_record: ProcessRecord | None
    """What this client wrote to engine.json for the engine; the engine replaces it once it holds
    the run folder's lock."""

    def engine_started(self, record: ProcessRecord | None) -> bool:
        """Whether `record` (engine.json now) is the engine of this start holding the run folder:
        the process itself, or under torchrun one of its workers (rank 0)."""
        if record is None or record == self.launch_record:
            return False
        try:
            return record.pid in (self.process.pid, *(p.pid for p in psutil.Process(self.process.pid).children()))
        except psutil.NoSuchProcess:
            return False


def live_engine_problem(paths: RunPaths) -> UserError | None:
    """A run that an engine trains now takes no second one: attach to it instead."""
    engine = live_record(paths.engine)
    if engine is None:
        return None
    return UserError(f"run {paths.root} is training now (engine {engine.describe()})",
                     f"attach to it instead: `sft-tui attach {paths.root}`, or the runs screen (6) in the app")


@dataclass
class Start:
    """A run about to start, once the checks that need nothing loaded have passed."""

    paths: RunPaths
    config: RunConfig
    """The resolved config, under the run's name (a resumed run's own)."""
    args: list[str]
    """What the engine's `sft-tui train` gets: `-` (the config on `stdin`), the config's file, or --resume."""
    stdin: str | None


def prepare_start(config: RunConfig | None = None, resume_dir: str | Path | None = None) -> Start:
    """Check a start of `config` (a new run) or of the run in `resume_dir`, and make its folder.

    torchrun's processes would share one stdin, so a run of several reads its config from the
    file the run keeps it in anyway (config.yaml), written here."""
    if resume_dir is not None:
        paths, config = open_run(resume_dir)
        if problem := foreign_problem(paths) or live_engine_problem(paths) or resume_problem(paths):
            raise problem
        check_launch(config)
        args, stdin = ["--resume", str(paths.root)], None
    else:
        check_launch(config)  # before the run's folder is claimed: a refused start leaves nothing behind
        run_id = claim_run_id(config)
        paths = RunPaths(run_root(config.output.runs_dir, run_id))
        if problem := (foreign_problem(paths) or not_a_stub_problem(paths) or live_engine_problem(paths)
                       or occupied_problem(paths)):
            raise problem
        config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": run_id})})
        args, stdin = ["-"], yaml.safe_dump(config_to_dict(config), sort_keys=False)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        if stdin and config.compute.nproc > 1:
            save_config(config, paths.config)
            args, stdin = [str(paths.config)], None
    except OSError as err:
        raise UserError(f"cannot create run folder {paths.root}: {err.strerror}", "check output.runs_dir") from None
    return Start(paths, config, args, stdin)


def engine_command(config: RunConfig, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `sft-tui train ARGS` for `config`: one process, or
    compute.nproc of them under torchrun (`--standalone`: a free port of its own, so that runs side by
    side do not collide), each seeing the GPUs of compute.devices."""
    train = ["-m", "sft_tui.cli", "train", *args]
    nproc = config.compute.nproc
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return [sys.executable, *launcher, *train], {**os.environ, "PYTHONUNBUFFERED": "1", **launch_env(config)}


def start_detached(config: RunConfig | None = None, resume_dir: str | Path | None = None,
                   trusted: bool = False) -> DetachedRun:
    """Start the engine for `config` (a new run) or for the run in `resume_dir`; returns at once.
    `trusted`: the user approved the code of its model (core.trust), which the engine is told."""
    start = prepare_start(config, resume_dir)
    paths, stdin = start.paths, start.stdin
    command, env = engine_command(start.config, [*start.args, "--engine"])
    if trusted:
        env.update(trusted_env(start.config))
    try:
        log = open(paths.engine_log, "ab", opener=no_follow)  # noqa: SIM115 - the child holds it; ours closes below
    except OSError as err:  # a resume's folder exists: its disk, or who may write in it, is what to fix
        raise disk_problem(err, paths.root, "try again") or UserError(
            f"cannot write {paths.engine_log}: {err.strerror}", f"check who may write in {paths.root}") from None
    with log:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )
    try:  # until the engine records itself (after its imports), clients see this record of it
        launch_record = write_record(paths.engine, ProcessRecord.of_process(process.pid))
    except psutil.NoSuchProcess:
        launch_record = None  # it ended at once: its exit status and engine.log say why
    if stdin:
        process.stdin.write(stdin.encode("utf-8"))
        process.stdin.close()
    return DetachedRun(paths, process, launch_record)


def run_processes(config: RunConfig | None = None, resume_dir: str | Path | None = None) -> tuple[int, Event | None]:
    """Train `config` (or resume the run in `resume_dir`) with compute.nproc processes under
    torchrun, in this terminal, until they end: their exit status and the run's last RunFinished or
    RunFailed event (rank 0 writes the events; torchrun's own status is 1 for any failure).

    torchrun runs in a session of its own, so that a signal reaches the processes once, from here:
    torchrun would pass the terminal's Ctrl+C on a second time, which they take as "abort without
    saving", and kill them 30 s later."""
    start = prepare_start(config, resume_dir)
    command, env = engine_command(start.config, start.args)
    started = time.time()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True, env=env)

    def forward(signum, frame):
        try:
            workers = psutil.Process(process.pid).children()
        except psutil.NoSuchProcess:
            return
        for worker in workers or [process]:  # none yet: torchrun itself ends the start
            try:
                worker.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        status = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ends = [e for e in read_events(start.paths.events, most_steps=0) if e.type in ("run_finished", "run_failed")
            and e.time >= started] if start.paths.events.exists() else []  # not a resumed run's earlier end
    if ends and ends[-1].type == "run_failed" and ends[-1].step == 0 and resume_dir is None:
        discard_stub(start.paths)  # as one process does: a start that failed leaves no run behind
    return status, ends[-1] if ends else None
