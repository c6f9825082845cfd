"""Step 6: the runs under the draft's runs_dir, to compare, open, resume, continue or start a variant of.

The table is re-read every couple of seconds while the screen is shown, in a thread worker through a
core.run_catalog.RunCatalog (only runs whose files changed, and live ones, are read again). Marked
runs (space) are compared: their curves overlaid and a diff of their configs; with none marked, the
curves are those of the run under the cursor. Opening, resuming and continuing a run are the app's
(SftApp.attach_run, SftApp.launch_run): the train screen follows the run they start or open.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from core.errors import UserError
from core.lineage import continue_problem, continued_config, variant_config
from core.run_catalog import RunCatalog
from core.run_info import RunInfo, config_dict
from core.runs import resume_problem
from sft_tui.format.compare import eval_metrics, shared_metrics
from sft_tui.screens.base import StepScreen
from sft_tui.session import untrusted
from sft_tui.widgets.runs.curves import RunCurves
from sft_tui.widgets.runs.diff import ConfigDiff
from sft_tui.widgets.runs.table import RunTable

REFRESH_S = 2.0
DIFF_HINT = "mark two or more runs with space to see the config keys in which they differ"


class RunsScreen(StepScreen):
    STEP = "runs"
    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding("space", "toggle_mark", "Mark", id="runs-mark"),
        Binding("enter", "open", "Open", id="runs-open"),
        Binding("r", "resume", "Resume", id="runs-resume"),
        Binding("n", "continue_run", "Continue", id="runs-continue"),
        Binding("l", "load_config", "Load config", id="runs-load"),
        Binding("m", "next_metric", "Eval metric", id="runs-metric"),
        Binding("escape", "clear_marks", "Unmark all", show=False, id="runs-clear"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.catalog = RunCatalog()
        self.runs_dir: Path | None = None
        """The folder the table shows (the draft's output.runs_dir when it was last read)."""
        self.metric: str | None = None
        """The eval metric the user chose with m; None: loss, or the first metric the runs share."""
        self.metrics: list[str] = []
        """The eval metrics every compared run reports (loss first): the ones m cycles through."""
        self._compared: tuple | None = None

    def compose_body(self) -> ComposeResult:
        with Vertical(id="runs-body"):
            yield Static(id="runs-empty", markup=False)
            yield RunTable(id="runs-table")
            with Horizontal(id="runs-compare"):
                yield RunCurves(id="runs-curves")
                with Vertical(id="runs-diff"):
                    yield Static(DIFF_HINT, id="diff-hint")
                    yield ConfigDiff(id="diff-table")

    def on_mount(self) -> None:
        self.query_one("#runs-diff").border_title = "config diff"
        self._timer = self.set_interval(REFRESH_S, self.refresh_runs, pause=True)

    def on_screen_resume(self) -> None:
        self._timer.resume()
        self.refresh_runs()
        self.query_one(RunTable).focus()

    def on_screen_suspend(self) -> None:
        self._timer.pause()

    def on_resize(self, event: events.Resize) -> None:
        """Below 100 columns the diff goes under the curves, which keep the whole width."""
        self.set_class(event.size.width < 100, "-narrow")

    # ---- reading the runs (a thread worker) -------------------------------------------------
    def refresh_runs(self) -> None:
        runs_dir = Path(self.session.config.output.runs_dir)
        self.app.run_worker(partial(self._read_runs, runs_dir), name="runs-list", group="runs-list", thread=True,
                            exclusive=True, exit_on_error=False)

    def _read_runs(self, runs_dir: Path) -> None:
        try:
            infos, problem = self.catalog.read(runs_dir), ""
        except OSError as err:  # every two seconds: a line on the screen, not an error dialog each time
            infos, problem = [], f"cannot read {runs_dir.absolute()}: {err.strerror or err}"
        self.app.call_from_thread(self.show_runs, runs_dir, infos, problem)

    def show_runs(self, runs_dir: Path, infos: list[RunInfo], problem: str = "") -> None:
        self.runs_dir = runs_dir
        table = self.query_one(RunTable)
        table.show(infos)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not infos
        if problem:
            empty.update(problem)
        elif not infos:
            where = runs_dir.absolute()
            found = ("is empty" if runs_dir.is_dir() else "is not a folder" if runs_dir.exists()
                     else "does not exist yet")
            empty.update(f"No runs: {where} {found}. A run appears here when you start one in step 5 "
                         f"(or with `sft-tui train CONFIG`); this is output.runs_dir of the draft.")
        self.compare()

    # ---- comparing --------------------------------------------------------------------------
    @property
    def table(self) -> RunTable:
        return self.query_one(RunTable)

    @property
    def compared(self) -> list[RunInfo]:
        """The marked runs, or the run under the cursor when none is marked."""
        table = self.table
        return table.marked_infos or ([table.current] if table.current is not None else [])

    @property
    def current_metric(self) -> str | None:
        """The plotted eval metric: the one chosen with m while the runs report it, else the first."""
        metrics = self.metrics
        return self.metric if self.metric in metrics else metrics[0] if metrics else None

    def compare(self) -> None:
        """Redraw the curves and the diff when what they show changed (the runs, their events, the metric)."""
        runs = self.compared
        self.metrics = shared_metrics([eval_metrics(info.events) for info in runs])
        metric = self.current_metric
        # a run's last event, not how many were read: a long run's history holds HISTORY_STEPS step reports however it grows
        key = (tuple((str(info.paths.root), info.updated) for info in runs), metric)
        if key == self._compared:
            return
        self._compared = key
        self.query_one(RunCurves).show(runs, metric)
        marked = self.table.marked_infos
        diff = self.query_one(ConfigDiff)
        diff.show([info.name for info in marked], [config_dict(info.paths) for info in marked])
        hint = self.query_one("#diff-hint", Static)
        if len(marked) < 2:
            hint.update(DIFF_HINT)
        elif not diff.diff:
            hint.update("the marked runs' configs are the same")
        hint.display = len(marked) < 2 or not diff.diff
        diff.display = not hint.display
        self.set_class(len(marked) >= 2, "-comparing")  # at 80x24 the curves need the rows (runs.tcss)
        self.refresh_bindings()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table is self.table:
            self.compare()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on the table (the table takes Enter before the screen's binding)."""
        if event.data_table is self.table:
            event.stop()
            self.action_open()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_marks":
            return bool(self.table.marked)
        if action == "next_metric":
            return len(self.metrics) > 1
        return True

    def action_toggle_mark(self) -> None:
        self.table.toggle_mark()
        self.compare()

    def action_clear_marks(self) -> None:
        self.table.clear_marks()
        self.compare()

    def action_next_metric(self) -> None:
        metrics = self.metrics
        if len(metrics) > 1:
            self.metric = metrics[(metrics.index(self.current_metric) + 1) % len(metrics)]
            self.compare()

    # ---- acting on the run under the cursor -------------------------------------------------
    def _current(self) -> RunInfo | None:
        """The run under the cursor to act on; None, said why, when there is none or it is unreadable
        (the table's row has no room for the reason)."""
        info = self.table.current
        if info is None:
            self.notify("no run here: a run appears in the table once it starts", severity="warning")
        elif info.state == "unreadable":
            self._refuse("Cannot use this run", f"run {info.name} cannot be read: {info.reason}")
            return None
        return info

    def action_open(self) -> None:
        """Follow a live run on step 5, or show an ended one's summary there (its whole history)."""
        if (info := self._current()) is not None:
            self.app.attach_run(info.paths.root)

    def action_resume(self) -> None:
        """Resume a stopped, crashed or failed run from its last checkpoint in a new engine."""
        if (info := self._current()) is None:
            return
        if info.live:
            self._refuse("Cannot resume", f"run {info.name} is {info.state} now: Enter attaches to it")
        elif info.state == "finished":
            self._refuse("Cannot resume", f"run {info.name} is complete ({info.reason} at step {info.step}): "
                                          "n continues it with more epochs or steps, l loads its config")
        elif problem := resume_problem(info.paths):
            self._refuse("Cannot resume", f"{problem.message}: l loads its config to start it again")
        else:
            self.app.launch_run(resume_dir=info.paths.root)

    def action_continue_run(self) -> None:
        """A new run from a finished run's final model, for as many more epochs or steps as asked."""
        if (info := self._current()) is None:
            return
        if self.app.run_state.live:  # refused now, not after the dialog was filled in
            self._refuse("Cannot continue", "a run is training here: stop it, or quit and detach from it, first")
            return
        if problem := continue_problem(info):
            self._refuse("Cannot continue", f"{problem.message}: {problem.hint}")
            return
        from core.config import load_config
        from sft_tui.screens.dialogs.continue_run import ContinueDialog

        def build(epochs: float | None, max_steps: int | None, lr: float):
            return continued_config(info.paths.root, epochs=epochs, max_steps=max_steps, lr=lr)

        def launch(config) -> None:
            if config is not None:
                self.app.launch_run(config=config)

        parent_lr = load_config(info.paths.config).optim.lr
        self.app.push_screen(ContinueDialog(info.name, build, parent_lr), launch)

    def action_load_config(self) -> None:
        """Put the run's config into the draft (a new run name) to edit a variant in steps 1-5."""
        if (info := self._current()) is None:
            return
        try:
            config = variant_config(info.paths.root)
        except UserError as err:
            self._refuse("Cannot load", f"{err.message}" + (f" ({err.hint})" if err.hint else ""))
            return
        config, note = untrusted(config, f"run {info.name}'s config")
        self.session.invalid.clear()
        self.session.replace_config(config)
        self.session.keep()  # the run folder keeps it
        self.app.changed()
        self.app.load_what_changed()
        if note:
            self.notify(note, title="Remote code", severity="warning", timeout=20, markup=False)
        self.notify(f"the draft is now run {info.name}'s config, with output.run_name cleared so that the new "
                    "run gets a folder of its own; edit it in steps 1-4, start it in step 5",
                    title="Config loaded", markup=False)

    def _refuse(self, title: str, message: str) -> None:
        self.notify(message, title=title, severity="warning", markup=False)
