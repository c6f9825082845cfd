"""The `sft-tui` command: `init` writes a config, `train` runs one headless.

Heavy imports (torch, transformers) happen inside the commands, so `sft-tui --help` is instant.
A UserError is printed as its message and hint with exit status 2, never as a traceback; a run
stopped by a signal exits with EXIT_STOPPED after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from core.config import TASKS
from core.errors import UserError

EXIT_STOPPED = 3
"""Exit status of a run stopped before its end with a checkpoint saved (Ctrl+C, SIGTERM, SIGHUP):
not 0, so a job scheduler or script can tell it from a completed run and resume it."""
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
    src.add_argument("config", nargs="?", help="a YAML config (see `sft-tui init`)")
    src.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    src.add_argument("--demo", nargs="?", const="classification", choices=TASKS,
                     help="the bundled demo: MiniLM on sentiment, or a tiny LM on instructions")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config field, e.g. --set optim.lr=3e-5 (repeatable)")
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
    print(f"wrote {path}; run it with: sft-tui train {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from core.config import apply_overrides, example_config, load_config
    from core.control import Control
    from core.engine import train
    from sft_tui.headless import ProgressDisplay

    config = None
    if args.demo:
        config = example_config(args.demo)
    elif args.config:
        config = load_config(args.config)
    if config is not None and args.overrides:
        config = apply_overrides(config, args.overrides)
    elif args.resume and args.overrides:
        raise UserError("--set cannot change a run being resumed", "resume it as it was, or start a new run")

    display = ProgressDisplay()
    control = Control()

    def on_signal(signum, frame):
        if signum == signal.SIGINT and control.stop_requested:
            raise KeyboardInterrupt  # a person pressing Ctrl+C twice means it
        if signum == signal.SIGHUP:
            display.detach()  # the terminal is gone: writing to it would fail
        if not control.stop_requested:
            display.note(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
                         + ("; press Ctrl+C again to abort without saving" if signum == signal.SIGINT else ""))
        control.stop()

    # `nohup` ignores SIGHUP so that the run outlives the terminal: keep a signal ignored if it is.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        result = train(config, [display], control, resume_dir=args.resume)
    except UserError:
        if display.failure_shown:
            return 2
        raise
    except KeyboardInterrupt:
        display.progress.stop()
        print("aborted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.reason == "stopped":
        display.note(f"resume with: sft-tui train --resume {result.run_dir}")
        return EXIT_STOPPED
    return 0


def _app(argv: list[str]) -> int:
    parser = _Parser(
        prog="sft-tui", epilog="commands: `sft-tui init --help`, `sft-tui train --help`",
        description="Supervised fine-tuning of Hugging Face models in the terminal. "
                    "Without a config it opens on the bundled demo.")
    parser.add_argument("config", nargs="?", help="a YAML config to open (see `sft-tui init`)")
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="which bundled demo to open when no config is given")
    args = parser.parse_args(argv)
    from sft_tui.app import create_app

    try:
        app = create_app(args.config, args.task)
    except UserError as err:
        return _refuse(err)
    app.run()
    return app.return_code or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("init", "train"):
        return _app(argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        return _train(args)
    except UserError as err:
        return _refuse(err)


def _refuse(err: UserError) -> int:
    """Print a UserError as its message and hint, without a traceback; the exit status for it."""
    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
