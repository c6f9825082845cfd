"""The step plan of a run: how many optimizer steps, how long the warmup, and after which steps the
engine evaluates and saves a checkpoint.

The engine runs by this plan and the app's hyperparameter preview shows it while the user types, so
both must count with the same code: this module is plain Python (no torch) and cheap enough to
call on every keystroke. Steps that a Control asks for (evaluate now, save now) and an early stop
are not part of the plan; they are decided while the run is going.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import RunConfig


@dataclass(frozen=True)
class StepPlan:
    """The optimizer steps of one run, as the engine will take them."""

    train_rows: int
    processes: int
    """Processes that share each epoch's batches (1 in the app; more under torchrun)."""
    batch_size: int
    """Rows per micro-batch on each process (optim.batch_size), until running out of memory halves
    it (the engine's TrainState.micro_batch_size); the rows of each step do not change with it."""
    grad_accum: int
    """Micro-batches per optimizer step (optim.grad_accum), until a halving doubles it."""
    micro_batches_per_epoch: int
    """Micro-batches of batch_size each process trains per epoch; 0 means the rows make no batch per
    process."""
    steps_per_epoch: int
    total_steps: int
    """schedule.max_steps when set, else the epochs' worth of steps, rounded up."""
    warmup_steps: int
    """schedule.warmup_steps when set, else schedule.warmup_ratio of the total steps."""
    scheduler: str
    """The transformers.get_scheduler name: `constant` with a warmup is `constant_with_warmup`."""
    eval_every: int
    """Steps between scheduled evaluations: eval.every_steps, or one epoch's steps when that is 0."""
    checkpoint_every: int
    """checkpoint.every_steps; 0 saves after each scheduled evaluation but the last."""

    @property
    def epochs(self) -> int:
        """Epochs the run reaches into: the last one may be cut short by the total."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def effective_batch(self) -> int:
        """Rows behind one optimizer step, over all processes."""
        return self.batch_size * self.grad_accum * self.processes

    def evaluates_after(self, step: int) -> bool:
        """Whether the engine evaluates after optimizer step `step`: every `eval_every` steps and
        after the last step (when there are validation rows)."""
        return step == self.total_steps or (self.eval_every > 0 and step % self.eval_every == 0)

    def checkpoints_after(self, step: int) -> bool:
        """Whether the engine saves a checkpoint after optimizer step `step`. Without
        checkpoint.every_steps it saves after each scheduled evaluation except the one after the last
        step, whose weights go to `final/` instead."""
        if self.checkpoint_every:
            return step % self.checkpoint_every == 0
        return self.evaluates_after(step) and step != self.total_steps

    @property
    def warmup_problem(self) -> str | None:
        """A warmup as long as the run keeps the learning rate below optim.lr to the end: said
        before the run, since its loss barely moves and nothing else would tell why."""
        if self.total_steps and self.warmup_steps >= self.total_steps:
            return (f"the warmup ({self.warmup_steps:,} steps) is not shorter than the run ({self.total_steps:,} "
                    f"step{'s' * (self.total_steps != 1)}): the learning rate never reaches optim.lr; lower "
                    "schedule.warmup_steps or schedule.warmup_ratio")
        return None

    @property
    def eval_steps(self) -> list[int]:
        """Every step after which an evaluation is scheduled, in order."""
        steps = list(range(self.eval_every, self.total_steps + 1, self.eval_every)) if self.eval_every else []
        return steps if steps and steps[-1] == self.total_steps else [*steps, self.total_steps]

    @property
    def checkpoint_steps(self) -> list[int]:
        """Every step after which a checkpoint is scheduled, in order (an early stop may end sooner)."""
        if self.checkpoint_every:
            return list(range(self.checkpoint_every, self.total_steps + 1, self.checkpoint_every))
        return self.eval_steps[:-1]


def plan_steps(config: RunConfig, train_rows: int, processes: int = 1) -> StepPlan:
    """The plan of `config` over `train_rows` training rows shared by `processes` processes.

    Each epoch's rows are cut into optimizer steps of `effective_batch` rows (the last one may be
    short), and each step into micro-batches of `batch_size` dealt out to the processes, which leave
    out those of a short last step that do not go round (core.data.batching.process_share). A full
    step is `grad_accum` micro-batches on each process; the last of an epoch may have fewer. Counted
    here without the rows: it comes to the micro-batches of the whole epoch dealt out evenly."""
    optim, schedule = config.optim, config.schedule
    micro = math.ceil(train_rows / optim.batch_size) // processes
    steps_per_epoch = math.ceil(micro / optim.grad_accum)
    total = schedule.max_steps or math.ceil(schedule.epochs * steps_per_epoch)
    warmup = schedule.warmup_steps or round(schedule.warmup_ratio * total)
    scheduler = "constant_with_warmup" if schedule.scheduler == "constant" and warmup else schedule.scheduler
    return StepPlan(
        train_rows=train_rows, processes=processes, batch_size=optim.batch_size, grad_accum=optim.grad_accum,
        micro_batches_per_epoch=micro, steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warmup,
        scheduler=scheduler, eval_every=config.eval.every_steps or steps_per_epoch,
        checkpoint_every=config.checkpoint.every_steps,
    )


def when_evaluated(config: RunConfig) -> str:
    """When evaluations are scheduled, in the words every screen uses."""
    every = config.eval.every_steps
    return f"every {every} steps" if every else "at each epoch end"


def when_checkpointed(config: RunConfig) -> str:
    """When checkpoints are saved, in the words every screen uses."""
    every = config.checkpoint.every_steps
    return f"every {every} steps" if every else "at each eval but the last"


def checkpoint_clock(config: RunConfig) -> str:
    """The checkpoints checkpoint.every_minutes adds to when_checkpointed's, as words that follow it."""
    minutes = config.checkpoint.every_minutes
    return f"; at most {minutes:g} min apart" if minutes else ""
