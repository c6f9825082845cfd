"""The `sft-tui` command: `init` writes a config, `train` runs one headless (or `--detach`ed, in an
engine process of its own), `attach` follows a run, `runs` lists runs, `serve` puts the app in a
browser; with no command, the app.

Heavy imports (torch, transformers) happen inside the commands, so `sft-tui --help` is instant.
A UserError is printed as its message and hint with exit status 2, never as a traceback; a run
stopped by a signal exits with EXIT_STOPPED after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from core.config import TASKS
from core.errors import ABORTED, UserError, train_command

EXIT_STOPPED = 3
"""Exit status of a run stopped before its end with a checkpoint saved (Ctrl+C, SIGTERM, SIGHUP):
not 0, so a job scheduler or script can tell it from a completed run and resume it."""
EXIT_ABORTED = 130
"""A run aborted by a second Ctrl+C, without saving: the shell's status for an interrupt."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What a person, a job scheduler or `systemctl stop`, and a dropped SSH connection send. Each
stops the run like the first Ctrl+C; only a second Ctrl+C aborts without saving."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error reads like every other error: a message, then a hint."""

    def error(self, message: str):
        print(f"error: {message}\nhint: {self.format_usage().strip()} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sft-tui", description="Supervised fine-tuning of Hugging Face models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("--task", choices=TASKS, default="classification")
    init.add_argument("path", nargs="?", default="sft.yaml", help="where to write it (default: sft.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    train = sub.add_parser("train", help="run a fine-tune headless with a progress bar")
    src = train.add_mutually_exclusive_group(required=True)
    src.add_argument("config", nargs="?", help="a YAML config (see `sft-tui init`); - reads it from stdin")
    src.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    src.add_argument("--demo", nargs="?", const="classification", choices=TASKS,
                     help="the bundled demo: MiniLM on sentiment, or a tiny LM on instructions")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config field, e.g. --set optim.lr=3e-5 (repeatable)")
    train.add_argument("--detach", action="store_true",
                       help="train in an engine process of its own that outlives this terminal; "
                            "follow it with `sft-tui attach`")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train data-parallel on N processes (one per GPU) through torchrun; "
                            "the same as --set compute.nproc=N")
    train.add_argument("--dry-run", action="store_true",
                       help="prepare everything short of training (no run folder), then print the plan, the "
                            "trainable parameters and the estimated peak memory")
    train.add_argument("--trust-remote-code", action="store_true",
                       help="allow the model's own Python code to run, where the config sets "
                            "model.trust_remote_code (a file cannot allow it by itself; see SECURITY.md)")
    train.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)  # what --detach starts

    attach = sub.add_parser("attach", help="follow a training run: its whole history, then live")
    attach.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run folder (default: the newest live run)")
    attach.add_argument("--plain", action="store_true", help="print progress as text instead of opening the app")
    attach.add_argument("--runs-dir", default="runs", help="where to look for the newest live run (default: runs)")

    runs = sub.add_parser("runs", help="list runs with their state, progress, best metric, age and parent")
    runs.add_argument("--runs-dir", default="runs", help="the folder that holds the runs (default: runs)")

    serve = sub.add_parser("serve", help="serve the app to a browser on 127.0.0.1 (forward the port over SSH)")
    serve.add_argument("config", nargs="?", help="a YAML config to open")
    serve.add_argument("--task", choices=TASKS, default="classification", help="which demo to open without a config")
    serve.add_argument("--port", type=int, default=8000, help="the port on 127.0.0.1 (default: 8000)")
    return parser


def _init(args: argparse.Namespace) -> int:
    from core.config import example_config
    from core.config_yaml import commented_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists", "pass --force to overwrite it, or choose another path")
    try:
        path.write_text(commented_yaml(example_config(args.task)), encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}",
                        "create its folder first, or choose a path in an existing folder you can write to") from None
    print(f"wrote {path}; run it with: {train_command(str(path))}")
    return 0


def _train(args: argparse.Namespace) -> int:
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


def _attach(args: argparse.Namespace) -> int:
    from sft_tui.attach import find_run, follow_plain

    info = find_run(args.run_dir, args.runs_dir)
    if args.plain:  # an ended run too: its history, then its status, as `docker logs` gives a stopped one's
        from sft_tui.headless import ProgressDisplay

        return follow_plain(info, ProgressDisplay())
    from sft_tui.app import create_app
    from sft_tui.keymap import load_keymap

    return _run_app(create_app(info.paths.config, attach=info.paths.root, keymap=load_keymap()))


def _runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from core.run_info import list_runs
    from sft_tui.format.runs import COLUMNS, STATE_STYLES, run_row

    infos = list_runs(args.runs_dir)
    if not infos:
        print(f"no runs under {args.runs_dir}/ (start one: sft-tui train CONFIG, or in the app)")
        return 0
    console, table = Console(highlight=False), Table(box=None, pad_edge=False)
    rows = [(info, run_row(info)) for info in infos]
    for column in COLUMNS:
        table.add_column(column, no_wrap=True)
    for info, row in rows:  # Text: a run's name is a folder's, and no markup is read from it
        table.add_row(*map(Text, row), style=STATE_STYLES.get(info.state, ""))
    if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(table, soft_wrap=True)
        return 0
    # Too narrow for a line a run (80 columns, a long model name): each name whole on a line of its
    # own, since `sft-tui attach runs/<name>` takes it, and what the table's columns say under it.
    for info, (name, state, step, best, age, parent) in rows:
        console.print(Text(name), style=STATE_STYLES.get(info.state, ""), soft_wrap=True)
        details = [state, f"step {step}", *([f"best {best}"] if info.best else []), f"{age} ago"]
        console.print(Text("  " + " · ".join(details)))
        if info.parent:  # on a line of its own: wrapped, a parent's name read as a run of its own
            console.print(Text(f"  from {parent}"), soft_wrap=True)
    return 0


def _app(argv: list[str]) -> int:
    parser = _Parser(
        prog="sft-tui", epilog="commands: init, train, attach, runs, serve (`sft-tui COMMAND --help`)",
        description="Supervised fine-tuning of Hugging Face models in the terminal. "
                    "Without a config it opens on the bundled demo.")
    parser.add_argument("config", nargs="?", help="a YAML config to open (see `sft-tui init`)")
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="which bundled demo to open when no config is given")
    parser.add_argument("--in-process", action="store_true",
                        help="train in a thread of the app instead of an engine process of its own "
                             "(the run then stops, with a checkpoint, when the app quits)")
    parser.add_argument("--keymap", metavar="FILE",
                        help="keys to use instead of the defaults (TOML, binding-id = \"key\"; default: "
                             "$SFT_TUI_KEYMAP or ~/.config/sft-tui/keymap.toml if it exists)")
    parser.add_argument("--print-keymap", action="store_true",
                        help="print every key binding in the keymap file's format, then exit")
    args = parser.parse_args(argv)
    from sft_tui.keymap import load_keymap, print_keymap

    if args.print_keymap:
        print(print_keymap(), end="")
        return 0
    from sft_tui.app import create_app

    try:
        app = create_app(args.config, args.task, in_process=args.in_process, keymap=load_keymap(args.keymap))
    except UserError as err:
        return _refuse(err)
    return _run_app(app)


def _run_app(app) -> int:
    """Run the app, then leave at once: a worker thread still importing torch or loading a model
    would hold the process (and the user's shell) for seconds. A run the app started trains in an
    engine process of its own, which this does not touch."""
    app.run()
    code = app.return_code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        return _app(argv)
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        return _refuse(err)
    except OSError as err:  # a full or read-only disk before a run could say so (its lock, its folder)
        from core.disk import disk_problem

        if (problem := disk_problem(err, Path(err.filename or ".").parent, "try again")) is None:
            raise
        return _refuse(problem)


def _serve(args: argparse.Namespace) -> int:
    from sft_tui.serve import serve

    return serve(args.port, args.config, args.task)


COMMANDS = {"init": _init, "train": _train, "attach": _attach, "runs": _runs, "serve": _serve}


def _refuse(err: UserError) -> int:
    """Print a UserError as its message and hint, without a traceback; the exit status for it. They
    may quote a file (a run folder's name, a data set's columns): its control characters are escaped."""
    from sft_tui.format.safe import safe_text

    print(f"error: {safe_text(err.message)}", file=sys.stderr)
    if err.hint:
        print(f"hint: {safe_text(err.hint)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from core.launch import exit_process, world_size

    status = main()
    if world_size() > 1:  # one of torchrun's processes, which `sft-tui train` starts as `-m sft_tui.cli`
        exit_process(status)
    sys.exit(status)
