"""What the hyperparameters mean for the run: batch and step counts, evaluations, checkpoints, and
the learning-rate curve, recomputed (without torch) whenever the draft changes."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core.config import RunConfig
from sft_tui.widgets.hyper_schedule import PROCESSES, StepPlan, lr_curve, plan_steps

NO_DATA = "load the data (step 2) to see steps"


def _some(steps: list[int]) -> str:
    """A list of steps, shortened in the middle when long."""
    shown = steps if len(steps) <= 5 else [*steps[:3], "…", steps[-1]]
    return ", ".join(str(s) for s in shown) + f" ({len(steps)}×)"


def describe_plan(config: RunConfig, plan: StepPlan | None, validation_rows: int | None,
                  waiting: str = NO_DATA) -> list[tuple[str, str]]:
    """(label, text) lines of the preview; `plan` is None until the data is loaded (`waiting` says
    why)."""
    optim, schedule, evals, ckpt = config.optim, config.schedule, config.eval, config.checkpoint
    effective = optim.batch_size * optim.grad_accum * PROCESSES
    lines = [("effective batch",
              f"{effective} = {optim.batch_size} × {optim.grad_accum} accum × {PROCESSES} proc")]
    when_eval = f"every {evals.every_steps} steps" if evals.every_steps else "at each epoch end"
    when_save = f"every {ckpt.every_steps} steps" if ckpt.every_steps else "at each eval but the last"
    if plan is None:
        lines.append(("steps", waiting))
    else:
        why = "max_steps" if schedule.max_steps else f"{schedule.epochs:g} epoch" + "s" * (schedule.epochs != 1)
        source = "warmup_steps" if schedule.warmup_steps else f"ratio {schedule.warmup_ratio:g}"
        lines += [("training rows", f"{plan.train_rows:,}"), ("steps / epoch", f"{plan.steps_per_epoch:,}"),
                  ("total steps", f"{plan.total_steps:,} ({why})"), ("warmup", f"{plan.warmup_steps:,} steps ({source})")]
        when_eval += ": " + _some(plan.eval_steps)
        when_save += ": " + (_some(plan.checkpoint_steps) if plan.checkpoint_steps else "none")
    if validation_rows == 0:
        when_eval = "never: no validation rows"
    elif evals.patience:
        when_eval += f"; stops after {evals.patience} without a better {evals.metric}"
    return lines + [("evaluation", when_eval), ("checkpoints", f"{when_save}; keep {ckpt.keep_last}")]


class SchedulePreview(Vertical):
    """The step counts and the learning-rate curve of the draft run."""

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
        curve = None if plan is None else (config.schedule.scheduler, config.optim.lr, plan.warmup_steps,
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
