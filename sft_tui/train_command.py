"""`sft-tui train`: a run headless in this terminal, on torchrun's processes, or `--detach`ed in an
engine process of its own; `--dry-run` plans one; `--engine` is such an engine (the app's too).

A run stopped by a signal exits with EXIT_STOPPED after saving a checkpoint, and one aborted by a
second Ctrl+C with EXIT_ABORTED; a UserError raised here is printed by sft_tui.cli.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from core.errors import ABORTED, UserError

EXIT_STOPPED = 3
"""Exit status of a run stopped before its end with a checkpoint saved (Ctrl+C, SIGTERM, SIGHUP):
not 0, so a job scheduler or script can tell it from a completed run and resume it."""
EXIT_ABORTED = 130
"""A run aborted by a second Ctrl+C, without saving: the shell's status for an interrupt."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What a person, a job scheduler or `systemctl stop`, and a dropped SSH connection send. Each
stops the run like the first Ctrl+C; only a second Ctrl+C aborts without saving."""


def train_main(args: argparse.Namespace) -> int:
    from core.config import apply_overrides, example_config, load_config
    from core.runs import open_run

    config = None
    if args.demo:
        config = example_config(args.demo)
    elif args.config == "-":
        config = _config_from_stdin()
    elif args.config:
        config = load_config(args.config)
    overrides = args.overrides + ([f"compute.nproc={args.nproc}"] if args.nproc is not None else [])
    if config is not None and overrides:
        config = apply_overrides(config, overrides)
    elif args.resume and overrides:
        raise UserError("--set and --nproc cannot change a run being resumed", "resume it as it was, or start a new run")
    if args.dry_run and config is None:
        raise UserError("--dry-run plans a new run, not a resumed one", "pass a config (or --demo) instead of --resume")
    run_config = config or open_run(args.resume)[1]  # read once: the trust check and the launch both ask
    _check_trust(run_config, args.trust_remote_code)
    if args.dry_run:
        return _dry_run(config)
    if args.detach:
        return _detach(config, args.resume)
    if not args.engine and _needs_torchrun(run_config):
        return _run_processes(config, args.resume)
    code = _run_engine(config, args.resume, detached=args.engine)
    # One of torchrun's processes: how the run ended is in its events, which the launcher reads; a
    # status other than 0 would make torchrun print a failure report for a stop or a refusal.
    return 0 if code in (2, EXIT_STOPPED) and os.environ.get("TORCHELASTIC_RUN_ID") else code


def _check_trust(run_config, approved: bool) -> None:
    """Refuse the config of the run to start (or resume) when it trusts its model's code unless this
    command line approves it (core.trust); an approval is handed to the engine processes started from here."""
    from core.trust import trust_problem, trusted_env

    if problem := trust_problem(run_config, approved=approved):  # only the flag: a --set can be any
        raise problem
    os.environ.update(trusted_env(run_config))


def _dry_run(config) -> int:
    """The plan of a run that would start here: what keeps it from starting on this machine (more
    processes than devices, a precision the device lacks) fails the dry run as it would the run."""
    from core.dry_run import prepare, report
    from core.launch import check_launch

    check_launch(config)
    print(report(prepare(config)))
    return 0


def _needs_torchrun(run_config) -> bool:
    """Whether this run trains on several processes that are still to be started (a process that
    torchrun started is one of them already)."""
    from core.launch import world_size

    return run_config.compute.nproc > 1 and world_size() == 1


def _run_processes(config, resume: str | None) -> int:
    """Train on compute.nproc processes under torchrun; rank 0 draws the progress here. The exit
    status is the run's, as for one process (torchrun's own is 1 for any failure)."""
    from sft_tui.detach import run_processes

    status, end = run_processes(config, resume)
    if end is None:
        return status
    if end.type == "run_finished":
        return EXIT_STOPPED if end.reason == "stopped" else 0
    return EXIT_ABORTED if end.message.endswith(ABORTED) else 1 if end.log_file else 2


def _config_from_stdin():
    import yaml

    from core.config import parse_config

    try:
        data = yaml.safe_load(sys.stdin.read())
    except yaml.YAMLError as err:
        raise UserError(f"the config on stdin is not YAML: {err}", "pipe a file written by `sft-tui init`") from None
    return parse_config(data if isinstance(data, dict) else {}, source="stdin")


def _run_engine(config, resume: str | None, detached: bool) -> int:
    """Train here, in this process, until the run ends; a detached engine also obeys the commands
    that clients leave in its run folder (core.commands)."""
    from core.control import Control
    from core.engine import train
    from core.launch import AgreedControl, world_size
    from core.runs import RunPaths, how_to_go_on, run_root
    from sft_tui.headless import ProgressDisplay

    display = ProgressDisplay(training=True)
    control = Control()
    main = os.environ.get("RANK", "0") == "0"  # torchrun's rank 0 holds the run folder and speaks for the run
    launched = bool(os.environ.get("TORCHELASTIC_RUN_ID"))  # its launcher reads the end from the events
    if detached and main:
        from core.commands import FolderControl

        root = Path(resume) if resume else run_root(config.output.runs_dir, config.output.run_name)
        control = FolderControl(RunPaths(root).commands)
    if world_size() > 1:  # every process takes rank 0's commands at the same step
        control = AgreedControl(control)

    def on_signal(signum, frame):
        if signum == signal.SIGINT and control.stop_requested:
            raise KeyboardInterrupt  # a person pressing Ctrl+C twice means it
        first = not control.stop_requested
        control.stop()  # before any write: one to a closed terminal or pipe must not lose the stop
        if signum == signal.SIGHUP:
            display.detach()  # the terminal is gone: writing to it would fail
        if first and main:
            display.note(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
                         + ("; press Ctrl+C again to abort without saving" if signum == signal.SIGINT else ""))

    # `nohup` ignores SIGHUP so that the run outlives the terminal: keep a signal ignored if it is.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        result = train(config, [display], control, resume_dir=resume, keep_failed_start=detached or launched)
    except UserError:
        if display.failure_shown or not main:
            return 2
        raise
    except KeyboardInterrupt:
        display.progress.stop()
        if main and not display.failure_shown:  # aborted before the run folder could say so
            print("aborted", file=sys.stderr)
        return EXIT_ABORTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.reason == "stopped":
        if main:  # one line for the run, not one per process; before its first step nothing was saved or lost
            resumable = result.last_checkpoint is not None
            display.result(("" if resumable else "stopped before training; ")
                           + how_to_go_on(RunPaths(Path(result.run_dir)), resumable))
        return EXIT_STOPPED
    return 0


def _detach(config, resume: str | None) -> int:
    """Start the engine in the background and return once it runs (or has failed to start)."""
    import time

    from core.liveness import read_record
    from sft_tui.detach import start_detached

    run = start_detached(config, resume)
    print(f"starting the engine for {run.paths.root} ...", file=sys.stderr)
    while not run.engine_started(record := read_record(run.paths.engine)):
        if run.process.poll() is not None:
            from sft_tui.format.safe import safe_text  # the log quotes the run's files: a data set's columns

            print(safe_text(run.paths.engine_log.read_text(encoding="utf-8", errors="replace").strip()), file=sys.stderr)
            return run.process.returncode
        time.sleep(0.1)
    pid = record.pid  # under torchrun, rank 0: a SIGTERM to it stops every process at one step
    print(f"run {run.paths.root.name} is training in the background (engine pid {pid}); closing this terminal "
          f"does not stop it\n"
          f"  follow it:  sft-tui attach {run.paths.root}   (--plain for text)\n"
          f"  list runs:  sft-tui runs --runs-dir {run.paths.root.parent}\n"
          f"  stop it:    kill -TERM {pid}   (it saves a checkpoint first)\n"
          f"  its output: {run.paths.engine_log}")
    return 0
