"""How long the rest of a run takes: its remaining optimizer steps, and the work the plan still holds
after them (evaluations, sample generations, checkpoints, the final save).

Steps alone undercount: on a 135M model the steps-only ETA said 0:10 with 19 s left, the rest being
the last evaluation, its generations and the save of `final/`. Each part is timed as the run does it;
a part not seen yet in this process is estimated from the step time (an evaluation is a forward
pass over the validation rows, a generated token one row's share of a forward pass) or from the bytes to
write, and the ETA then says it is an estimate. Plain Python fed with measured durations, so a test
gives it seconds instead of a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.plan import StepPlan

FORWARD_SHARE = 1 / 3
"""A forward pass's share of a training step (forward, backward twice its cost, optimizer)."""
WRITE_BYTES_PER_S = 250e6
"""Assumed disk write speed until this run has timed a checkpoint."""


@dataclass
class Remaining:
    seconds: float
    estimated: bool
    """Some of the work left (an evaluation, the generations, a save) has not been timed yet."""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class Eta:
    """Durations measured so far in a run, and what the plan still holds after a given step."""

    plan: StepPlan
    validation_rows: int
    samples_per_eval: int
    """Generations after each evaluation (causal LM, eval.num_samples; 0 for none)."""
    max_new_tokens: int
    model_bytes: int
    """What the final save writes (the weights)."""
    checkpoint_bytes: int
    """What a checkpoint writes (the weights and the optimizer's state)."""
    save_final: bool
    clock_s: float = 0.0
    """checkpoint.every_minutes in seconds (0: off): the checkpoints the run's clock adds between the
    planned ones. A long run without evaluations saved one every 30 minutes that the ETA left out:
    on a 7B model with its AdamW state, minutes of writing each."""
    first: tuple[float, int] | None = None
    """(seconds, steps) of this process's first report: the first steps build caches and allocate
    (after a resume, 10 times a later step's time), so once later steps are timed they set the pace."""
    train_s: float = 0.0
    steps: int = 0
    eval_s: list[float] = field(default_factory=list)
    samples_s: list[float] = field(default_factory=list)
    checkpoint_s: list[float] = field(default_factory=list)

    def stepped(self, seconds: float, steps: int) -> None:
        """`steps` optimizer steps took `seconds` (evaluations, saves and pauses left out)."""
        if self.first is None:
            self.first = (seconds, steps)
        else:
            self.train_s += seconds
            self.steps += steps

    def evaluated(self, seconds: float, samples_seconds: float | None) -> None:
        self.eval_s.append(seconds)
        if samples_seconds is not None:
            self.samples_s.append(samples_seconds)

    def checkpointed(self, seconds: float) -> None:
        self.checkpoint_s.append(seconds)

    def remaining(self, step: int, since_save_s: float = 0.0) -> Remaining | None:
        """The time from the report of optimizer step `step` (sent before the evaluation and the
        checkpoint due after that step) to the end of the run; None before a step was timed.
        `since_save_s`: the run's time since its last checkpoint (or its start), where the clock's
        next one counts from."""
        if self.first is None:
            return None
        train_s, steps = (self.train_s, self.steps) if self.steps else self.first
        plan, step_s = self.plan, train_s / steps
        estimated = False

        def measured_or(values: list[float], guess: float) -> float:
            nonlocal estimated
            value = _mean(values)
            if value is None:
                estimated = True
                return guess
            return value

        seconds = (plan.total_steps - step) * step_s
        evals_left = sum(s >= step for s in plan.eval_steps) if self.validation_rows else 0
        if evals_left:
            passes = self.validation_rows / max(plan.effective_batch, 1)
            seconds += evals_left * measured_or(self.eval_s, passes * step_s * FORWARD_SHARE)
            if self.samples_per_eval:
                per_token = step_s * FORWARD_SHARE / max(plan.grad_accum * plan.batch_size, 1)  # a row's share
                guess = self.samples_per_eval * self.max_new_tokens * per_token
                seconds += evals_left * measured_or(self.samples_s, guess)
        planned = [s for s in plan.checkpoint_steps if s >= step]
        checkpoints_left = len(planned) + self._clock_saves([(s - step) * step_s for s in planned],
                                                            (plan.total_steps - step) * step_s, since_save_s)
        if checkpoints_left:
            seconds += checkpoints_left * measured_or(self.checkpoint_s, self.checkpoint_bytes / WRITE_BYTES_PER_S)
        if self.save_final:
            if self.checkpoint_s:  # at the rate this run's checkpoints were written
                seconds += self.model_bytes * _mean(self.checkpoint_s) / max(self.checkpoint_bytes, 1)
            else:
                estimated = True
                seconds += self.model_bytes / WRITE_BYTES_PER_S
        return Remaining(seconds, estimated)

    def _clock_saves(self, planned_at: list[float], end: float, since_save: float) -> int:
        """The checkpoints the clock adds before `end` (the last step), in training time from now:
        one each clock_s after the last save, which each planned one (at `planned_at`) resets."""
        if self.clock_s <= 0:
            return 0
        count, last = 0, -since_save
        for mark in [*planned_at, end]:
            count += max(0, math.ceil((mark - last) / self.clock_s) - 1)  # strictly before the mark
            last = mark
        return count
