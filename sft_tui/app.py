"""The Textual app: the steps of a draft run (model, data, freeze map, hyperparameters, train)
that the user visits in any order with the number keys, around one Session.

The app is where outcomes land: load workers post ModelLoaded, DataLoaded or LoadFailed here, every
change of the run's state arrives as a RunStateChanged, and one Worker.StateChanged handler turns
the failure of any worker into the error dialog.

It follows one run at a time (`launch_run`, `attach_run`) through a RunClient: by default the run
trains in an engine process of its own, which outlives the app (quitting detaches from it); with
`in_process` it trains in a thread worker and cannot.

Importing this module must stay cheap: torch and transformers load in a worker after the first
screen is drawn (see `warm_up`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from textual.actions import parse as parse_action
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from core.config import RunConfig, example_config, load_config
from core.logs import ROUTED_LOGGERS, EventLogHandler
from core.runs import RunPaths
from sft_tui.draft_files import DraftFiles
from sft_tui.error_log import APP_ERROR_LOG
from sft_tui.format.safe import safe_text
from sft_tui.loading import Loading
from sft_tui.messages import EngineEvent, RunState, RunStateChanged
from sft_tui.run_client import RunClient
from sft_tui.run_following import RunFollowing
from sft_tui.session import Session, untrusted
from sft_tui.step_prebuild import StepPrebuild
from sft_tui.worker import PostingSink, RunSink, warm_up

STEPS = [("model", "Model"), ("data", "Data"), ("freeze", "Freeze"), ("hyper", "Hyper"), ("train", "Train"),
         ("runs", "Runs")]
LOG_KEEP = 1000
"""Log lines kept for the train screen's log pane."""


def _screen(name: str):
    """Screens are imported when first shown, so start-up imports only the first one."""

    def make() -> Screen:
        from sft_tui.screens import SCREENS

        return SCREENS[name]()

    return make


class SftApp(Loading, RunFollowing, StepPrebuild, DraftFiles, App):
    CSS_PATH = "app.tcss"
    TITLE = "sft-tui"
    MODES = {name: _screen(name) for name, _ in STEPS}
    BINDINGS = [
        # The step tabs show the number keys: in the footer they would push out the screen's keys.
        *(Binding(str(i), f"go('{name}')", f"Step {i}: {label}", id=f"go-{name}", show=False)
          for i, (name, label) in enumerate(STEPS, 1)),
        Binding("question_mark,f1", "help", "Help", id="help", tooltip="Every key, where it works and what it does"),
        Binding("ctrl+s", "save_config", "Save YAML", id="save-yaml", tooltip="Write the draft to a YAML config"),
        Binding("ctrl+o", "load_config", "Load YAML", id="load-yaml", tooltip="Replace the draft with a YAML config"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the app (a training run asks first)"),
        Binding("ctrl+q", "quit", "Quit", id="quit-anywhere", priority=True,
                tooltip="Quit from anywhere, even while typing in a box or in a dialog"),
        Binding("ctrl+p", "command_palette", "Commands", id="palette", priority=True,
                tooltip="Search every command by name"),
    ]

    session_version: reactive[int] = reactive(0)
    """Bumped whenever the Session changes; widgets that summarise the draft watch it."""
    run_state: reactive[RunState] = reactive(RunState.IDLE)
    """The state of the run, shown in the draft bar; set only by `on_run_state_changed`."""
    log_count: reactive[int] = reactive(0)
    """Number of log lines received so far; the train screen's log pane watches it."""
    model_state: reactive[str] = reactive("none")
    """none, loading, ready or failed: the model structure and tokenizer in session.model."""
    data_state: reactive[str] = reactive("none")
    """none, loading, ready or failed: the tokenized data in session.data."""

    def __init__(self, session: Session, *, attach: Path | None = None, in_process: bool = False,
                 keymap: dict[str, str] | None = None) -> None:
        super().__init__()
        self.keymap = keymap or {}
        """The user's keys by binding id (sft_tui.keymap), over the defaults: help and tabs show them."""
        self.set_keymap(self.keymap)
        self.session = session
        self.in_process = in_process
        """Runs train in a thread of the app, not in an engine process of their own."""
        session.in_process = in_process
        self.followed: RunClient | None = None
        """The run the train screen follows (live or ended); None before the first. (Not `run`:
        that is App.run.)"""
        self.followed_config: RunConfig | None = None
        """The config of the run followed, which the status line describes while it trains: one opened
        from step 6 or continued is not the draft that steps 1-5 edit."""
        self._attach = attach
        self.startup_note: str | None = None
        """What to tell the user once the first screen shows (the config asked to trust its model's code)."""
        self._sink: RunSink | None = None
        """The in-process run's sink: what its engine reported of its start and failure."""
        self._quit_when_stopped = False
        self._warmed = False
        """The warm-up has started: at once, or once an attached run's history is shown."""
        self.log_lines: list[tuple[str, str, str]] = []
        """(level, logger, message) of the last LOG_KEEP log records, for the train screen."""
        self._log_handler = EventLogHandler(PostingSink(self))
        self._loading: dict[str, RunConfig] = {}
        """The config each running model or data load reads."""
        self._ended_with: tuple | None = None
        """The draft (config, invalid fields) when the last run ended: the bar shows how it ended
        until the draft changes."""

    # ---- start-up and shutdown ----------------------------------------------------------------
    def on_load(self) -> None:
        """Threads still at work when the app ends (a warm-up importing torch, a loader) must not hold
        it: asyncio.run waits for the default executor's threads before App.run returns."""
        asyncio.get_running_loop().set_default_executor(_NoWaitExecutor())

    def on_mount(self) -> None:
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).addHandler(self._log_handler)
        logging.getLogger("core").setLevel(logging.INFO)
        if self.startup_note:
            self.notify(self.startup_note, title="Remote code", severity="warning", timeout=20, markup=False)
        if self._attach is not None:  # the run's history is drawn first: importing torch beside it slows it down
            self.attach_run(self._attach)
        else:
            self.switch_mode("model")
            self._start_warm_up()
            self.run_worker(self.announce_live_runs, thread=True, name="live runs", group="live-runs",
                            exit_on_error=False)

    def _start_warm_up(self) -> None:
        """Once the first screen is drawn: import torch and transformers, and build the other steps."""
        if not self._warmed:
            self._warmed = True
            self.run_worker(self._warm_up, thread=True, name="warm-up", group="warm-up", exit_on_error=False)
            if self.PREBUILD_STEPS:
                self.run_worker(self.prebuild_steps, name="prebuild", group="prebuild", exit_on_error=False)


    def _warm_up(self) -> None:
        self.call_from_thread(self._cuda_known, warm_up())

    def _cuda_known(self, cuda: bool) -> None:
        """The warm-up is done: torch, transformers and datasets are imported."""
        self.session.cuda = cuda
        self.changed()
        self.freeze_heap()

    def on_unmount(self) -> None:
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).removeHandler(self._log_handler)
        self._leave_run()

    def changed(self) -> None:
        """Tell the summary widgets that the Session changed. A failed load whose error the change
        dropped, or a running load, whose settings changed is over: nothing is loaded for the new
        settings (a running one is cancelled, its outcome would be about the old). An edit after a
        run ended is the draft of the next run: the bar shows it as ready or not."""
        for kind in ("model", "data"):
            state = getattr(self, f"{kind}_state")
            if state == "failed" and kind not in self.session.load_errors:
                setattr(self, f"{kind}_state", "none")
            elif state == "loading" and not self.session.is_current(kind, self._loading[kind]):
                self.workers.cancel_group(self, kind)
                setattr(self, f"{kind}_state", "none")
        if self.run_state.ended and self._draft() != self._ended_with:
            self.run_state = RunState.IDLE
        self.session.touch()
        self.session_version = self.session.version

    def _draft(self) -> tuple:
        return self.session.config, dict(self.session.invalid)

    # ---- the run (started and followed by RunFollowing) -------------------------------------------
    def on_run_state_changed(self, message: RunStateChanged) -> None:
        """The one place that sets `run_state`. A run that ended needs no controller. An attached
        run's first state comes with its history: the warm-up can start."""
        state = message.state
        if state != RunState.IDLE:
            self.call_after_refresh(self._start_warm_up)  # once the run is drawn
        if state.ended:
            self._ended_with = self._draft()
            if self.followed is not None:
                self.followed.release()
        self.run_state = state

    def _training_ended(self, state: WorkerState) -> None:
        """The in-process engine's thread ended: a failure it did not report itself fails the run;
        a quit that waited for the stop goes on."""
        if state == WorkerState.ERROR and (self._sink is None or self._sink.failed is None):
            self.post_message(RunStateChanged(RunState.FAILED))
        if self._quit_when_stopped:
            self.exit()

    # ---- actions ------------------------------------------------------------------------------
    def action_go(self, name: str) -> None:
        self.switch_mode(name)

    def get_key_display(self, binding: Binding) -> str:
        """Textual's short form for the footer (`^l`), with function keys as people write them (F1)."""
        display = super().get_key_display(binding)
        return display.upper() if display[:1] == "f" and display[1:].isdigit() else display

    def notify(self, message: str, *, title: str = "", markup: bool = False, **kwargs) -> None:
        """Every notification (a screen's and a widget's come here too, with markup=True unless they
        say otherwise) with its control characters escaped and no markup read from it: many name a
        run folder, a path or an engine's message, which files chose. None of sft-tui's uses markup."""
        del markup
        super().notify(safe_text(message), title=safe_text(title, one_line=True), markup=False, **kwargs)

    def action_help(self) -> None:
        from sft_tui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """q and ctrl+q: quit at once, unless that loses something. While a run trains, ask whether to
        leave it training; with edits of the draft that no file or run keeps, whether to drop them
        (a `q` typed where a letter is a key quit and lost steps 1-4's work)."""
        run = self.followed
        if run is None or not self.run_state.live:
            if question := self._quit_question():
                from sft_tui.screens.dialogs import ConfirmDialog

                self.push_screen(ConfirmDialog(question, yes="Quit without saving", no="Cancel"),
                                 lambda yes: self._quit_now() if yes else None)
                return
            self._quit_now()
            return
        from sft_tui.screens.dialogs import QuitDialog

        name = run.paths.root.name if run.paths is not None else "the run"
        self.push_screen(QuitDialog(name, in_process=run.in_process, controls=run.controls,
                                    paused=self.run_state == RunState.PAUSED), self._quit_answer)

    def _quit_question(self) -> str:
        """What quitting now would lose, as a question, or "" when it loses nothing: the draft's
        edits that no file or run keeps, and what a step's form shows but has not applied (a
        model id typed, a data path not loaded yet), which ctrl+s would not save either."""
        from sft_tui.screens.base import StepScreen

        unapplied = [text for stack in self._screen_stacks.values() for screen in stack
                     if isinstance(screen, StepScreen) and screen.is_mounted and (text := screen.unapplied())]
        lost = []
        if self.session.unsaved:
            lost.append("The draft's edits (model, data, freeze map, settings) are not saved: Cancel, then ctrl+s "
                        "saves them as YAML, which `sft-tui FILE.yaml` opens again.")
        if unapplied:
            lost.append(f"Typed but not applied: {', '.join(unapplied)}.")
        return " ".join(["Quit sft-tui?", *lost]) if lost else ""

    def _quit_now(self) -> None:
        self._leave_run()
        self.exit()

    def _quit_answer(self, choice: str) -> None:
        run = self.followed
        if choice == "cancel" or run is None:
            return
        if choice == "stop":
            run.send("stop")
            if run.in_process and self.run_state.live:  # its thread dies with the app: quit once it has saved
                self._quit_when_stopped = True
                self.post_message(RunStateChanged(RunState.STOPPING))
                self.notify("stopping: the app quits once the checkpoint is saved", timeout=60)
                return
        self._leave_run()
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's commands, then every key of the app and of the current step that applies now,
        once each: titled by what it does and the key in effect, described by its tooltip (or by
        nothing: a description that repeats the title says nothing). Textual's own "Quit" stands
        for the quit keys; its "Keys" panel gives way to the help screen, which knows the keymap."""
        from sft_tui.keymap import declared_bindings, effective_keys, keys_label

        titles = set()
        for command in super().get_system_commands(screen):
            if command.title != "Keys":
                titles.add(command.title)
                yield command
        for target in (self, screen):
            for binding in declared_bindings(type(target)):
                _, name, parameters = parse_action(binding.action)
                if (not binding.description or binding.description in titles or name == "command_palette"
                        or not target.check_action(name, parameters)):
                    continue
                titles.add(binding.description)
                yield SystemCommand(f"{binding.description}  ({keys_label(effective_keys(binding, self.keymap))})",
                                    binding.tooltip, _runner(target, binding.action))

    # ---- workers and log records ---------------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where the failure of a worker becomes an error dialog; every worker runs
        on the app so that its end arrives here. The end of the training worker ends the run."""
        worker = event.worker
        if worker.group == "train" and worker.is_finished:
            self._training_ended(event.state)
        if event.state != WorkerState.ERROR or worker.group == "warm-up":
            return
        from sft_tui.screens.dialogs import ErrorDialog

        app_log = Path(self.session.config.output.runs_dir) / APP_ERROR_LOG
        run = self._sink if worker.group == "train" else None
        if run is None:
            dialog = ErrorDialog.for_error("Error", worker.error, app_log, f"{worker.name or worker.group} failed")
        elif run.failed is not None:  # the engine's own account: the train screen has shown it
            return
        else:  # a failure before the engine's handling: a bad resume folder, a crash in the worker
            log = RunPaths(Path(run.started.run_dir)).error_log if run.started is not None else app_log
            dialog = ErrorDialog.for_error("Training failed", worker.error, log,
                                           "training failed before the engine's handling")
        self.push_screen(dialog)

    def on_engine_event(self, message: EngineEvent) -> None:
        """Log records from any thread of this process (an in-process engine, transformers,
        datasets) arrive here through the app's logging handler: they are kept for the train
        screen's log pane, which watches `log_count`. (The train screen takes the run's other
        events itself, and a detached run's log records with them.)"""
        event = message.event
        if event.type == "log":
            self.log_lines.append((event.level, event.logger, event.message))
            del self.log_lines[:-LOG_KEEP]
            self.log_count += 1


def _runner(target, action: str):
    async def run() -> None:
        await target.run_action(action)

    return run


class _NoWaitExecutor(ThreadPoolExecutor):
    """The event loop's executor for thread workers, whose shutdown does not wait for them."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def create_app(config_path: str | Path | None = None, task: str = "classification", *,
               attach: str | Path | None = None, in_process: bool = False,
               keymap: dict[str, str] | None = None) -> SftApp:
    """The one factory of the app, for the command line, the tests and the screenshot script.

    Without a config it opens on the bundled demo of `task`, so Enter-Enter-Enter reaches training.
    With `attach` (a run folder) it opens on step 5 following that run. `in_process`: runs train in
    a thread of the app instead of an engine process of their own. `keymap`: binding id -> keys
    over the defaults (sft_tui.keymap.load_keymap reads the user's file).
    """
    attached = Path(attach) if attach is not None and RunPaths(Path(attach)).config.is_file() else None
    run = attached or _run_of_config(config_path)  # (a run just started may not have written it yet)
    source = str(RunPaths(run).config if run is not None else config_path)
    if run is not None:  # the draft of a new run: the run's own name and file stay the run's
        from core.lineage import variant_config

        config, config_path = variant_config(run), None
    else:
        config = load_config(config_path) if config_path else example_config(task)
    config, note = untrusted(config, source)
    app = SftApp(Session(config, Path(config_path) if config_path else None),
                 attach=Path(attach) if attach is not None else None, in_process=in_process, keymap=keymap)
    app.startup_note = note
    return app


def _run_of_config(config_path: str | Path | None) -> Path | None:
    """The run folder whose own config.yaml `config_path` is, if it is one. As the draft's file it
    named the run's folder (Start refused: it holds a run) and ctrl+s offered to overwrite it, which
    a resume then refuses as a changed config."""
    if config_path is None:
        return None
    paths = RunPaths(Path(config_path).resolve().parent)
    return paths.root if Path(config_path).name == paths.config.name and paths.events.is_file() else None
