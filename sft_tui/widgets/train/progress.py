"""The run's progress on one line: a bar, the percentage, and what the engine last reported.

One widget with one render instead of Textual's ProgressBar and a label beside it: the
ProgressBar's reactive chain (progress, percentage, the bar's data binding, each with watchers)
took about an eighth of the UI thread's time during a run, and the UI thread shares the
interpreter with the training thread (bench/app_vs_headless.py). A report now sets three plain
attributes and repaints one line, without a new layout.
"""

from __future__ import annotations

from rich.progress_bar import ProgressBar as BarRenderable
from rich.table import Table
from textual.app import RenderResult
from textual.widget import Widget

PULSE_FPS = 8
"""How often the bar moves while the run has no step count yet (loading the model and data)."""


class RunProgress(Widget):
    COMPONENT_CLASSES = {"run-progress--bar", "run-progress--complete", "run-progress--back"}
    DEFAULT_CSS = """
    RunProgress { height: 1; }
    RunProgress > .run-progress--bar { color: $primary; }
    RunProgress > .run-progress--complete { color: $success; }
    RunProgress > .run-progress--back { color: $foreground 15%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.progress = 0
        self.total: int | None = None
        """Planned optimizer steps; None until the engine knows them (the bar pulses meanwhile)."""
        self.label = ""
        self.busy = True

    def show(self, progress: int, total: int | None, label: str, busy: bool = True) -> None:
        """`busy`: without a step count the bar pulses while the engine works, and stands still
        (empty) once it has ended before it knew one."""
        self.progress, self.total, self.label, self.busy = progress, total, label, busy
        self.auto_refresh = None if total or not busy else 1 / PULSE_FPS
        self.refresh()

    def render(self) -> RenderResult:
        row = Table.grid(expand=True)
        row.add_column(ratio=1)
        row.add_column(no_wrap=True)
        share = f" {100 * self.progress / self.total:3.0f}%" if self.total else ""
        bar = BarRenderable(
            total=self.total or (None if self.busy else 1), completed=self.progress, pulse=not self.total and self.busy,
            style=self.get_component_rich_style("run-progress--back"),
            complete_style=self.get_component_rich_style("run-progress--bar"),
            finished_style=self.get_component_rich_style("run-progress--complete"),
            pulse_style=self.get_component_rich_style("run-progress--bar"),
        )
        row.add_row(bar, f"{share} {self.label}")
        return row
