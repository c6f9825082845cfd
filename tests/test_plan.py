"""core.plan: the step plan the engine runs by and the app previews."""

from __future__ import annotations

import math

import pytest

from core.config import example_config
from core.plan import plan_steps, when_checkpointed, when_evaluated


def config(epochs=1.0, max_steps=None, eval_every=0, save_every=0, batch=16, accum=2, warmup_steps=0,
           warmup_ratio=0.0, scheduler="linear"):
    cfg = example_config("classification")
    cfg.optim.batch_size, cfg.optim.grad_accum = batch, accum
    cfg.schedule.epochs, cfg.schedule.max_steps = epochs, max_steps
    cfg.schedule.warmup_steps, cfg.schedule.warmup_ratio, cfg.schedule.scheduler = warmup_steps, warmup_ratio, scheduler
    cfg.eval.every_steps, cfg.checkpoint.every_steps = eval_every, save_every
    return cfg


@pytest.mark.parametrize(("rows", "processes", "micro", "per_epoch"), [
    (100, 1, 7, 4),  # 7 micro-batches of 16 (the last short), an optimizer step every 2
    (100, 2, 3, 2),  # 7 batches dealt to 2 processes: 3 each, the seventh dropped
    (100, 4, 1, 1),
    (100, 8, 0, 0),  # fewer batches than processes: no full batch anywhere
    (16, 1, 1, 1),
    (5, 1, 1, 1),
])
def test_steps_per_epoch_count_processes_batches_and_accumulation(rows, processes, micro, per_epoch):
    plan = plan_steps(config(), rows, processes)
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch) == (micro, per_epoch)
    assert plan.effective_batch == 16 * 2 * processes


def test_total_and_warmup_steps():
    assert plan_steps(config(epochs=2.5), 100).total_steps == 10
    assert plan_steps(config(epochs=0.3), 100).total_steps == math.ceil(0.3 * 4)
    assert plan_steps(config(epochs=2, max_steps=23), 100).total_steps == 23  # max_steps wins
    assert plan_steps(config(epochs=5, warmup_ratio=0.1), 100).warmup_steps == 2
    assert plan_steps(config(epochs=5, warmup_ratio=0.1, warmup_steps=7), 100).warmup_steps == 7  # steps win


def test_a_warmup_as_long_as_the_run_is_named_in_the_engine_log_and_the_preview(caplog):
    """With 4 steps and warmup_steps 100 the learning rate stayed at 4% of optim.lr, and nothing said so."""
    from core.setup import setup_plan
    from sft_tui.format.hyper import describe_plan

    long = config(warmup_steps=100)
    assert plan_steps(long, 100).warmup_problem == (
        "the warmup (100 steps) is not shorter than the run (4 steps): the learning rate never reaches "
        "optim.lr; lower schedule.warmup_steps or schedule.warmup_ratio")
    assert plan_steps(config(warmup_steps=3), 100).warmup_problem is None
    with caplog.at_level("WARNING", logger="core"):
        setup_plan(long, 100, 1)
    assert plan_steps(long, 100).warmup_problem in caplog.messages
    assert ("warning", plan_steps(long, 100).warmup_problem) in describe_plan(long, plan_steps(long, 100), 10, "")


def test_constant_schedule_with_warmup_is_transformers_constant_with_warmup():
    assert plan_steps(config(scheduler="constant", warmup_steps=2), 100).scheduler == "constant_with_warmup"
    assert plan_steps(config(scheduler="constant"), 100).scheduler == "constant"
    assert plan_steps(config(scheduler="cosine", warmup_steps=2), 100).scheduler == "cosine"


@pytest.mark.parametrize(("epochs", "eval_every", "save_every", "max_steps"), [
    (2.5, 0, 0, None), (1, 7, 0, None), (3, 0, 4, None), (1, 5, 0, 23), (0.3, 0, 0, None), (2, 3, 3, None),
])
def test_step_lists_agree_with_the_step_by_step_rules(epochs, eval_every, save_every, max_steps):
    """The lists the app shows are the steps at which the engine's per-step checks say yes, and
    without eval.every_steps those are the epoch ends plus the last step."""
    plan = plan_steps(config(epochs=epochs, max_steps=max_steps, eval_every=eval_every, save_every=save_every), 100)
    steps = range(1, plan.total_steps + 1)
    assert plan.eval_steps == [s for s in steps if plan.evaluates_after(s)]
    assert plan.checkpoint_steps == [s for s in steps if plan.checkpoints_after(s)]
    epoch_ends = [s for s in steps if s % plan.steps_per_epoch == 0]
    expected = [s for s in steps if s % eval_every == 0] if eval_every else epoch_ends
    assert plan.eval_steps == sorted({*expected, plan.total_steps})
    if not save_every:
        assert plan.total_steps not in plan.checkpoint_steps  # the last step's weights go to final/


def test_one_wording_for_evaluations_and_checkpoints():
    assert when_evaluated(config(eval_every=50)) == "every 50 steps"
    assert when_evaluated(config()) == "at each epoch end"
    assert when_checkpointed(config(save_every=40)) == "every 40 steps"
    assert when_checkpointed(config()) == "at each eval but the last"


def test_a_run_shorter_than_its_evaluation_interval_is_said_to_evaluate_at_the_end_only():
    """A 14-step run with eval.every_steps 15 read "every 15 steps: 14 (1×)"."""
    from sft_tui.format.hyper import describe_plan

    short = config(eval_every=15, max_steps=4)
    lines = dict(describe_plan(short, plan_steps(short, 100), 10, ""))
    before = "before training, then " if short.eval.before_training else ""
    assert lines["evaluation"] == f"{before}at the end only: step 4"
    longer = config(eval_every=2, max_steps=4)
    assert "every 2 steps: 2, 4 (2×)" in dict(describe_plan(longer, plan_steps(longer, 100), 10, ""))["evaluation"]
