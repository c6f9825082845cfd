"""The Textual app: five steps of a draft run (model, data, freeze map, hyperparameters, train)
that the user visits in any order with the number keys, around one Session.

Importing this module must stay cheap: torch and transformers load in a worker after the first
screen is drawn (see `warm_up`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from core.config import RunConfig, example_config, load_config
from core.logs import ROUTED_LOGGERS, EventLogHandler
from sft_tui.messages import EngineEvent
from sft_tui.session import Session
from sft_tui.worker import PostingSink, load_data, load_model_info, warm_up

STEPS = [("model", "Model"), ("data", "Data"), ("freeze", "Freeze"), ("hyper", "Hyper"), ("train", "Train")]


def _screen(name: str):
    """Screens are imported when first shown, so start-up imports only the first one."""

    def make() -> Screen:
        from sft_tui.screens import SCREENS

        return SCREENS[name]()

    return make


class SftApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "sft-tui"
    MODES = {name: _screen(name) for name, _ in STEPS}
    BINDINGS = [
        *(Binding(str(i), f"go('{name}')", label, id=f"go-{name}") for i, (name, label) in enumerate(STEPS, 1)),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit_app", "Quit", id="quit"),
    ]

    session_version: reactive[int] = reactive(0)
    """Bumped whenever the Session changes; widgets that summarise the draft watch it."""
    run_state: reactive[str] = reactive("idle")
    """idle, running, paused, stopping, finished or failed: shown in the draft bar."""
    log_count: reactive[int] = reactive(0)
    """Number of log lines received so far; the train screen's log pane watches it."""
    model_state: reactive[str] = reactive("none")
    """none, loading, ready or failed: the model structure and tokenizer in session.model."""
    data_state: reactive[str] = reactive("none")
    """none, loading, ready or failed: the tokenized data in session.data."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.control = None  # core.control.Control of the live run
        self.log_lines: list[tuple[str, str, str]] = []  # (level, logger, message), for the train screen
        self._log_handler = EventLogHandler(PostingSink(self))

    # ---- start-up and shutdown ----------------------------------------------------------------
    def on_mount(self) -> None:
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).addHandler(self._log_handler)
        logging.getLogger("core").setLevel(logging.INFO)
        self.switch_mode("model")
        self.run_worker(self._warm_up, thread=True, name="warm-up", group="warm-up", exit_on_error=False)

    def _warm_up(self) -> None:
        self.call_from_thread(self._cuda_known, warm_up())

    def _cuda_known(self, cuda: bool) -> None:
        self.session.cuda = cuda
        self.changed()

    def on_unmount(self) -> None:
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).removeHandler(self._log_handler)

    def changed(self) -> None:
        """Tell the summary widgets that the Session changed. A failed load whose error the change
        dropped (its settings changed) is no longer failed: nothing is loaded for the new ones."""
        for kind in ("model", "data"):
            if getattr(self, f"{kind}_state") == "failed" and kind not in self.session.load_errors:
                setattr(self, f"{kind}_state", "none")
        self.session.touch()
        self.session_version = self.session.version

    # ---- loading the model structure and the data (thread workers) ---------------------------
    def load_model(self) -> None:
        """(Re)load the configured model's structure and tokenizer; session.model when done."""
        self.model_state = "loading"
        config = self.session.config
        labels = self.session.data.labels if self.session.data is not None else None
        self.run_worker(lambda: self._load("model", config, lambda: load_model_info(config, labels)),
                        thread=True, exclusive=True, group="model", exit_on_error=False)

    def load_data(self) -> None:
        """(Re)tokenize the configured data; loads the model's tokenizer first when needed."""
        self.data_state = "loading"
        config, model = self.session.config, self.session.model

        def work():
            info = model if model is not None and model.task == config.task else load_model_info(config)
            return info, load_data(config, info)

        self.run_worker(lambda: self._load("data", config, work), thread=True, exclusive=True, group="data",
                        exit_on_error=False)

    def _load(self, what: str, config: RunConfig, work) -> None:
        """Run a load of `config` in this worker and hand its result or its error to the UI thread."""
        from core.errors import UserError

        worker = get_current_worker()
        try:
            result = work()
        except UserError as err:
            if not worker.is_cancelled:
                self.call_from_thread(self._load_failed, what, config, err.message, err.hint)
            return
        except Exception as err:  # a bug: the state must not stay "loading"; the dialog shows it
            self.call_from_thread(self._load_failed, what, config, f"{type(err).__name__}: {err}", "")
            raise
        if worker.is_cancelled:  # a newer load replaced this one while it ran: its result is stale
            return
        self.call_from_thread(self._model_ready if what == "model" else self._data_ready, result)

    def _load_failed(self, what: str, config: RunConfig, message: str, hint: str) -> None:
        """The error becomes one of the session's problems; one about settings changed meanwhile
        leaves nothing loaded for the current ones."""
        failed = self.session.load_failed(what, config, message, hint)
        setattr(self, f"{what}_state", "failed" if failed else "none")
        self.changed()

    def _model_ready(self, info) -> None:
        self.session.load_succeeded("model")
        self.session.model = info
        self.model_state = "ready"
        self.changed()

    def _data_ready(self, result) -> None:
        info, data = result
        self.session.load_succeeded("data")
        self.session.data = data
        self.data_state = "ready"
        if info.labels != data.labels:
            self.load_model()  # the classification head is sized from the data's labels
        elif self.session.model is not info:
            self._model_ready(info)
        self.changed()

    # ---- actions ------------------------------------------------------------------------------
    def action_go(self, name: str) -> None:
        self.switch_mode(name)

    def action_help(self) -> None:
        from sft_tui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    async def action_quit_app(self) -> None:
        if self.run_state in ("running", "paused", "stopping"):
            from sft_tui.screens.dialogs import ConfirmDialog

            def answer(stop: bool | None) -> None:
                if stop:
                    if self.control is not None:
                        self.control.stop()
                    self.exit()

            self.push_screen(ConfirmDialog("A run is still training. Stop it (a checkpoint is saved) and quit?",
                                           yes="Stop and quit", no="Keep training"), answer)
            return
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key binding of the app and of the current screen is a palette command too."""
        yield from super().get_system_commands(screen)
        seen = set()
        for bindings in (self.BINDINGS, getattr(screen, "BINDINGS", [])):
            for binding in bindings:
                if not isinstance(binding, Binding) or not binding.description or binding.action in seen:
                    continue
                seen.add(binding.action)
                target = self if bindings is self.BINDINGS else screen
                yield SystemCommand(f"{binding.description} [{binding.key}]",
                                    binding.tooltip or binding.description,
                                    _runner(target, binding.action))

    # ---- workers and engine events -------------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where an unexpected worker failure becomes an error dialog."""
        if event.state != WorkerState.ERROR or event.worker.group == "warm-up":
            return
        from core.errors import UserError
        from sft_tui.screens.dialogs import ErrorDialog

        error = event.worker.error
        if isinstance(error, UserError):
            self.push_screen(ErrorDialog("Error", error.message, error.hint))
        else:
            from sft_tui.error_log import APP_ERROR_LOG, write_traceback

            log_file = write_traceback(error, Path(self.session.config.output.runs_dir) / APP_ERROR_LOG,
                                       f"{event.worker.name or event.worker.group} failed")
            self.push_screen(ErrorDialog("Unexpected error", f"{type(error).__name__}: {error}",
                                         "the app keeps running; this looks like a bug, please report it"
                                         + (" with the traceback" if log_file else ""),
                                         f"traceback: {log_file}" if log_file else ""))

    def on_engine_event(self, message: EngineEvent) -> None:
        """Log records from any thread (engine, transformers, datasets) arrive here as LogMessage
        events; they are kept for the train screen's log pane, which watches `log_count`."""
        event = message.event
        if event.type == "log":
            self.log_lines.append((event.level, event.logger, event.message))
            del self.log_lines[:-1000]
            self.log_count += 1


def _runner(target, action: str):
    async def run() -> None:
        await target.run_action(action)

    return run


def create_app(config_path: str | Path | None = None, task: str = "classification") -> SftApp:
    """The one factory of the app, for the command line, the tests and the screenshot script.

    Without a config it opens on the bundled demo of `task`, so Enter-Enter-Enter reaches training.
    """
    config: RunConfig = load_config(config_path) if config_path else example_config(task)
    return SftApp(Session(config, Path(config_path) if config_path else None))
