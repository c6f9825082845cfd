"""The step arithmetic of core/engine.py and transformers' LR schedules, without torch.

The hyperparameter screen previews what a run will do (how many optimizer steps, when it warms up,
evaluates and saves) while the user types, so this must be instant: plain Python that mirrors the
engine's formulas. tests/test_app_hyper.py checks the schedules against transformers.get_scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import RunConfig

PROCESSES = 1
"""The app trains in one process; the engine divides the batches of an epoch among processes."""


@dataclass(frozen=True)
class StepPlan:
    """The optimizer steps of a run as core/engine.py counts them."""

    train_rows: int
    effective_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: list[int]
    """Steps after which the engine evaluates (when there are validation rows)."""
    checkpoint_steps: list[int]
    """Steps after which the engine saves a checkpoint (early stopping may end the run sooner)."""


def plan_steps(config: RunConfig, train_rows: int) -> StepPlan:
    """Steps per epoch, total, warmup, evaluations and checkpoints for `train_rows` training rows."""
    batch, accum = config.optim.batch_size, config.optim.grad_accum
    micro_per_epoch = math.ceil(train_rows / batch) // PROCESSES
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total = config.schedule.total_steps(steps_per_epoch)
    evals = _every(config.eval.every_steps or steps_per_epoch, total)
    if not evals or evals[-1] != total:
        evals.append(total)
    saves = _every(config.checkpoint.every_steps, total) if config.checkpoint.every_steps else evals[:-1]
    return StepPlan(train_rows, batch * accum * PROCESSES, steps_per_epoch, total, config.schedule.warmup_for(total),
                    evals, saves)


def _every(n: int, total: int) -> list[int]:
    return list(range(n, total + 1, n)) if n > 0 else []


def lr_factor(scheduler: str, step: int, warmup: int, total: int) -> float:
    """The multiplier of the base LR after `step` scheduler steps (transformers' lr_lambda).

    linear and cosine (half a cycle) decay to 0 at `total`; constant stays at 1. All three ramp up
    linearly from 0 during warmup (the engine uses constant_with_warmup when there is a warmup).
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if scheduler == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if scheduler == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0


def lr_curve(scheduler: str, base_lr: float, warmup: int, total: int,
             points: int | None = None) -> list[tuple[int, float]]:
    """(step, lr) pairs from step 0 to `total`; with `points`, about that many steps (always including
    the end of warmup and the last step) so a long run still plots quickly."""
    if points is None or total <= points:
        steps = list(range(total + 1))
    else:
        steps = sorted({round(i * total / points) for i in range(points + 1)} | {warmup})
    return [(s, base_lr * lr_factor(scheduler, s, warmup, total)) for s in steps]
