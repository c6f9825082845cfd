"""Throughput and memory of the live run: tokens/s, samples/s (smoothed over the last seconds of
training: sft_tui.format.train.SmoothedRate), CPU RSS, and the GPUs through NVML.

The GPUs are polled every two seconds whether or not a run is live (another process may be using
them); NVML answers in microseconds and without a CUDA context, so the poll stays on the UI thread.
Each GPU gets a line of its own: the run's processes (one per GPU) are on them all. A machine
without an NVIDIA GPU says so once and is not polled; a GPU that stops answering NVML (fallen off
the bus, driver reloaded) ends the polling with a line that says why, never the app.
"""

from __future__ import annotations

import re

from pynvml import NVMLError
from rich.text import Text
from textual.widgets import Static

from core.events import StepMetrics
from core.device_usage import gpu_stats
from core.memory import format_bytes
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
        self.gpu_error: str | None = None
        self._drawn_lines = -1

    def on_mount(self) -> None:
        self._probe()
        self._draw()
        if self.gpus:  # a machine without an NVIDIA GPU at start will not grow one
            self._poll = self.set_interval(GPU_POLL_S, self._poll_gpus)

    def _probe(self) -> bool:
        """Read the GPUs; whether the numbers changed."""
        try:
            gpus = self.gpu_probe()
        except NVMLError as err:
            gpus, self.gpu_error = [], f"GPU stats stopped: NVML says {err}"
        changed, self.gpus = gpus != self.gpus, gpus
        return changed

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
        if self._probe():  # numbers that did not move need no redraw
            self._draw()
        if self.gpu_error:
            self._poll.stop()

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
            allocated = [(found[1], value) for key, value in m.memory.items()
                         if (found := re.fullmatch(r"gpu(\d+)_allocated_bytes", key))]
            if allocated:  # rank 0's own devices, by torch's numbering (CUDA_VISIBLE_DEVICES applies)
                text.append(" · torch " + ", ".join(f"cuda:{i} {format_bytes(v)}" for i, v in allocated))
        for gpu in self.gpus:
            util = f" · util {gpu['utilization']}%" if gpu["utilization"] is not None else ""
            text.append(f"\nGPU {gpu['index']}: {format_bytes(gpu['memory_used'])}/"
                        f"{format_bytes(gpu['memory_total'])}{util}")
        if self.gpu_error:
            text.append(f"\n{self.gpu_error}", style="dim")
        elif not self.gpus:
            text.append("\nno GPU", style="dim")
        lines = text.plain.count("\n")
        # Its size comes from the screen's grid, except in the narrow layouts, where the pane is as tall as
        # its text: there a new number of lines needs a layout (it stayed 2 lines, hiding RSS and the GPUs).
        self.update(text, layout=lines != self._drawn_lines)
        self._drawn_lines = lines
