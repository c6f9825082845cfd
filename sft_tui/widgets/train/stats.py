"""Throughput and memory of the live run: tokens/s, samples/s (smoothed over the last seconds of
training: sft_tui.format.train.SmoothedRate), CPU RSS, and the GPUs through NVML.

The GPUs are polled every two seconds whether or not a run is live (another process may be using
them); NVML answers in microseconds and without a CUDA context, so the poll stays on the UI thread.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.events import StepMetrics
from core.memory import format_bytes, gpu_stats
from sft_tui.format.train import RATE_SPAN_S, SmoothedRate

GPU_POLL_S = 2.0


class RunStats(Static):
    DEFAULT_CSS = """
    RunStats { height: auto; }
    """

    gpu_probe = staticmethod(gpu_stats)
    """Where GPU numbers come from; tests replace it to draw the same screen on any machine."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.last: StepMetrics | None = None
        self.rate = SmoothedRate()
        self.gpus: list[dict] = []

    def on_mount(self) -> None:
        self.gpus = self.gpu_probe()
        self._draw()
        if self.gpus:  # a machine without an NVIDIA GPU at start will not grow one
            self.set_interval(GPU_POLL_S, self._poll_gpus)

    def reset(self) -> None:
        self.last = None
        self.rate.reset()
        self._draw()

    def add_step(self, metrics: StepMetrics) -> None:
        """Every report goes into the smoothed rate (a batch of events is drawn once, by show_last)."""
        self.last = metrics
        self.rate.add(metrics)

    def show_last(self) -> None:
        self._draw()

    def _poll_gpus(self) -> None:
        gpus = self.gpu_probe()
        if gpus != self.gpus:  # numbers that did not move need no redraw
            self.gpus = gpus
            self._draw()

    def _draw(self) -> None:
        text = Text()
        m = self.last
        if m is None:
            text.append("waiting for the first steps…", style="dim")
        else:
            grad = f" · grad {m.grad_norm:.3g}" if m.grad_norm is not None else ""
            text.append(f"step {m.step:,}: train loss {m.loss:.4f}{grad} · lr {m.lr:.2e}\n")
            text.append(f"{self.rate.tokens_per_s:,.0f} tok/s", style="bold")
            text.append(f" · {self.rate.samples_per_s:,.1f} samples/s", style="bold")
            text.append(f" ({RATE_SPAN_S:.0f} s mean)\n{m.tokens_seen:,} tokens seen", style="dim")
            if "rss_bytes" in m.memory:
                text.append(f" · RSS {format_bytes(m.memory['rss_bytes'])}")
            allocated = m.memory.get("gpu0_allocated_bytes")
            if allocated is not None:
                text.append(f" · torch GPU 0 {format_bytes(allocated)}")
        for gpu in self.gpus:
            util = f" · util {gpu['utilization']}%" if gpu["utilization"] is not None else ""
            text.append(f"\nGPU {gpu['index']}: {format_bytes(gpu['memory_used'])}/"
                        f"{format_bytes(gpu['memory_total'])}{util}")
        if not self.gpus:
            text.append("\nno GPU", style="dim")
        self.update(text, layout=False)  # its size comes from the screen's grid, not from the text
