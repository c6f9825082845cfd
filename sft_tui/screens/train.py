"""Step 5: start (or resume) the draft run and watch it train; the results and a "try it" box after.

The screen's keys start, resume and command the run the app follows (SftApp.launch_run,
SftApp.attach_run); commands go through the app's RunClient (pause, resume, stop, save now,
evaluate now), and the state follows the engine's answers, which arrive as events: how they are
drawn is in sft_tui.screens.train_events.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, ContentSwitcher

from core.runs import RunPaths, latest_resumable, open_run, resume_problem
from sft_tui.detach import live_engine_problem
from sft_tui.messages import RunState, RunStateChanged
from sft_tui.screens.base import StepScreen
from sft_tui.screens.dialogs import ConfirmDialog, PathDialog
from sft_tui.screens.train_events import RunEvents
from sft_tui.widgets.train.charts import TrainCharts
from sft_tui.widgets.train.evals import EvalTable
from sft_tui.widgets.train.log import RunLog
from sft_tui.widgets.train.progress import RunProgress
from sft_tui.widgets.train.results import ResultsPanel
from sft_tui.widgets.train.samples import SamplesPanel
from sft_tui.widgets.train.setup import SetupPanel
from sft_tui.widgets.train.stats import RunStats

class TrainScreen(RunEvents, StepScreen):
    STEP = "train"
    CSS_PATH = "train.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        # Starting takes Enter (on the setup view or its Start button), never a letter that typing
        # meant for a box could send.
        Binding("enter", "start", "Start training", id="train-start",
                tooltip="Train the draft run in an engine process of its own; while the draft has problems, "
                        "says what to fix"),
        # Enter on a run's view, where it starts nothing: kept out of the footer, whose room at 80x24
        # the run's own keys need (t, y).
        Binding("enter", "show_setup", "Next run's setup (on a run's view)", show=False, id="train-show-setup",
                tooltip="On the view of a run that ended: show the setup of the next run, to start it from there"),
        Binding("R", "resume_run", "Resume a run", id="train-resume-run",
                tooltip="Continue a stopped run from its newest checkpoint, with the config it started with"),
        Binding("p", "pause", "Pause/resume", id="train-pause", tooltip="Pause after the current step, or go on"),
        Binding("s", "stop", "Stop & save", id="train-stop",
                tooltip="Stop after the current step and save a checkpoint to resume from"),
        Binding("c", "save_now", "Checkpoint now", id="train-save-now",
                tooltip="Save a checkpoint (at once when paused) and keep training"),
        Binding("e", "eval_now", "Evaluate now", id="train-eval-now",
                tooltip="Evaluate on the validation set after the current step"),
        Binding("v", "toggle_view", "Setup/run view", id="train-toggle-view",
                tooltip="Switch between the run's charts and the draft's setup for the next run"),
        Binding("t", "try_it", "Try the model", id="train-try-it", tooltip="Ask the trained model in a text box"),
        Binding("y", "copy_snippet", "Copy load snippet", id="train-copy-snippet",
                tooltip="Copy the Python lines that load the trained model"),
    ]

    def compose_body(self) -> ComposeResult:
        with ContentSwitcher(initial="setup", id="train-views"):
            with VerticalScroll(id="setup"):
                yield SetupPanel(id="setup-panel")
            with Vertical(id="run"):
                yield RunProgress(id="progress")
                # Where the panes do not fit (80x24), they stack and this scrolls: PageDown, or Tab
                # to a pane, reaches each of them (train.tcss).
                with VerticalScroll(id="panes"):
                    with Horizontal(id="top"):
                        yield TrainCharts(id="charts")
                        yield EvalTable(id="evals")
                    with Horizontal(id="bottom"):
                        yield RunStats(id="stats")
                        yield ResultsPanel(id="results")
                        with Vertical(id="samples-log"):
                            yield SamplesPanel(id="samples")
                            yield RunLog(id="log")

    def on_mount(self) -> None:
        self._charts, self._evals = self.query_one(TrainCharts), self.query_one(EvalTable)  # per event: no query
        self._stats_pane = self.query_one(RunStats)
        self.query_one("#evals").border_title = "eval"
        self.query_one("#stats").border_title = "throughput / memory"
        self.query_one("#log").border_title = "log"
        self.query_one("#results").border_title = "results"
        self.watch(self.app, "session_version", self._redraw_setup)
        self.watch(self.app, "run_state", self._redraw_setup)
        self.watch(self.app, "log_count", self._show_new_log_lines)
        self.query_one(SamplesPanel).display = False

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

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys that don't apply now are hidden. Start stays on while the draft has problems: Enter
        then says what to fix (the Start button is disabled)."""
        has_run = self.run_dir is not None
        if action == "start":  # only on the setup view: after a run, Enter must not start the next one by accident
            return not self.live and self.query_one(ContentSwitcher).current == "setup"
        if action == "show_setup":  # Enter on a run's view, instead (action_show_setup)
            return not self.live and self.query_one(ContentSwitcher).current != "setup"
        if action == "resume_run":
            return not self.live
        if action in ("pause", "stop", "save_now", "eval_now"):
            return self.controls
        if action == "toggle_view":
            return has_run and not self.live
        if action in ("copy_snippet", "try_it"):
            return self.query_one(ResultsPanel).snippet is not None and not self.live
        return super().check_action(action, parameters)

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

    def action_show_setup(self) -> None:
        """Enter on a run's view (one that ended, or one opened from step 6): show the setup of the
        next run and say that Enter starts it there. It starts nothing itself: an Enter after a run,
        perhaps meant for a pane, must not start another one by accident, and the setup is where the
        draft that would train is read before it starts. Enter had done nothing and said nothing (a
        newcomer's review); a notice alone would still leave the user to find `v`, and the run's
        view stays one `v` away."""
        if self.live:
            return
        from sft_tui.keymap import first_key_label

        self.query_one(ContentSwitcher).current = "setup"
        start, toggle = (first_key_label(next(b for b in self.BINDINGS if b.id == binding_id), self.app.keymap)
                         for binding_id in ("train-start", "train-toggle-view"))
        run = f"run {Path(self.run_dir).name}" if self.run_dir else "the run"
        self.notify(f"This is the setup of the next run, the draft: {start} starts it; {toggle} shows {run} again.",
                    title="Setup of the next run", markup=False)

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

    # ---- commands to the live run -------------------------------------------------------------
    def action_pause(self) -> None:
        """Pause, or resume a paused run. Toggled against what was last asked until the engine
        answers: two quick presses sent "pause" twice, since the state changes only with its answer."""
        state = self.app.run_state
        if not self.controls or state == RunState.STOPPING:
            return
        paused = self.pause_asked if self.pause_asked is not None else state == RunState.PAUSED
        self.pause_asked = not paused
        if paused:
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
            self.notify("saving a checkpoint now; the run stays paused" if self.app.run_state == RunState.PAUSED
                        else "a checkpoint is saved after the current step")

    def action_eval_now(self) -> None:
        if self.controls:
            self.app.followed.send("eval")
            self.notify("evaluating now: the run is paused" if self.app.run_state == RunState.PAUSED
                        else "evaluating after the current step")

    def action_toggle_view(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        switcher.current = "setup" if switcher.current == "run" else "run"
        if switcher.current == "run":
            self.focus_panes()

    def action_try_it(self) -> None:
        self.query_one(ContentSwitcher).current = "run"
        self.query_one("#try-input").focus()

    def action_copy_snippet(self) -> None:
        snippet = self.query_one(ResultsPanel).snippet
        if snippet:  # OSC 52: a terminal that refuses it (often over SSH, or tmux without set-clipboard)
            self.app.copy_to_clipboard(snippet)  # copies nothing and says nothing, so the lines are shown too
            self.notify(f"sent to the terminal's clipboard (OSC 52, which a terminal may refuse):\n{snippet}",
                        title="Load snippet", markup=False, timeout=15)



def _check_resumable(path: Path) -> None:
    """For the resume dialog: a folder that is no run, a completed run or one without a complete
    checkpoint is refused in the dialog (UserError), not after a start. A run that trains now is
    let through: the dialog's caller offers to attach to it."""
    paths, _ = open_run(path)
    if live_engine_problem(paths) is None and (problem := resume_problem(paths)):
        raise problem
