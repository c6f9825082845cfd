"""What the hyperparameters mean for the run: batch and step counts, evaluations, checkpoints, and
the learning-rate curve, recomputed (without torch) whenever the draft changes."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core.config import RunConfig
from core.plan import StepPlan, plan_steps
from sft_tui.format.hyper import NO_DATA, describe_plan
from sft_tui.widgets.hyper.schedule import lr_curve


class SchedulePreview(VerticalScroll):
    """The step counts and the learning-rate curve of the draft run. It scrolls (Tab reaches it)
    where the terminal is too short for both: a curve squeezed under the counts lost its axis."""

    plan: StepPlan | None = None
    """The plan shown now; None while the data is not loaded."""
    lines: list[tuple[str, str]] = []
    """The (label, text) lines shown now."""
    _curve: tuple | None = None
    """(scheduler, lr, warmup, total) of the curve drawn now."""

    def compose(self) -> ComposeResult:
        yield Static(id="preview-steps")
        yield Static("the curve appears when the steps are known", id="preview-no-plot")
        yield PlotextPlot(id="preview-lr")

    def on_mount(self) -> None:
        self.query_one("#preview-steps").border_title = "Steps"
        self.query_one("#preview-lr").border_title = "Learning rate by optimizer step"

    def show(self, config: RunConfig, train_rows: int | None, validation_rows: int | None,
             waiting: str = NO_DATA) -> None:
        """Recompute everything for this config and these data sizes (None: data not loaded, and
        `waiting` says why). Redraws only what changed: every keystroke in the form lands here."""
        plan = plan_steps(config, train_rows) if train_rows is not None else None
        if plan is not None and plan.steps_per_epoch == 0:
            plan, waiting = None, f"{train_rows} training rows make no batch: add data"
        self.plan = plan
        lines = describe_plan(config, plan, validation_rows, waiting)
        if lines != self.lines:
            self.lines = lines
            table = Table.grid(padding=(0, 1))
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            for label, text in lines:
                table.add_row(label, text)
            self.query_one("#preview-steps", Static).update(table)
        self.query_one(PlotextPlot).display = plan is not None
        self.query_one("#preview-no-plot").display = plan is None
        curve = None if plan is None else (plan.scheduler, config.optim.lr, plan.warmup_steps,
                                           plan.total_steps)
        if curve is not None and curve != self._curve:
            self._draw_curve(*curve)
        self._curve = curve

    def _draw_curve(self, scheduler: str, lr: float, warmup: int, total: int) -> None:
        plot = self.query_one(PlotextPlot)
        points = lr_curve(scheduler, lr, warmup, total, points=200)
        plt = plot.plt
        plt.clear_data()
        plt.plot([s for s, _ in points], [y for _, y in points], marker="braille")
        xs = sorted({round(total * i / 4) for i in range(5)})
        plt.xticks(xs, [str(x) for x in xs])
        ys = [lr * i / 4 for i in range(5)]
        plt.yticks(ys, [f"{y:.2g}" for y in ys])
        plot.refresh()
