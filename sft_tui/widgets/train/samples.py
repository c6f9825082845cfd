"""The generations of a causal-LM run's evaluations: every sample of the latest evaluation whole,
the earlier evaluations' below it (scroll, or PageDown once focused).

An evaluation generates eval.num_samples answers; the pane once showed only the last of them, cut to
four lines. Texts are added as plain Text (model output is no markup) and the pane is redrawn once
per batch of events, by the train screen's flush.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from sft_tui.format.safe import safe_text

from core.events import SampleGenerated

MAX_EVALUATIONS = 20
"""Evaluations whose samples are kept: a long run evaluates hundreds of times."""


class SamplesPanel(VerticalScroll):
    DEFAULT_CSS = """
    SamplesPanel > #samples-text { height: auto; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.by_step: dict[int, list[SampleGenerated]] = {}
        """The samples of each evaluation, by its step, oldest first."""

    def compose(self) -> ComposeResult:
        yield Static(id="samples-text", markup=False)

    def reset(self) -> None:
        self.by_step = {}
        self.redraw()

    def truncate(self, step: int) -> None:
        """Keep the samples up to `step` (a resumed run evaluates the later steps again)."""
        self.by_step = {s: samples for s, samples in self.by_step.items() if s <= step}

    def add(self, sample: SampleGenerated) -> None:
        """Shown at the next `redraw`."""
        self.by_step.setdefault(sample.step, []).append(sample)
        while len(self.by_step) > MAX_EVALUATIONS:
            del self.by_step[min(self.by_step)]

    def redraw(self) -> None:
        text = Text()
        for step in sorted(self.by_step, reverse=True):
            samples = self.by_step[step]
            if text:
                text.append("\n\n")
            text.append(f"step {step} · {len(samples)} sample(s)", style="bold underline")
            for sample in samples:
                text.append("\nprompt ", style="dim")
                text.append(safe_text(sample.prompt))  # the data set's text, and what the model made of it
                text.append("\nmodel  ", style="dim")
                if sample.output.strip():
                    text.append(safe_text(sample.output), style="bold")
                else:  # an untrained model often answers with its end token at once: say so, not a blank
                    text.append("(nothing)", style="dim italic")
                text.append("\nref    ", style="dim")
                text.append(safe_text(sample.reference))
        self.query_one("#samples-text", Static).update(text)
        latest = max(self.by_step, default=None)
        self.border_title = "samples" if latest is None else (
            f"samples @ step {latest}" + (" · earlier below" if len(self.by_step) > 1 else ""))
        self.scroll_home(animate=False)

    @property
    def text(self) -> str:
        """What the pane shows, as plain text (for tests)."""
        return str(self.query_one("#samples-text", Static).render())
