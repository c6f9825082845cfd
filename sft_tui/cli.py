"""The `sft-tui` command: `init` writes a config, `train` runs one headless (or `--detach`ed, in an
engine process of its own), `attach` follows a run, `runs` lists runs, `serve` puts the app in a
browser; with no command, the app.

Heavy imports (torch, transformers) happen inside the commands, so `sft-tui --help` is instant.
A UserError is printed as its message and hint with exit status 2, never as a traceback. The
`train` command lives in sft_tui.train_command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.config import TASKS
from core.errors import UserError, train_command
from sft_tui.train_command import train_main

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


COMMANDS = {"init": _init, "train": train_main, "attach": _attach, "runs": _runs, "serve": _serve}


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
