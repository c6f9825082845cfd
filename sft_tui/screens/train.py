"""Step 5: start (or resume) the draft run and watch it train; the results and a "try it" box after.

The app runs the engine in a thread worker (SftApp.start_run) that reports to this screen: every
engine event arrives here as an EngineEvent message, on the UI thread, and updates one widget; the
ones that change the run's state are passed on to the app as RunStateChanged. Commands go the other
way through the run's core.control.Control (pause, stop, save now, evaluate now), which the engine
polls between optimizer steps. A failed run's dialog is the app's: it opens when the worker ends.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, ContentSwitcher, Static

from core.events import (CheckpointSaved, EvalResult, Paused, Resumed, RunFailed, RunFinished, RunStarted,
                         SampleGenerated, StepMetrics)
from core.runs import latest_resumable, open_run, resume_problem
from sft_tui.format.numbers import format_duration
from sft_tui.messages import EngineEvent, RunState, RunStateChanged
from sft_tui.screens.base import StepScreen
from sft_tui.screens.dialogs import PathDialog
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

    def _redraw_setup(self, _value=None) -> None:
        self.query_one(SetupPanel).redraw(self.session, self.live)
        self.refresh_bindings()

    def _set_state(self, state: RunState) -> None:
        self.post_message(RunStateChanged(state))

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
            return self.live and self.app.control is not None
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
        self._launch()

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
        self.app.push_screen(dialog, lambda folder: folder and self._launch(resume_dir=str(folder)))

    def _launch(self, resume_dir: str | None = None) -> None:
        """Have the app start the run, reporting here; the views start empty."""
        self.run_dir = None
        self._reset_views()
        self.query_one(ContentSwitcher).current = "run"
        self.app.start_run(self, resume_dir)

    def _reset_views(self) -> None:
        self.remove_class("-finished")
        self.query_one(ResultsPanel).reset()
        self.query_one(TrainCharts).reset()
        self.query_one(EvalTable).reset()
        self.query_one(RunStats).reset()
        self.query_one(RunProgress).show(0, None, "starting: loading the model and the data…")
        samples = self.query_one("#samples", Static)
        samples.update("")
        samples.display = False

    # ---- commands to the live run -------------------------------------------------------------
    def action_pause(self) -> None:
        control = self.app.control
        if control is None or self.app.run_state == RunState.STOPPING:
            return
        if control.paused:
            control.resume()
            self._set_state(RunState.RUNNING)
        else:
            control.pause()
            self._set_state(RunState.PAUSED)
            self.notify("pausing after the current step (p resumes)")

    def action_stop(self) -> None:
        if self.app.control is not None:
            self.app.control.stop()
            self._set_state(RunState.STOPPING)
            self.notify("stopping after the current step; a checkpoint is saved")

    def action_save_now(self) -> None:
        if self.app.control is not None:
            self.app.control.save_now()
            self.notify("a checkpoint is saved after the current step")

    def action_eval_now(self) -> None:
        if self.app.control is not None:
            self.app.control.eval_now()
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
        """One handler per event type (log records come the app's way, see SftApp.on_engine_event)."""
        message.stop()
        handler = getattr(self, f"_on_{message.event.type}", None)
        if handler is not None:
            handler(message.event)

    def _on_run_started(self, e: RunStarted) -> None:
        self.run_dir, self.run_task = e.run_dir, e.task
        self.query_one(ContentSwitcher).current = "run"
        resumed = f" · resumed at step {e.resumed_from_step}" if e.resumed_from_step else ""
        share = 100 * e.trainable_params / max(e.total_params, 1)
        self._log(f"run {e.run_id} started: {e.trainable_params:,}/{e.total_params:,} parameters trainable "
                  f"({share:.1f}%) · {e.train_rows} train / {e.validation_rows} validation rows · {e.device} "
                  f"{e.precision}{resumed}", "bold")
        self.query_one(RunProgress).show(e.resumed_from_step, e.planned_steps, self._step_label(
            e.resumed_from_step, e.planned_steps, 0.0, None))
        self.query_one("#samples").display = e.task == "causal-lm"

    def _on_step(self, e: StepMetrics) -> None:
        bar = self.query_one(RunProgress)
        bar.show(e.step, bar.total, self._step_label(e.step, bar.total, e.epoch, e.eta_s))
        self.query_one(TrainCharts).add_step(e.step, e.loss, e.lr)
        self.query_one(RunStats).show_step(e)

    @staticmethod
    def _step_label(step: int, total: int | None, epoch: float, eta_s: float | None) -> str:
        return f"step {step}/{total or step} · epoch {epoch:.2f} · ETA {format_duration(eta_s)}"

    def _on_eval(self, e: EvalResult) -> None:
        self.query_one(EvalTable).add_result(e)
        if "loss" in e.metrics:
            self.query_one(TrainCharts).add_eval(e.step, e.metrics["loss"])

    def _on_sample(self, e: SampleGenerated) -> None:
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

    def _on_checkpoint(self, e: CheckpointSaved) -> None:
        self._log(f"checkpoint step-{e.step} saved: {e.path}", "green")

    def _on_paused(self, e: Paused) -> None:
        self._log(f"paused at step {e.step}", "yellow")
        if self.app.run_state == RunState.RUNNING:
            self._set_state(RunState.PAUSED)

    def _on_resumed(self, e: Resumed) -> None:
        self._log(f"resumed at step {e.step}", "yellow")
        if self.app.run_state == RunState.PAUSED:
            self._set_state(RunState.RUNNING)

    def _on_run_finished(self, e: RunFinished) -> None:
        if e.reason == "stopped" and e.last_checkpoint:
            self.resumable = self.run_dir
        bar = self.query_one(RunProgress)
        bar.show(e.step, bar.total,
                 f"step {e.step}/{bar.total or e.step} · {e.reason} in {format_duration(e.elapsed_s)}")
        self.query_one(TrainCharts).redraw()
        self.query_one(ResultsPanel).show_run(e, self.run_dir or "", self.run_task)
        self.add_class("-finished")
        self._log(f"run {e.reason} at step {e.step}" + (f"; model saved to {e.output_path}" if e.output_path else ""),
                  "bold")
        self._set_state(RunState.FINISHED)

    def _on_run_failed(self, e: RunFailed) -> None:
        if e.last_checkpoint:
            self.resumable = self.run_dir
        self._log(f"run failed: {e.message}" + (f" (traceback in {e.log_file})" if e.log_file else ""), "bold red")
        self._set_state(RunState.FAILED)

    # ---- the log pane -------------------------------------------------------------------------
    def _show_new_log_lines(self, count: int) -> None:
        """app.log_lines keeps the last 1000 lines; show those this pane has not shown yet."""
        new = min(count - self._log_seen, len(self.app.log_lines))
        self._log_seen = count
        for level, logger, message in self.app.log_lines[len(self.app.log_lines) - new:] if new > 0 else []:
            self._log(f"{level} {logger}: {message}", LOG_STYLES.get(level, "dim"))

    def _log(self, line: str, style: str = "") -> None:
        self.query_one(RunLog).add(Text(line, style=style))


def _check_resumable(path: Path) -> None:
    """For the resume dialog: a folder that is no run, a completed run or one without a complete
    checkpoint is refused in the dialog (UserError), not after a start."""
    paths, _ = open_run(path)
    if problem := resume_problem(paths):
        raise problem
