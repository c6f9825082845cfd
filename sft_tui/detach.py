"""Starting a run as an engine process of its own, detached from the terminal.

The app and `sft-tui train --detach` start the engine with `start_new_session`: it leads a session
of its own with no controlling terminal, so neither a closed terminal (SIGHUP) nor Ctrl+C in it
reaches the engine. The engine is `sft-tui train - --engine`, reading the resolved config from its
stdin and writing its output to the run folder's engine.log; clients follow the run through the run
folder (core.follow, core.commands, core.run_info), never through the process.

Cheap to import: no torch; the checks a start can make without loading anything happen here, so a
busy or finished run is refused before a process starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from core.config import RunConfig, config_to_dict
from core.errors import UserError
from core.liveness import ProcessRecord, live_record, write_record
from core.runs import RunPaths, new_run_id, occupied_problem, open_run, resume_problem, run_root


@dataclass
class DetachedRun:
    paths: RunPaths
    process: subprocess.Popen
    """The engine, for the client that started it: its exit status tells a failed start at once."""
    launch_record: ProcessRecord | None
    """What this client wrote to engine.json for the engine; the engine replaces it once it holds
    the run folder's lock."""


def live_engine_problem(paths: RunPaths) -> UserError | None:
    """A run that an engine trains now takes no second one: attach to it instead."""
    engine = live_record(paths.engine)
    if engine is None:
        return None
    return UserError(f"run {paths.root} is training now (engine {engine.describe()})",
                     f"attach to it instead: `sft-tui attach {paths.root}`, or the runs screen (6) in the app")


def start_detached(config: RunConfig | None = None, resume_dir: str | Path | None = None) -> DetachedRun:
    """Start the engine for `config` (a new run) or for the run in `resume_dir`; returns at once."""
    if resume_dir is not None:
        paths, _ = open_run(resume_dir)
        if problem := live_engine_problem(paths) or resume_problem(paths):
            raise problem
        command, stdin = ["--resume", str(paths.root)], None
    else:
        run_id = new_run_id(config)
        paths = RunPaths(run_root(config.output.runs_dir, run_id))
        if problem := live_engine_problem(paths) or occupied_problem(paths):
            raise problem
        config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": run_id})})
        command, stdin = ["-"], yaml.safe_dump(config_to_dict(config), sort_keys=False)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        log = open(paths.engine_log, "ab")  # noqa: SIM115 - the child holds it; ours closes below
    except OSError as err:
        raise UserError(f"cannot create run folder {paths.root}: {err.strerror}", "check output.runs_dir") from None
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sft_tui.cli", "train", *command, "--engine"],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:  # until the engine records itself (after its imports), clients see this record of it
        launch_record = write_record(paths.engine, ProcessRecord.of_process(process.pid))
    except psutil.NoSuchProcess:
        launch_record = None  # it ended at once: its exit status and engine.log say why
    if stdin:
        process.stdin.write(stdin.encode("utf-8"))
        process.stdin.close()
    return DetachedRun(paths, process, launch_record)
