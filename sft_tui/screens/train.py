"""Step 5: start (or resume) the draft run and watch it train; the results and a "try it" box after.

The app follows one run at a time (SftApp.launch_run, SftApp.attach_run): a detached engine's
events.jsonl read by a thread worker, or an engine in a thread of the app. Either way its events
arrive here as messages, on the UI thread: the run's history with RunFollowed, then EngineEvent one
by one or EngineEvents in batches. A batch is applied in one screen update: each event's handler
records what changed, and `_flush` draws it once, so attaching to a long run costs one drawing of
each pane, not one per event. Changes of the run's state go to the app as RunStateChanged; commands
go the other way through the app's RunClient (pause, resume, stop, save now, evaluate now), and
the state follows the engine's answers.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, ContentSwitcher, Static

from core.errors import UserError
from core.events import (CheckpointSaved, EvalResult, LogMessage, Paused, Resumed, RunFailed, RunFinished,
                         RunStarted, SampleGenerated, StepMetrics)
from core.runs import RunPaths, latest_resumable, open_run, resume_problem
from sft_tui.detach import live_engine_problem
from sft_tui.format.numbers import format_duration
from sft_tui.messages import EngineEvent, EngineEvents, EngineGone, RunFollowed, RunState, RunStateChanged
from sft_tui.screens.base import StepScreen
from sft_tui.screens.dialogs import ConfirmDialog, ErrorDialog, PathDialog
from sft_tui.widgets.train.charts import TrainCharts
from sft_tui.widgets.train.evals import EvalTable
from sft_tui.widgets.train.log import RunLog
from sft_tui.widgets.train.progress import RunProgress
from sft_tui.widgets.train.results import ResultsPanel
from sft_tui.widgets.train.setup import SetupPanel
from sft_tui.widgets.train.stats import RunStats

LOG_STYLES = {"warning": "yellow", "error": "bold red", "critical": "bold red"}


class TrainScreen(StepScreen):
    STEP = "train"
    CSS_PATH = "train.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("s", "start", "Start", id="train-start"),
        Binding("enter", "start_from_setup", "Start training (setup view)", show=False, id="train-start-enter"),
        Binding("R", "resume_run", "Resume a run", id="train-resume-run"),
        Binding("p", "pause", "Pause/resume", id="train-pause"),
        Binding("s", "stop", "Stop & save", id="train-stop"),
        Binding("c", "save_now", "Checkpoint now", id="train-save-now"),
        Binding("e", "eval_now", "Evaluate now", id="train-eval-now"),
        Binding("v", "toggle_view", "Setup/run view", id="train-toggle-view"),
        Binding("t", "try_it", "Try the model", id="train-try-it"),
        Binding("y", "copy_snippet", "Copy load snippet", id="train-copy-snippet"),
        Binding("escape", "leave_box", "Leave the text box", show=False, id="train-leave-box"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run_dir: str | None = None
        self.run_task: str = ""
        self.resumable: str | None = None
        """Run folder of the last run this session stopped or lost with a checkpoint: R's default."""
        self._log_seen = 0
        self._attached = False
        """The followed run trained before the app followed it: its state comes from its history."""
        self._final: RunFinished | RunFailed | None = None
        """How the run's latest start ended; None while it trains (or crashed)."""
        self._final_in_history = False
        self._paused = False
        self._history = False
        # what the events of a batch changed, drawn once by _flush:
        self._state: RunState | None = None
        self._bar: tuple[int, int | None, str] | None = None
        self._stats: StepMetrics | None = None
        self._sample: SampleGenerated | None = None
        self._log_texts: list[Text] = []
        self._evals_added = False
        self._total: int | None = None
        """The planned steps of the run's latest start."""

    def compose_body(self) -> ComposeResult:
        with ContentSwitcher(initial="setup", id="train-views"):
            with VerticalScroll(id="setup"):
                yield SetupPanel(id="setup-panel")
            with Vertical(id="run"):
                yield RunProgress(id="progress")
                with Horizontal(id="top"):
                    yield TrainCharts(id="charts")
                    yield EvalTable(id="evals")
                with Horizontal(id="bottom"):
                    yield RunStats(id="stats")
                    yield ResultsPanel(id="results")
                    with Vertical(id="samples-log"):
                        yield Static(id="samples", markup=False)
                        yield RunLog(id="log")

    def on_mount(self) -> None:
        self._charts, self._evals = self.query_one(TrainCharts), self.query_one(EvalTable)  # per event: no query
        self.query_one("#evals").border_title = "eval"
        self.query_one("#stats").border_title = "throughput / memory"
        self.query_one("#samples").border_title = "samples"
        self.query_one("#log").border_title = "log"
        self.query_one("#results").border_title = "results"
        self.watch(self.app, "session_version", self._redraw_setup)
        self.watch(self.app, "run_state", self._redraw_setup)
        self.watch(self.app, "log_count", self._show_new_log_lines)
        self.query_one("#samples").display = False

    # ---- the draft and the state ------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.app.run_state.live

    @property
    def controls(self) -> bool:
        """This app may command the live run (it is no viewer of a run another client controls)."""
        return self.live and self.app.followed is not None and self.app.followed.controls

    def _redraw_setup(self, _value=None) -> None:
        self.query_one(SetupPanel).redraw(self.session, self.live)
        self.refresh_bindings()

    def _set_state(self, state: RunState) -> None:
        """The run's state after this batch (sent to the app by _flush); live events only."""
        if not self._history:
            self._state = state

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys that don't apply now are hidden; Start shows greyed out while the draft has problems."""
        has_run = self.run_dir is not None
        if action == "start_from_setup":  # after a run, Enter must not start the next one by accident
            return not self.live and self.query_one(ContentSwitcher).current == "setup"
        if action == "start":
            return False if self.live else None if self.session.problems() else True
        if action == "resume_run":
            return not self.live
        if action in ("pause", "stop", "save_now", "eval_now"):
            return self.controls
        if action == "toggle_view":
            return has_run and not self.live
        if action in ("copy_snippet", "try_it"):
            return self.query_one(ResultsPanel).snippet is not None and not self.live
        return True

    # ---- starting a run ---------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "resume":
            self.action_resume_run()

    def action_start(self) -> None:
        if self.live:
            return
        if problems := self.session.problems():
            self.notify(f"fix first: {', '.join(problems)} (listed above the Start button)",
                        title="Cannot start yet", severity="warning", markup=False)
            return
        self.app.launch_run()

    def action_start_from_setup(self) -> None:
        """Enter on the setup view: starts, or says what keeps Start disabled (s is greyed out then)."""
        self.action_start()

    def action_resume_run(self) -> None:
        if self.live:
            return
        default = self.resumable or latest_resumable(self.session.config.output.runs_dir) or ""
        dialog = PathDialog("Resume a run", "Resume", str(default), _check_resumable, placeholder="runs/<run-id>",
                            explanation="Run folder to continue: training goes on from its newest checkpoint, "
                                        "with the config the run was started with.")
        self.app.push_screen(dialog, self._resume_chosen)

    def _resume_chosen(self, folder: Path | None) -> None:
        """A run that trains now gets no second trainer: the user is offered to follow it instead."""
        if not folder:
            return
        if problem := live_engine_problem(RunPaths(folder)):
            question = f"{problem.message}: a second trainer would corrupt it. Follow it here instead?"
            self.app.push_screen(ConfirmDialog(question, yes="Attach", no="Cancel"),
                                 lambda attach: attach and self.app.attach_run(Path(folder)))
        else:
            self.app.launch_run(resume_dir=Path(folder))

    def on_run_followed(self, message: RunFollowed) -> None:
        """The app follows a new run: the panes start empty."""
        message.stop()
        self.run_dir, self._attached = message.run_dir, message.training
        self._final, self._final_in_history, self._paused = None, False, False
        self._clear_panes()
        self.query_one(RunProgress).show(0, None, "attaching: reading the run's history…" if message.attached
                                         else "starting: loading the model and the data…")
        self.query_one(ContentSwitcher).current = "run"
        if message.controller is not None:
            note = (f"{message.controller.describe()} controls this run: this app views it, and its "
                    "pause, stop, checkpoint and eval keys are off")
            self._log(note, "yellow")
            self.notify(note, title="Viewing", markup=False)
        self.apply(message.history, history=True)

    def _clear_panes(self) -> None:
        self.remove_class("-finished")
        self.query_one(ResultsPanel).reset()
        self._charts.reset()
        self._evals.reset()
        self.query_one(RunStats).reset()
        self._stats = self._sample = None
        samples = self.query_one("#samples", Static)
        samples.update("")
        samples.display = False

    # ---- commands to the live run -------------------------------------------------------------
    def action_pause(self) -> None:
        state = self.app.run_state
        if not self.controls or state == RunState.STOPPING:
            return
        if state == RunState.PAUSED:
            self.app.followed.send("resume")
            self.notify("resuming")
        else:
            self.app.followed.send("pause")
            self.notify("pausing after the current step (p resumes)")

    def action_stop(self) -> None:
        if self.controls:
            self.app.followed.send("stop")
            self.post_message(RunStateChanged(RunState.STOPPING))
            self.notify("stopping after the current step; a checkpoint is saved")

    def action_save_now(self) -> None:
        if self.controls:
            self.app.followed.send("save")
            self.notify("a checkpoint is saved after the current step")

    def action_eval_now(self) -> None:
        if self.controls:
            self.app.followed.send("eval")
            self.notify("evaluating after the current step")

    def action_toggle_view(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        switcher.current = "setup" if switcher.current == "run" else "run"

    def action_try_it(self) -> None:
        self.query_one(ContentSwitcher).current = "run"
        self.query_one("#try-input").focus()

    def action_leave_box(self) -> None:
        self.set_focus(None)

    def action_copy_snippet(self) -> None:
        snippet = self.query_one(ResultsPanel).snippet
        if snippet:
            self.app.copy_to_clipboard(snippet)
            self.notify("load snippet copied to the clipboard")

    # ---- engine events ----------------------------------------------------------------------
    def on_engine_event(self, message: EngineEvent) -> None:
        """One event of an in-process run (its log records come the app's way, see SftApp.on_engine_event)."""
        message.stop()
        self.apply([message.event])

    def on_engine_events(self, message: EngineEvents) -> None:
        message.stop()
        if message.client is None or message.client is self.app.followed:  # not a run the app has left
            self.apply(message.events)

    def apply(self, events: list, history: bool = False) -> None:
        """Apply `events` in order (one handler per event type), then draw once. A run's `history`
        sets no state on its way: after it, a running run's state is the one it ends in."""
        self._history = history
        with self.app.batch_update():
            for event in events:
                handler = getattr(self, f"_on_{event.type}", None)
                if handler is not None:
                    handler(event)
            self._history = False
            if history and self._attached and self._final is None:
                self._set_state(RunState.PAUSED if self._paused else RunState.RUNNING)
            self._flush()

    def _on_run_started(self, e: RunStarted) -> None:
        """A new run starts empty; a resumed one keeps its history up to the step it resumes from
        (what came after was lost with the crash or stop, and is trained again)."""
        if e.resumed_from_step:
            self._charts.truncate(e.resumed_from_step)
            self._evals.truncate(e.resumed_from_step)
        else:
            self._clear_panes()
        self.remove_class("-finished")
        self.query_one(ResultsPanel).reset()
        self.run_dir, self.run_task = e.run_dir, e.task
        self._final, self._final_in_history, self._paused = None, False, False
        self.query_one(ContentSwitcher).current = "run"
        resumed = f" · resumed at step {e.resumed_from_step}" if e.resumed_from_step else ""
        share = 100 * e.trainable_params / max(e.total_params, 1)
        self._log(f"run {e.run_id} started: {e.trainable_params:,}/{e.total_params:,} parameters trainable "
                  f"({share:.1f}%) · {e.train_rows} train / {e.validation_rows} validation rows · {e.device} "
                  f"{e.precision}{resumed}", "bold")
        self._total = e.planned_steps
        self._bar = (e.resumed_from_step, e.planned_steps,
                     self._step_label(e.resumed_from_step, e.planned_steps, 0.0, None))
        self.query_one("#samples").display = e.task == "causal-lm"
        self._set_state(RunState.RUNNING)

    def _on_step(self, e: StepMetrics) -> None:
        self._bar = None  # the label is _stats', made once per batch
        self._stats = e
        self._charts.add_step(e.step, e.loss, e.lr)

    @staticmethod
    def _step_label(step: int, total: int | None, epoch: float, eta_s: float | None) -> str:
        return f"step {step}/{total or step} · epoch {epoch:.2f} · ETA {format_duration(eta_s)}"

    def _on_eval(self, e: EvalResult) -> None:
        self._evals.add_result(e)
        self._evals_added = True
        if "loss" in e.metrics:
            self._charts.add_eval(e.step, e.metrics["loss"])

    def _on_sample(self, e: SampleGenerated) -> None:
        self._sample = e

    def _on_checkpoint(self, e: CheckpointSaved) -> None:
        self._log(f"checkpoint step-{e.step} saved: {e.path}", "green")

    def _on_log(self, e: LogMessage) -> None:
        """A detached run's log records (an in-process run's reach the log pane the app's way)."""
        self._log(f"{e.level} {e.logger}: {e.message}", LOG_STYLES.get(e.level, "dim"))

    def _on_paused(self, e: Paused) -> None:
        self._log(f"paused at step {e.step}", "yellow")
        self._paused = True
        if (self._state or self.app.run_state) == RunState.RUNNING:
            self._set_state(RunState.PAUSED)

    def _on_resumed(self, e: Resumed) -> None:
        self._log(f"resumed at step {e.step}", "yellow")
        self._paused = False
        if (self._state or self.app.run_state) == RunState.PAUSED:
            self._set_state(RunState.RUNNING)

    def _on_run_finished(self, e: RunFinished) -> None:
        self._final, self._final_in_history = e, self._history
        if e.reason == "stopped" and e.last_checkpoint:
            self.resumable = self.run_dir
        total = self._total
        self._bar = (e.step, total, f"step {e.step}/{total or e.step} · {e.reason} in {format_duration(e.elapsed_s)}")
        self._charts.flush(force=True)
        self.query_one(ResultsPanel).show_run(e, self.run_dir or "", self.run_task)
        self.add_class("-finished")
        self._log(f"run {e.reason} at step {e.step}" + (f"; model saved to {e.output_path}" if e.output_path else ""),
                  "bold")
        self._set_state(RunState.FINISHED)

    def _on_run_failed(self, e: RunFailed) -> None:
        self._final, self._final_in_history = e, self._history
        if e.last_checkpoint:
            self.resumable = self.run_dir
        self._log(f"run failed: {e.message}" + (f" (traceback in {e.log_file})" if e.log_file else ""), "bold red")
        self._set_state(RunState.FAILED)
        if not self._history and self.app.followed is not None:
            self.app.push_screen(ErrorDialog.for_run_failed(e))

    def on_engine_gone(self, message: EngineGone) -> None:
        """The detached engine has ended. With a final event it ended as that says (an attached run
        that had ended is shown, and said to be not training); without one it crashed, or never
        started: the user is told so, and how to resume."""
        message.stop()
        if message.client is not None and message.client is not self.app.followed:
            return
        final = self._final
        if final is not None:
            self.post_message(RunStateChanged(RunState.FAILED if isinstance(final, RunFailed) else RunState.FINISHED))
            if self._final_in_history:
                how = final.reason if isinstance(final, RunFinished) else f"failed: {final.message}"
                self.notify(f"run {self.run_dir} is not training: it ended at step {final.step} ({how})",
                            title="Not training", markup=False)
            return
        if message.engine_log is not None:
            log = RunPaths(self.run_dir).engine_log if self.run_dir else "engine.log"
            dialog = ErrorDialog("The engine did not start", message.engine_log or "(it wrote nothing)",
                                 f"its whole output is in {log}")
            self._log("the engine ended before its first event: " + (message.engine_log or "no output"), "bold red")
        else:
            problem = message.problem or UserError(f"run {self.run_dir}: its engine ended without a final event",
                                                   "R resumes it from its last checkpoint")
            dialog = ErrorDialog("Training crashed", problem.message,
                                 f"{problem.hint.strip()} (or R on this screen)")
            self.resumable = self.run_dir
            bar = self.query_one(RunProgress)
            self._bar = (bar.progress, bar.total, f"step {bar.progress}/{bar.total or bar.progress} · crashed")
            self._log(f"{problem.message}; {problem.hint.strip()}", "bold red")
        self.post_message(RunStateChanged(RunState.FAILED))
        self.app.push_screen(dialog)
        self._flush()

    def _flush(self) -> None:
        """Draw what the events applied since the last flush changed, once each."""
        if self._stats is not None:
            e = self._stats
            self.query_one(RunStats).show_step(e)
            if self._bar is None:
                self._bar = (e.step, self._total, self._step_label(e.step, self._total, e.epoch, e.eta_s))
            self._stats = None
        if self._bar is not None:
            self.query_one(RunProgress).show(*self._bar)
            self._bar = None
        self._charts.flush()
        if self._evals_added:
            self._evals.move_cursor(row=self._evals.row_count - 1)
            self._evals_added = False
        if self._sample is not None:
            self._show_sample(self._sample)
            self._sample = None
        if self._log_texts:
            self.query_one(RunLog).add(self._log_texts)
            self._log_texts = []
        if self._state is not None:
            self.post_message(RunStateChanged(self._state))
            self._state = None

    def _show_sample(self, e: SampleGenerated) -> None:
        samples = self.query_one("#samples", Static)
        samples.border_title = f"samples at step {e.step}"
        text = Text()
        text.append("prompt ", style="dim")
        text.append(e.prompt + "\n")
        text.append("model  ", style="dim")
        text.append(e.output + "\n", style="bold")
        text.append("ref    ", style="dim")
        text.append(e.reference)
        samples.update(text)
        samples.display = True

    # ---- the log pane -------------------------------------------------------------------------
    def _show_new_log_lines(self, count: int) -> None:
        """app.log_lines keeps the last 1000 lines of the app's own process; show those this pane
        has not shown yet."""
        new = min(count - self._log_seen, len(self.app.log_lines))
        self._log_seen = count
        for level, logger, message in self.app.log_lines[len(self.app.log_lines) - new:] if new > 0 else []:
            self._log(f"{level} {logger}: {message}", LOG_STYLES.get(level, "dim"))
        self._flush()

    def _log(self, line: str, style: str = "") -> None:
        self._log_texts.append(Text(line, style=style))


def _check_resumable(path: Path) -> None:
    """For the resume dialog: a folder that is no run, a completed run or one without a complete
    checkpoint is refused in the dialog (UserError), not after a start. A run that trains now is
    let through: the dialog's caller offers to attach to it."""
    paths, _ = open_run(path)
    if live_engine_problem(paths) is None and (problem := resume_problem(paths)):
        raise problem
