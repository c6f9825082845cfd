"""The hyperparameter preview in words: effective batch, step counts, when the run evaluates and saves."""

from __future__ import annotations

from core.config import RunConfig
from core.plan import StepPlan, checkpoint_clock, plan_steps, when_checkpointed, when_evaluated
from sft_tui.format.train import regulariser, uses_l2sp

NO_DATA = "load the data (step 2) to see steps"


def _some(steps: list[int]) -> str:
    """A list of steps, shortened in the middle when long."""
    shown = steps if len(steps) <= 5 else [*steps[:3], "…", steps[-1]]
    return ", ".join(str(s) for s in shown) + f" ({len(steps)}×)"


def describe_plan(config: RunConfig, plan: StepPlan | None, validation_rows: int | None,
                  waiting: str = NO_DATA) -> list[tuple[str, str]]:
    """(label, text) lines of the preview; `plan` (core.plan's, which the engine runs by) is None
    until the data is loaded (`waiting` says why)."""
    schedule, evals, ckpt = config.schedule, config.eval, config.checkpoint
    batch = plan or plan_steps(config, 0)  # the batch arithmetic needs no rows
    lines = [("effective batch", f"{batch.effective_batch} = {batch.batch_size} × {batch.grad_accum} accum × "
                                 f"{batch.processes} proc")]
    when_eval, when_save = when_evaluated(config), when_checkpointed(config)
    if plan is None:
        lines.append(("steps", waiting))
    else:
        why = "max_steps" if schedule.max_steps else f"{schedule.epochs:g} epoch" + "s" * (schedule.epochs != 1)
        source = "warmup_steps" if schedule.warmup_steps else f"ratio {schedule.warmup_ratio:g}"
        lines += [("training rows", f"{plan.train_rows:,}"), ("steps / epoch", f"{plan.steps_per_epoch:,}"),
                  ("total steps", f"{plan.total_steps:,} ({why})"), ("warmup", f"{plan.warmup_steps:,} steps ({source})")]
        if plan.warmup_problem:
            lines.append(("warning", plan.warmup_problem))
        if evals.every_steps and plan.eval_steps == [plan.total_steps]:  # not "every 15 steps: 14 (1×)"
            when_eval = f"at the end only: step {plan.total_steps}"
        else:
            when_eval += ": " + _some(plan.eval_steps)
        when_save += ": " + (_some(plan.checkpoint_steps) if plan.checkpoint_steps else "none")
    if evals.before_training:
        when_eval = "before training, then " + when_eval
    if validation_rows == 0:
        when_eval = "never: no validation rows"
    elif evals.patience:
        when_eval += f"; stops after {evals.patience} without a better {evals.metric}"
    if uses_l2sp(config):  # the form still shows weight_decay, which it replaces
        lines.append(("regulariser", regulariser(config)))
    return lines + [("evaluation", when_eval),
                    ("checkpoints", f"{when_save}{checkpoint_clock(config)}; keep {ckpt.keep_last}")]
