"""The headless front end: a rich progress bar and tables, fed by the same events as the app.

Progress goes to stderr; what a script wants from a finished run (how it ended, its metrics with
their steps, where the model is, the command that resumes it) goes to stdout, so that
`sft-tui train run.yaml > result.txt` keeps the result and a terminal still shows everything."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from core.events import (CheckpointSaved, EvalResult, Event, LogMessage, MicroBatchHalved, Paused, Resumed, RunFailed,
                         RunFinished, RunStarted, SampleGenerated, StepMetrics)
from sft_tui.format.numbers import format_duration, format_metrics
from sft_tui.format.safe import safe_text
from sft_tui.format.train import SmoothedRate, before_after, best_weights_note, format_eta, untrained_head_note


class QuietOnBrokenPipe(Console):
    """A Console that goes quiet when the reader of its pipe has gone (`| tee log` after an SSH
    drop, `| head`). rich's own exits the process (SystemExit 1), which ended the run at that step
    without its checkpoint or its failure event; the run goes on to its end or its stop instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:  # the stream's later writes, and Python's flush of it at exit, go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())
        except (OSError, ValueError):
            pass


class ProgressDisplay:
    """An EventSink that draws a progress bar (step, epoch, loss, smoothed tokens/s, ETA) and prints
    evaluations on `console` (stderr), and the run's result on `out` (stdout). `training`: the
    display of the run it trains, which a closed pipe must not end (QuietOnBrokenPipe).

    `sft-tui attach --plain` feeds it a run folder's events.jsonl, which anyone who can write there
    may have crafted: every field an event brings is shown through sft_tui.format.safe, and as a
    Text or escaped markup, so that none writes to the terminal or is read as Rich markup."""

    def __init__(self, console: Console | None = None, out: Console | None = None, *, training: bool = False) -> None:
        kind = QuietOnBrokenPipe if training else Console  # `attach --plain | head` may end with its pipe
        self.console = console or kind(stderr=True)
        self.out = out or kind(file=sys.stdout, soft_wrap=True, highlight=False)
        self.rate = SmoothedRate()
        self.run_dir: str | None = None
        self.run_task = ""
        self.last_eval: EvalResult | None = None
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
            console=self.console, transient=False,
        )
        self.task = None
        self.failure_shown = False
        self._terminal = self.console.is_terminal  # asked now: a hung-up terminal no longer says so

    def emit(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.type}", None)
        if handler:
            try:
                handler(event)
            except OSError:  # a terminal that hung up (EIO) must not end the run it shows
                self.detach(always=True)

    def note(self, text: str) -> None:
        """A line from the command itself (a signal received, how to resume)."""
        try:
            self._line(text, "yellow")
        except OSError:
            self.detach(always=True)

    def result(self, text: str) -> None:
        """A line of the run's result, for scripts: on stdout."""
        try:
            self.out.print(Text(safe_text(text)), soft_wrap=True)
        except OSError:
            self.detach(always=True)

    def _line(self, text: str, style: str = "") -> None:
        """Text that may hold paths and library messages: no markup or control sequence is read from
        it, and it is not broken into lines, so a path copied from the terminal is whole."""
        self.console.print(Text(safe_text(text), style=style), soft_wrap=True)

    def detach(self, always: bool = False) -> None:
        """Stop drawing to a terminal that went away (SIGHUP); output into a file or a pipe goes on
        unless `always` (a write failed). The run itself goes on to its checkpoint and events.jsonl."""
        if not (always or self._terminal):
            return
        self.console.file = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the display
        self.out.file = self.console.file
        self.progress.stop()

    def _on_run_started(self, e: RunStarted) -> None:
        share = 100 * e.trainable_params / max(e.total_params, 1)
        self.console.print(Text.assemble(
            (safe_text(e.run_id, one_line=True), "bold"),
            safe_text(f"  {e.task} · {e.model} · {e.trainable_params:,}/{e.total_params:,} "
                      f"trainable ({share:.1f}%) · {e.train_rows} train / {e.validation_rows} validation rows · "
                      f"{e.device} {e.precision} x{e.world_size}"
                      + (f" · resumed at step {e.resumed_from_step}" if e.resumed_from_step else ""), one_line=True),
        ))
        self.run_dir, self.run_task, self.rate, self.last_eval = e.run_dir, e.task, SmoothedRate(), None
        if self.task is not None:  # a resumed run's history: one bar, not the stopped start's beside it
            self.progress.remove_task(self.task)
        self.progress.start()
        self.task = self.progress.add_task("train", total=e.planned_steps, completed=e.resumed_from_step,
                                           epoch=0.0, loss="-", tps="-", eta=format_duration(None))

    def _on_step(self, e: StepMetrics) -> None:
        self.rate.add(e)
        self.progress.update(self.task, completed=e.step, epoch=e.epoch, loss=f"{e.loss:.4f}",
                             tps=f"{self.rate.tokens_per_s:,.0f}", eta=format_eta(e))

    def _on_eval(self, e: EvalResult) -> None:
        if e.before_training:
            note = f"; {untrained_head_note(self.run_task)}" if e.untrained_head else ""
            self.console.print(f"[bold]evaluation before training[/] ({e.seconds:.1f}s{note})")
        else:
            self.last_eval = e
            self.console.print(f"[bold]evaluation[/] at step {escape(safe_text(e.step))} "
                               f"(epoch {e.epoch:.2f}, {e.seconds:.1f}s)"
                               + ("  [green]▲ best[/]" if e.is_best else ""))
        table = Table()
        for name in e.metrics:
            table.add_column(Text(safe_text(name, one_line=True)), justify="right")
        table.add_row(*(f"{v:.4f}" for v in e.metrics.values()))
        self.console.print(table)

    def _on_sample(self, e: SampleGenerated) -> None:
        for label, text in (("prompt", e.prompt), ("model ", e.output), ("ref   ", e.reference)):
            self.console.print(Text.assemble("  ", (label, "dim"), f" {text!r}"))  # model output is not markup

    def _on_checkpoint(self, e: CheckpointSaved) -> None:
        self._line(f"checkpoint saved: {e.path} ({e.seconds:.1f}s)", "dim")

    def _on_paused(self, e: Paused) -> None:
        self.console.print(f"paused at step {safe_text(e.step)}", markup=False)
        if self.task is not None:  # an ETA ticking on a run that waits for `p` says it trains
            self.progress.update(self.task, eta="paused")

    def _on_resumed(self, e: Resumed) -> None:
        self.console.print(f"resumed at step {safe_text(e.step)}", markup=False)

    def _on_micro_batch_halved(self, e: MicroBatchHalved) -> None:
        self._line(f"step {e.step} ran out of memory ({e.reason}): retrying with micro-batches of {e.batch_size} "
                   f"rows x {e.grad_accum} accumulated, the same effective batch", "yellow")

    def _on_log(self, e: LogMessage) -> None:
        style = "yellow" if e.level in ("warning", "error", "critical") else "dim"
        self._line(f"{e.level}: {e.message}", style)

    def _on_run_finished(self, e: RunFinished) -> None:
        self.progress.stop()
        self.result(f"run {e.reason} at step {e.step} in {format_duration(e.elapsed_s)}"
                    + (f" · run folder {self.run_dir}" if self.run_dir else ""))
        if e.best_metrics:
            self.result(f"best eval @ step {e.best_step}: {format_metrics(e.best_metrics)}")
        last = self.last_eval
        if e.final_metrics and last is not None and last.step != e.best_step:
            self.result(f"last eval @ step {last.step}: {format_metrics(e.final_metrics)}")
        for label, parts in before_after(e.before_metrics, e.output_metrics, self.run_task, e.before_untrained_head):
            self.result(f"{label}: {' · '.join(parts)}")
        if e.output_path:
            self.result(f"model saved to {e.output_path}{best_weights_note(e)}")

    def _on_run_failed(self, e: RunFailed) -> None:
        self.failure_shown = True
        self.progress.stop()
        self._line(f"run failed: {e.message}", "bold red")
        if e.hint:
            self._line(f"hint: {e.hint}")
        if e.last_checkpoint:
            self._line(f"last checkpoint: {e.last_checkpoint}")
