"""How step 5 shows the run the app follows: its history, then its events as they come, in
batches drawn once each.

The app follows one run at a time (SftApp.launch_run, SftApp.attach_run): a detached engine's
events.jsonl read by a thread worker, or an engine in a thread of the app. Either way its events
arrive at the train screen as messages, on the UI thread: the run's history with RunFollowed, then
EngineEvent one by one or EngineEvents in batches, and EngineGone when a detached engine's process
ends. A batch is applied in one screen update: each event's handler records what changed, and
`_flush` draws it once, so attaching to a long run costs one drawing of each pane, not one per
event. Changes of the run's state go to the app as RunStateChanged.

Step reports are drawn at most once a second (STEP_DRAW_S), though a detached engine writes four
a second: each drawing repaints the progress bar, the stats and the learning-rate title, about
5 ms of the app's CPU, which on a small machine the engine's threads give up
(bench/app_vs_headless.py). A report that comes sooner waits for its second, on a timer; the end
of a run, a pause and a run's history are drawn at once.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import ContentSwitcher

from core.errors import UserError
from core.events import (CheckpointSaved, EvalResult, LogMessage, MicroBatchHalved, Paused, Resumed, RunFailed,
                         RunFinished, RunStarted, SampleGenerated, StepMetrics)
from core.plan import plan_steps
from core.runs import RunPaths, open_run
from sft_tui.format.numbers import format_duration
from sft_tui.format.safe import safe_text
from sft_tui.format.train import format_eta, untrained_head_note
from sft_tui.messages import (ControlTaken, EngineEvent, EngineEvents, EngineGone, RunFollowed, RunState,
                              RunStateChanged)
from sft_tui.screens.dialogs import ErrorDialog
from sft_tui.widgets.train.log import RunLog
from sft_tui.widgets.train.progress import RunProgress
from sft_tui.widgets.hyper.schedule import lr_curve
from sft_tui.widgets.train.charts import PLANNED_POINTS
from sft_tui.widgets.train.results import ResultsPanel
from sft_tui.widgets.train.samples import SamplesPanel
from sft_tui.widgets.train.stats import RunStats

STEP_DRAW_S = 1.0
"""Least time between two drawings of the step reports (the progress bar, the stats, the charts)."""

LOG_STYLES = {"warning": "yellow", "error": "bold red", "critical": "bold red"}


class RunEvents:
    """The train screen's part that applies a run's events (TrainScreen mixes it in; it reads the
    screen's `_charts`, `_evals` and `_stats_pane`, looked up at its mount)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
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
        self.pause_asked: bool | None = None
        """Whether the last pause key asked to pause (True) or resume, until the engine answers; None
        when it has (TrainScreen.action_pause)."""
        self._history = False
        self._total: int | None = None
        """The planned steps of the run's latest start."""
        # what the events of a batch changed, drawn once by _flush:
        self._state: RunState | None = None
        self._bar: tuple[int, int | None, str] | tuple[int, int | None, str, bool] | None = None
        self._stats: StepMetrics | None = None
        self._samples_added = False
        self._log_texts: list[Text] = []
        self._evals_added = False
        self._steps_drawn_at = 0.0
        self._step_timer = None
        """The timer that draws a step report that came within STEP_DRAW_S of the last drawing."""

    def _set_state(self, state: RunState) -> None:
        """The run's state after this batch (sent to the app by _flush); live events only."""
        if not self._history:
            self._state = state

    def on_run_followed(self, message: RunFollowed) -> None:
        """The app follows a new run: the panes start empty."""
        message.stop()
        self.run_dir, self._attached = message.run_dir, message.training
        self._final, self._final_in_history, self._paused, self._total = None, False, False, None
        self.pause_asked = None
        self._clear_panes()
        self.query_one(RunProgress).show(0, None, "attaching: reading the run's history…" if message.attached
                                         else "starting: loading the model and the data…")
        self.query_one(ContentSwitcher).current = "run"
        self.focus_panes()
        if message.controller is not None:
            note = (f"{message.controller.describe()} controls this run: this app views it, and its "
                    "pause, stop, checkpoint and eval keys are off")
            self._log(note, "yellow")
            self.notify(note, title="Viewing", markup=False)
        self.apply(message.history, history=True)
        if message.history and not message.attached:  # a resume: how the run ended before is not how it stands
            self._final = None
            self.remove_class("-finished")
            self.query_one(ResultsPanel).reset()
            self.query_one(RunProgress).show(0, None, "resuming from the last checkpoint: loading the model and the data…")

    def focus_panes(self) -> None:
        """Unless the focus is on the run view already, give it to its panes, so that the keys scroll
        them (PageDown, Home, End; Tab goes from pane to pane): where the terminal is too small for
        all of them, each is reached that way."""
        run = self.query_one("#run")
        if self.focused is None or run not in self.focused.ancestors:
            self.query_one("#panes").focus()

    def _clear_panes(self) -> None:
        self.remove_class("-finished")
        self.query_one(ResultsPanel).reset()
        self._charts.reset()
        self._evals.reset()
        self.query_one(RunStats).reset()
        self._stats, self._samples_added, self._steps_drawn_at = None, False, 0.0
        samples = self.query_one(SamplesPanel)
        samples.reset()
        samples.display = False

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
            self.query_one(SamplesPanel).truncate(e.resumed_from_step)
            self._samples_added = True
        else:
            self._clear_panes()
        self._charts.plan_lr(_planned_lr(e))
        self.remove_class("-finished")
        self.query_one(ResultsPanel).reset()
        self.run_dir, self.run_task = e.run_dir, e.task
        self._final, self._final_in_history, self._paused = None, False, False
        self.query_one(ContentSwitcher).current = "run"
        self.focus_panes()
        resumed = f" · resumed at step {e.resumed_from_step}" if e.resumed_from_step else ""
        share = 100 * e.trainable_params / max(e.total_params, 1)
        self._log(f"run {e.run_id} started: {e.trainable_params:,}/{e.total_params:,} parameters trainable "
                  f"({share:.1f}%) · {e.train_rows} train / {e.validation_rows} validation rows · {e.device} "
                  f"{e.precision}{resumed}", "bold")
        self._total = e.planned_steps
        self._bar = (e.resumed_from_step, e.planned_steps,
                     self._step_label(e.resumed_from_step, e.planned_steps, 0.0, format_duration(None)))
        self.query_one(SamplesPanel).display = e.task == "causal-lm"
        self._set_state(RunState.RUNNING)

    def _on_step(self, e: StepMetrics) -> None:
        self._bar = None  # the label is _stats', made once per batch
        self._stats = e
        self._stats_pane.add_step(e)
        self._charts.add_step(e.step, e.loss, e.lr)

    def _ended_bar(self, step: int, how: str) -> tuple[int, int | None, str, bool]:
        """The progress line of a run that ended without finishing: where it stopped, standing still."""
        if self._total is None:
            return 0, None, f"{how} before its first step", False
        return step, self._total, f"step {step}/{self._total} · {how}", False

    @staticmethod
    def _step_label(step: int, total: int | None, epoch: float, eta: str) -> str:
        return f"step {step}/{total or step} · epoch {epoch:.2f} · ETA {eta}"

    def _on_eval(self, e: EvalResult) -> None:
        self._evals.add_result(e)
        self._evals_added = True
        if e.tokens_per_s is not None:  # absent from event logs written before it was reported
            when = "before training" if e.before_training else f"at step {e.step}"
            self._log(f"evaluation {when}: {e.seconds:.1f}s, {e.tokens_per_s:,.0f} tok/s"
                      + (f"; {untrained_head_note(self.run_task)}" if e.untrained_head else ""))
        if "loss" in e.metrics:
            self._charts.add_eval(e.step, e.metrics["loss"])

    def _on_sample(self, e: SampleGenerated) -> None:
        self.query_one(SamplesPanel).add(e)
        self._samples_added = True

    def _on_checkpoint(self, e: CheckpointSaved) -> None:
        self._log(f"checkpoint step-{e.step} saved: {e.path}", "green")

    def _on_micro_batch_halved(self, e: MicroBatchHalved) -> None:
        """The run ran out of device memory and goes on with smaller micro-batches: a line in the
        log, and a notification when it happens live (not when a run's history is read)."""
        line = (f"step {e.step} ran out of memory: micro-batches of {e.batch_size} rows x {e.grad_accum} "
                "accumulated from now on, the same effective batch")
        self._log(f"{line} ({e.reason})", "yellow")
        if not self._history:
            self.notify(line, title="Out of memory", severity="warning", markup=False)

    def _on_log(self, e: LogMessage) -> None:
        """A detached run's log records (an in-process run's reach the log pane the app's way)."""
        self._log(f"{e.level} {e.logger}: {e.message}", LOG_STYLES.get(e.level, "dim"))

    def _on_paused(self, e: Paused) -> None:
        self._log(f"paused at step {e.step}", "yellow")
        self._paused = True
        if self._total is not None:  # the step reports are throttled: the last one drawn may be steps behind
            self._bar = (e.step, self._total, f"step {e.step}/{self._total} · paused")
        if self.pause_asked:
            self.pause_asked = None
        if (self._state or self.app.run_state) == RunState.RUNNING:
            self._set_state(RunState.PAUSED)

    def _on_resumed(self, e: Resumed) -> None:
        self._log(f"resumed at step {e.step}", "yellow")
        self._paused = False
        if self.pause_asked is False:
            self.pause_asked = None
        if (self._state or self.app.run_state) == RunState.PAUSED:
            self._set_state(RunState.RUNNING)

    def _on_run_finished(self, e: RunFinished) -> None:
        self._final, self._final_in_history = e, self._history
        if e.reason == "stopped" and e.last_checkpoint:
            self.resumable = self.run_dir
        total = self._total
        self._bar = (e.step, total, f"step {e.step}/{total or e.step} · {e.reason} in {format_duration(e.elapsed_s)}")
        self._charts.flush(force=True)
        results = self._evals.results
        last_eval = results[-1].step if results else None
        self.query_one(ResultsPanel).show_run(e, self.run_dir or "", self.run_task, last_eval)
        self.add_class("-finished")
        self._log(f"run {e.reason} at step {e.step}" + (f"; model saved to {e.output_path}" if e.output_path else ""),
                  "bold")
        self._set_state(RunState.after(e.reason))

    def _on_run_failed(self, e: RunFailed) -> None:
        self._final, self._final_in_history = e, self._history
        self._bar = self._ended_bar(e.step, "failed")
        if e.last_checkpoint:
            self.resumable = self.run_dir
        self._log(f"run failed: {e.message}" + (f" (traceback in {e.log_file})" if e.log_file else ""), "bold red")
        self._set_state(RunState.FAILED)
        if not self._history and self.app.followed is not None:
            self.app.push_screen(ErrorDialog.for_run_failed(e))

    def on_control_taken(self, message: ControlTaken) -> None:
        """The app that controlled the followed run has gone: this one controls it now."""
        message.stop()
        if message.client is not self.app.followed:
            return
        note = "the app that controlled this run has gone: this app controls it now (pause, stop, checkpoint, eval)"
        self._log(note, "yellow")
        self.notify(note, title="Control", markup=False)
        self.refresh_bindings()
        self._flush()

    def on_engine_gone(self, message: EngineGone) -> None:
        """The detached engine has ended. With a final event it ended as that says (an attached run
        that had ended is shown, and said to be not training); without one it crashed, or never
        started: the user is told so, and how to resume."""
        message.stop()
        if message.client is not None and message.client is not self.app.followed:
            return
        final = self._final
        if final is not None:
            self.post_message(RunStateChanged(RunState.FAILED if isinstance(final, RunFailed)
                                              else RunState.after(final.reason)))
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
            self._bar = (0, None, "the engine did not start", False)
        else:
            problem = message.problem or UserError(f"run {self.run_dir}: its engine ended without a final event",
                                                   "R resumes it from its last checkpoint")
            dialog = ErrorDialog("Training crashed", problem.message,
                                 f"{problem.hint.strip()} (or R on this screen)")
            self.resumable = self.run_dir
            bar = self.query_one(RunProgress)
            self._bar = self._ended_bar(bar.progress, "crashed")
            self._log(f"{problem.message}; {problem.hint.strip()}", "bold red")
        self.post_message(RunStateChanged(RunState.FAILED))
        self.app.push_screen(dialog)
        self._flush()

    def _steps_due(self) -> bool:
        """Whether the step reports applied since the last drawing are drawn now: at once with a
        progress label of another event's (the run starts, ends or crashes) or when it has failed or
        paused, else STEP_DRAW_S after the last drawing (a timer then comes back)."""
        wait = self._steps_drawn_at + STEP_DRAW_S - time.monotonic()
        if wait <= 0 or self._bar is not None or self._final is not None or self._paused:
            self._steps_drawn_at = time.monotonic()
            return True
        if self._step_timer is None:
            self._step_timer = self.set_timer(wait, self._draw_waiting_steps)
        return False

    def _draw_waiting_steps(self) -> None:
        self._step_timer = None
        with self.app.batch_update():
            self._flush()

    def _flush(self) -> None:
        """Draw what the events applied since the last flush changed, once each (step reports when
        they are due, _steps_due)."""
        waiting = self._stats is not None and not self._steps_due()
        if self._stats is not None and not waiting:
            e = self._stats
            self._stats_pane.show_last()
            if self._bar is None:
                self._bar = (e.step, self._total, self._step_label(e.step, self._total, e.epoch, format_eta(e)))
            self._stats = None
        if not waiting:
            self._charts.flush()
        if self._bar is not None:
            self.query_one(RunProgress).show(*self._bar)
            self._bar = None
        if self._evals_added:
            self._evals.move_cursor(row=self._evals.row_count - 1)
            self._evals_added = False
        if self._samples_added:
            self.query_one(SamplesPanel).redraw()
            self._samples_added = False
        if self._log_texts:
            self.query_one(RunLog).add(self._log_texts)
            self._log_texts = []
        if self._state is not None:
            self.post_message(RunStateChanged(self._state))
            self._state = None

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
        """A line of the log pane. Its words come from a run's files and from library messages, which
        may quote a data set: its control characters are escaped (a Text reads no markup)."""
        self._log_texts.append(Text(safe_text(line), style=style))


def _planned_lr(e: RunStarted) -> list[tuple[int, float]]:
    """The whole learning-rate schedule of the run `e` starts, from its config and the plan the engine
    runs by (core.plan, the curve of the hyperparameter preview); empty when its config cannot be read."""
    try:
        _, config = open_run(e.run_dir)
    except (UserError, OSError):
        return []
    plan = plan_steps(config, e.train_rows, e.world_size)
    return lr_curve(plan.scheduler, config.optim.lr, plan.warmup_steps, plan.total_steps, points=PLANNED_POINTS)
