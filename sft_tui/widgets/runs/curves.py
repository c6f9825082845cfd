"""The train-loss and eval curves of several runs in one pair of charts, one colour per run, with a
legend line naming the runs in their colours (and the run a single one continued)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Horizontal
from textual.markup import escape
from textual.widgets import Static

from core.run_info import RunInfo
from sft_tui.format.safe import safe_text
from sft_tui.format.compare import eval_curve, loss_curve
from sft_tui.widgets.train.charts import CachedPlot, row_ticks

PALETTE = [(86, 180, 233), (230, 159, 0), (0, 158, 115), (204, 121, 167), (240, 228, 66), (213, 94, 0),
           (0, 114, 178), (170, 170, 170)]
"""Okabe-Ito colours (told apart with most colour blindness), then grey; they repeat past eight runs."""


def colour(i: int) -> tuple[int, int, int]:
    """The colour of the i-th run, as plotext takes it."""
    return PALETTE[i % len(PALETTE)]


def colour_style(i: int) -> str:
    """The same colour as a Rich style, for the legend and the diff's column names."""
    return "#{:02x}{:02x}{:02x}".format(*colour(i))


class RunCurves(Container):
    DEFAULT_CSS = """
    RunCurves { height: 1fr; }
    RunCurves #curves-legend { height: auto; max-height: 2; padding: 0 1; }
    RunCurves #curves-plots { height: 1fr; }
    RunCurves CachedPlot {
        height: 1fr; min-height: 5; border: round $primary-darken-2; border-title-color: $text-accent;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shown: list[tuple[str, list, list]] = []
        """(run name, train-loss points, eval points) of each run drawn, in legend order."""

    def compose(self) -> ComposeResult:
        yield Static(id="curves-legend")
        with Horizontal(id="curves-plots"):
            yield CachedPlot(id="curves-loss", fit=lambda plot: row_ticks(plot, self._values(1)))
            yield CachedPlot(id="curves-eval", fit=lambda plot: row_ticks(plot, self._values(2)))

    def _values(self, part: int) -> list[float]:
        """Every value drawn in the loss (`part` 1) or eval (2) plot."""
        return [value for shown in self.shown for _, value in shown[part]]

    def show(self, runs: list[RunInfo], metric: str | None) -> None:
        """Draw the train loss and the eval `metric` of `runs` (None: the runs share no metric)."""
        legend = Text()
        for i, info in enumerate(runs):
            legend.append("━━ ", style=colour_style(i))
            legend.append(safe_text(info.name, one_line=True) + "   ")  # names are folders'
        if len(runs) == 1 and runs[0].parent is not None:  # the table's last column, cut at 80 columns
            legend.append(f"continued from {safe_text(runs[0].parent.name, one_line=True)}", style="dim")
        self.query_one("#curves-legend", Static).update(legend or "no run to show")
        self.shown = [(info.name, loss_curve(info.events), eval_curve(info.events, metric) if metric else [])
                      for info in runs]
        loss = self.query_one("#curves-loss", CachedPlot)
        loss.border_title = "train loss"
        _draw(loss, [points for _, points, _ in self.shown])
        evals = self.query_one("#curves-eval", CachedPlot)
        evals.border_title = (f"eval {escape(safe_text(metric, one_line=True))}" if metric  # a title is markup
                              else "eval: no metric all of them report")
        _draw(evals, [points for _, _, points in self.shown])


def _draw(plot: CachedPlot, curves: list[list[tuple[int, float]]]) -> None:
    plt = plot.plt
    plt.clear_data()
    for i, points in enumerate(curves):
        if len(points) == 1:
            plt.scatter(*zip(*points), marker="dot", color=colour(i))
        elif points:
            plt.plot(*zip(*points), marker="braille", color=colour(i))
    steps = [step for points in curves for step, _ in points]
    if steps:
        first, last = min(steps), max(steps)
        ticks = sorted({round(first + (last - first) * i / 4) for i in range(5)})
        plt.xticks(ticks, [f"{t:,}" for t in ticks])
    plot.changed()
