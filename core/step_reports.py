"""The training loop's step reports: what happened since the last one, read once a few times a
second and sent as one StepMetrics event.

A mixin of core.engine's _Training, which holds the state a report reads (config, state, the
accelerator, the optimizer and its scheduler, the ETA, the event sink); core.milestones takes the
time of evaluations, checkpoints and pauses out of the window, so the rates count training alone.
"""

from __future__ import annotations

import time

from core.events import StepMetrics
from core.loss import raise_if_diverged


class ReportWindow:
    """What happened since the last report. Sums stay on the device, so a step never waits for it;
    a report, a few times a second, reads them once. `excluded_s`: time in it spent on anything but
    steps (an evaluation, a checkpoint, a pause), left out of its rates: a report after an
    evaluation once said 3 samples/s."""

    def __init__(self, device) -> None:
        import torch

        self.started = time.perf_counter()
        self.excluded_s = 0.0
        self.loss = torch.zeros((), device=device)
        self.grad = torch.zeros((), device=device)
        self.steps = self.tokens = self.rows = 0

    @property
    def step_seconds(self) -> float:
        return max(time.perf_counter() - self.started - self.excluded_s, 1e-9)


class StepReports:
    def _report(self) -> None:
        """The window's means as one StepMetrics: the one device sync of a few steps."""
        from core.device_usage import process_memory

        window, world = self.window, self.acc.num_processes
        if window.steps == 0:
            return
        loss = float(window.loss) / window.steps
        raise_if_diverged(loss, self.state.step)
        seconds = window.step_seconds  # after the sync above: the steps' device work is done
        self.eta.stepped(seconds, window.steps)
        elapsed = time.perf_counter() - self.started
        remaining = self.eta.remaining(self.state.step, since_save_s=elapsed - self.saved_at_s)
        self.state.tokens_seen += window.tokens * world
        self.out.emit(StepMetrics(
            step=self.state.step, epoch=round(self.state.epoch_progress, 4), loss=loss,
            lr=self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["lr_scale"],
            grad_norm=float(window.grad) / window.steps if self.config.optim.max_grad_norm > 0 else None,
            tokens_per_s=window.tokens * world / seconds, samples_per_s=window.rows * world / seconds,
            tokens_seen=self.state.tokens_seen, elapsed_s=elapsed,
            eta_s=remaining.seconds if remaining else None, eta_estimated=bool(remaining and remaining.estimated),
            memory=process_memory(),
        ))
        self._reset_window()

    def _reset_window(self) -> None:
        """Start a new throughput window: at the start, after a report, and after a pause (not
        training time)."""
        self.window = ReportWindow(self.acc.device)
