"""transformers' LR schedules without torch, for the hyperparameter preview's curve.

The preview redraws while the user types, so this must be instant: plain Python that mirrors the
lr_lambda of transformers.get_scheduler (the steps themselves come from core.plan, which the engine
runs by). tests/test_app_hyper.py checks the curves against transformers.get_scheduler.
"""

from __future__ import annotations

import math


def lr_factor(scheduler: str, step: int, warmup: int, total: int) -> float:
    """The multiplier of the base LR after `step` scheduler steps (transformers' lr_lambda), for a
    transformers.get_scheduler name as core.plan.StepPlan.scheduler gives it.

    linear and cosine (half a cycle) decay to 0 at `total`; constant and constant_with_warmup stay
    at 1. All of them ramp up linearly from 0 during warmup (the plan has no warmup with constant).
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
