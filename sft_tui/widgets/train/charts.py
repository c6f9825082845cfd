"""Live loss and learning-rate curves of a run, cheap to draw however long the run gets.

The engine reports once a second, and the UI thread shares the interpreter with the
training thread, so every millisecond spent drawing here is felt in how fast keys are answered:
- points arrive into a `Curve` that keeps at most a few hundred of them (neighbours merge when it
  is full: a terminal is at most a few hundred braille dots wide anyway);
- they are redrawn when the screen has applied a batch of events (`flush`), at most every two
  seconds, so that the curves are painted in the same screen update as the progress bar rather than
  in one of their own (on the tiny LM, the UI thread then used 0.17 s of CPU per 20 s of training
  instead of 0.21 s with the loss redrawn every second); the first points, a run's whole history
  among them, show at once;
- the learning rate is known before the run starts (core.plan and the schedule the hyperparameter
  preview draws): its whole planned curve is drawn, and a marker moves along it to the step last
  reported, whose value the plot's title gives at each flush, as the stats pane does (a curve drawn
  from the reports lagged: at step 9 it ended at step 4). A run whose config cannot be read plots
  its reports;
- a plot keeps its drawing until its data or size changes, so switching screens costs no redraw.
"""

from __future__ import annotations

import time

from textual.app import ComposeResult, RenderResult
from textual.containers import Container
from textual_plotext import PlotextPlot

REDRAW_INTERVAL_S = 2.0
MAX_POINTS = 400
PLANNED_POINTS = 200


class Curve:
    """(x, y) points, at most `limit`: when full, neighbouring pairs merge into their mean."""

    def __init__(self, limit: int = MAX_POINTS) -> None:
        self.limit = limit
        self.points: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def add(self, x: float, y: float) -> None:
        self.points.append((x, y))
        if len(self.points) > self.limit:
            pts = self.points
            merged = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in zip(pts[::2], pts[1::2])]
            self.points = merged + pts[len(merged) * 2:]

    def clear(self) -> None:
        self.points.clear()

    def truncate(self, x: float) -> None:
        """Drop the points after `x`."""
        self.points = [p for p in self.points if p[0] <= x]


def _decimals(values: list[float]):
    """Labels with one number of decimals for the whole axis, as many as its values' size wants."""
    top = max(abs(v) for v in values)
    if 0 < top < 0.1:
        return lambda v: f"{v:.2e}"
    places = 3 if top < 1 else 2 if top < 10 else 1 if top < 100 else 0
    return lambda v: f"{v:,.{places}f}"


def row_ticks(plot: "CachedPlot", values: list[float], label=None) -> None:
    """Y-axis labels, each on the row of the value it names. plotext's own were more than a short
    plot's rows and were merged onto rows they do not name (6.22 beside the row of 5.86: a review read
    evaluations of 4.1-4.9 as 3.79); labels sharing a row were drawn in an order that changed from one
    process to the next. Here they are values of whole rows: the lowest and the highest, and between
    them as many as the rows space well, written by `label` (decimals to the values' size)."""
    if not values:
        return
    low, high = min(values), max(values)
    rows = plot.size.height - 3  # the frame's top line, the x axis and its labels take the others
    if high <= low or rows < 2:
        ticks = [low]
    else:
        count = min(rows, 5 if rows >= 12 else 4 if rows >= 8 else 3 if rows >= 5 else 2)
        ticks = [low + (high - low) * round(k * (rows - 1) / (count - 1)) / (rows - 1) for k in range(count)]
    label = label or _decimals(values)
    plot.plt.yticks(ticks, [label(t) for t in ticks])


class CachedPlot(PlotextPlot):
    """A PlotextPlot that rebuilds its text only after `changed()` or a resize.

    `fit(plot)`, when given, runs before each rebuild: what depends on the size the plot has now
    (e.g. how many axis labels fit) goes there, not into the drawing that `changed()` follows."""

    def __init__(self, fit=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fit = fit
        self._version = 0
        self._cache: tuple[tuple, RenderResult] | None = None

    def changed(self) -> None:
        self._version += 1
        self.refresh()

    def render(self) -> RenderResult:
        key = (self._version, self.size, self.app.theme, self.theme)
        if self._cache is None or self._cache[0] != key:
            if self.fit is not None:
                self.fit(self)
            self._cache = (key, super().render())
        return self._cache[1]


class TrainCharts(Container):
    DEFAULT_CSS = """
    TrainCharts { height: 1fr; }
    TrainCharts CachedPlot {
        height: 1fr; min-height: 5; border: round $primary-darken-2; border-title-color: $text-accent;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_loss = Curve()
        self.eval_loss = Curve()
        self.lr = Curve()
        """The reported learning rates (plotted only when the planned curve is unknown)."""
        self.planned_lr: list[tuple[int, float]] = []
        """(step, lr) of the run's whole schedule, from its plan."""
        self._drawn_at = 0.0
        self._drawn_points = 0
        """Train-loss points in the last drawing: none means new points are drawn at once."""
        self._dirty = False

    def compose(self) -> ComposeResult:
        yield CachedPlot(id="loss-plot", fit=lambda plot: row_ticks(plot, [v for _, v in (*self.train_loss,
                                                                                        *self.eval_loss)]))
        yield CachedPlot(id="lr-plot", fit=lambda plot: row_ticks(  # plotext writes 1e-5 as 0.0000100
            plot, [v for _, v in self.planned_lr or self.lr], lambda v: f"{v:.1e}"))

    def on_mount(self) -> None:
        self.query_one("#loss-plot").border_title = "loss: train ⠉⠒⠤ eval •"
        self.query_one("#lr-plot").border_title = "learning rate"
        self.redraw()

    def reset(self) -> None:
        for curve in (self.train_loss, self.eval_loss, self.lr):
            curve.clear()
        self.planned_lr = []
        self._title_lr()
        self.redraw()

    def plan_lr(self, points: list[tuple[int, float]]) -> None:
        """The run's planned schedule (core.plan's steps, the hyperparameter preview's curve); drawn
        with the next flush."""
        self.planned_lr = points
        self._drawn_points, self._dirty = 0, True

    def truncate(self, step: int) -> None:
        """Keep the points up to `step` (a resumed run trains the later ones again)."""
        for curve in (self.train_loss, self.eval_loss, self.lr):
            curve.truncate(step)
        self._drawn_points, self._dirty = 0, True

    def add_step(self, step: int, loss: float, lr: float) -> None:
        """The point shows at the next `flush`."""
        self.train_loss.add(step, loss)
        self.lr.add(step, lr)
        self._dirty = True

    def _title_lr(self) -> None:
        """The plot's title holds the learning rate last reported, at each flush: the marker moves
        with the plot's next drawing. A title set repaints the whole plot, so an unchanged one is
        not set again."""
        title = "learning rate"
        if self.lr:
            step, lr = self.lr.points[-1]
            title += f" {lr:.2e} @ step {step:,.0f}"
        plot = self.query_one("#lr-plot")
        if plot.border_title != title:
            plot.border_title = title

    def add_eval(self, step: int, loss: float) -> None:
        """The point shows with the next step report's flush (or the end of the run)."""
        self.eval_loss.add(step, loss)
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Draw the points added since the last drawing if it is time, or at once with `force` or
        when none of them was drawn yet (a run's first points, or its whole history)."""
        if not (self._dirty or force):
            return
        self._title_lr()
        now, first = time.monotonic(), not self._drawn_points
        if force or first or now - self._drawn_at >= REDRAW_INTERVAL_S:
            self.redraw()

    @staticmethod
    def _step_ticks(plt, points) -> None:
        """Whole optimizer steps on the x axis (plotext would label merged points 11.5, 21.0, ...),
        from the first point to the last, the evaluation before training (step 0) among them; a lone
        point (that evaluation, before any step is reported) gets its step alone, not plotext's -1..1."""
        if not points:
            return
        xs = [x for x, _ in points]
        first, last = min(xs), max(xs)
        ticks = sorted({round(first + (last - first) * i / 4) for i in range(5)})
        plt.xticks(ticks, [f"{t:,}" for t in ticks])
        if first == last:
            plt.xlim(first, first + 1)

    def redraw(self) -> None:
        """Draw both plots now."""
        self._drawn_at = time.monotonic()
        self._drawn_points, self._dirty = len(self.train_loss), False
        self._draw(self.query_one("#loss-plot", CachedPlot), list(self.train_loss), list(self.eval_loss))
        if self.planned_lr:  # the whole schedule, and where the run is on it
            self._draw(self.query_one("#lr-plot", CachedPlot), self.planned_lr, self.lr.points[-1:], "●")
        else:
            self._draw(self.query_one("#lr-plot", CachedPlot), list(self.lr))

    def _draw(self, plot: CachedPlot, line: list, dots: list | None = None, marker: str = "dot") -> None:
        plt = plot.plt
        plt.clear_data()
        if line:
            plt.plot(*zip(*line), marker="braille")
        if dots:
            plt.scatter(*zip(*dots), marker=marker)
        self._step_ticks(plt, [*line, *(dots or [])])
        plot.changed()

