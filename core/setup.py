"""The setup steps of a run, each returning what it builds; core.engine calls them in order.

Kept apart from the loop so that each step can be read (and its failures understood) on its own:
the precision and run folder a run gets, its data, its model with the freeze map applied, the
optimizer over the trainable parameters, the step plan with its learning-rate schedule, and the
state a resumed run continues from. torch, transformers and accelerate are imported inside the
steps, as everywhere in core, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.checkpoint import TrainState, load_latest
from core.config import RunConfig, precision_problem
from core.errors import UserError
from core.plan import StepPlan, plan_steps
from core.runs import RunLock, RunPaths, claim_run_id, create_run, foreign_problem, resume_problem

log = logging.getLogger("core.engine")
"""The engine's logger: these steps are the engine's, and their warnings say so in the run's events."""


def mixed_precision(precision: str) -> str:
    """accelerate's name for the configured precision on this machine; auto is bf16 where the GPU has it."""
    import torch

    cuda = torch.cuda.is_available()
    problem = precision_problem(precision, cuda)
    if problem:
        raise problem
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def claim_run_folder(config: RunConfig, acc, resumed: RunPaths | None) -> tuple[RunPaths, RunLock | None]:
    """The run folder, locked by the main process: the resumed one once resume_problem accepts it,
    else a new one under a name that the main process picks and every process shares."""
    from accelerate.utils import broadcast_object_list

    lock = None
    if resumed is not None:
        paths = resumed
        if acc.is_main_process:
            if problem := foreign_problem(paths):
                raise problem
            lock = RunLock(paths)
            problem = resume_problem(paths)
            if problem:
                lock.release()
                raise problem
            _sweep(paths)
    else:
        holder = [claim_run_id(config) if acc.is_main_process else None]
        broadcast_object_list(holder)
        if acc.is_main_process:
            paths, lock = create_run(config, holder[0])
        else:
            paths = RunPaths(Path(config.output.runs_dir) / holder[0])
    acc.wait_for_everyone()
    return paths, lock


def _sweep(paths: RunPaths) -> None:
    """What a kill left in a run folder that nothing will reuse: half-written or replaced copies of a
    checkpoint or final/ (.tmp-*, .old-*), and checkpoints a prune had half deleted; a 7B run's
    stop-time save left tens of GB hidden for good."""
    import shutil

    from core.atomic import sweep_leftovers
    from core.manifest import superseded_remains

    removed = sweep_leftovers(paths.checkpoints) + sweep_leftovers(paths.root)
    for remains in superseded_remains(paths.checkpoints):
        shutil.rmtree(remains, ignore_errors=True)
        removed.append(remains.name)
    if removed:
        log.info("removed what an interrupted save left: %s", ", ".join(sorted(removed)))


def changed_data(paths: RunPaths, data) -> UserError | None:
    """A resumed run whose rows are not those it started with (the file was edited or regenerated):
    its plan, schedule, data position and validation split would change without a word, and "best"
    would compare losses on other rows. Runs started before the digest was recorded are not checked."""
    from core.events import RunStarted, read_events

    started = [e for e in read_events(paths.events, most_steps=0) if isinstance(e, RunStarted) and e.data_digest]
    if not started or started[-1].data_digest == data.digest:
        return None
    then = started[-1]
    now = (len(data.train), len(data.validation))
    rows = (f"{then.train_rows:,} training and {then.validation_rows:,} validation rows then, {now[0]:,} and {now[1]:,} now"
            if (then.train_rows, then.validation_rows) != now else "as many rows, with other tokens")
    return UserError(f"the data of run {paths.root} changed since it started ({rows})",
                     "put the data back as it was to resume this run, or start a new run on the data as it is")


def setup_data(config: RunConfig):
    """The tokenizer, and the training and validation rows tokenized with it."""
    from core.data import prepare_data
    from core.models import load_tokenizer, usable_positions

    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer, usable_positions(config.model, tokenizer))
    for warning in data.warnings:
        log.warning(warning)
    if cut := data.stats.rows_truncated["train"]:  # the data screen shows it in its statistics
        log.warning("%d of %d training rows are longer than the length limit (data.max_length) and are cut to it",
                    cut, data.stats.rows_out["train"])
    if not data.validation:
        log.warning("no validation rows: evaluation, early stopping and samples are skipped")
    return tokenizer, data


def setup_model(config: RunConfig, tokenizer, data, resumed: bool = False):
    """The model with fp32 master weights (autocast does the rest), the freeze map's rules for it,
    and the summary of what they left trainable. With lora.enabled the model comes back wrapped by
    peft (core.lora), the rules are the map's under LoRA, and the summary counts the adapters. A
    resumed run's checkpoint replaces a new task head's random weights next, so its log does not
    announce a new head. Under compute.gradient_checkpointing its blocks recompute their activations
    (enable_gradient_checkpointing)."""
    import torch

    from core.describe import describe_model
    from core.freeze import apply_freeze_map, effective_rules
    from core.memory_fit import load_problem
    from core.models import load_model

    lora = config.lora if config.lora.enabled else None
    if lora is None and config.lora.quantize != "none":  # QLoRA asked for, LoRA left off: not what was meant
        log.warning("lora.quantize %s is set but lora.enabled is false: this run is a full-precision fine-tune "
                    "without adapters; set lora.enabled: true for QLoRA", config.lora.quantize)
    if lora is not None:
        from core.lora import lora_problem, quantize_problem

        if problem := quantize_problem(lora, torch.cuda.is_available()) or lora_problem(lora):
            raise problem
    if problem := load_problem(config, _params(config, tokenizer, data)):  # before the kernel ends the loading
        raise problem
    model = load_model(config.model, config.task, data.labels, dtype=torch.float32,
                       pad_token_id=tokenizer.pad_token_id, announce_new_head=not resumed,
                       quantize=lora.quantize if lora is not None else "none")
    if config.data.packing:
        from core.packing import check_packing

        check_packing(model)
    description = describe_model(model)
    if lora is not None:
        from core.lora import apply_lora, lr_advice

        model, plan, summary = apply_lora(model, description, config)
        rules = plan.rules
        log.info("LoRA adapters on %d layers (r %d); trained in full: %s", len(plan.targets), lora.r,
                 ", ".join(plan.modules_to_save) or "nothing")
        if advice := lr_advice(config):
            log.warning(advice)
    else:
        rules = effective_rules(config.freeze, description)
        summary = apply_freeze_map(model, rules)
    for warning in summary.warnings:
        log.warning(warning)
    if config.compute.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.task == "classification":  # checkpointed blocks run as they are: neither swap takes them
        from core.cls_only import cls_only_block, swappable_blocks

        if config.compute.last_block_cls_only and cls_only_block(model) is not None:
            log.info("the last block runs at the first token only, the one the head reads (compute.last_block_cls_only)")
        if config.compute.unpadded_encoder and swappable_blocks(model):
            from core.unpadded import groups_by_length

            order = "" if groups_by_length(config, model) else "; batches are random, as Trainer's (data.group_by_length)"
            log.info("the encoder's blocks skip the padding of batches that are a tenth or more padding "
                     f"(compute.unpadded_encoder){order}")
    return model, rules, summary


def _params(config: RunConfig, tokenizer, data) -> int:
    """The parameters the model will have, counted on its skeleton on the meta device: no weights
    read (33 ms for a 64B config)."""
    from core.models import build_skeleton

    skeleton = build_skeleton(config.model, config.task, data.labels, tokenizer.pad_token_id)
    return sum(p.numel() for p in skeleton.parameters())


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing (transformers' default, named here because it matters) works when a
    block's input needs no gradient, so transformers' hook that makes the embeddings' output require
    one (needed only by the reentrant kind) is removed again: with it, backward would run through
    every frozen block below the trained ones for nothing."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(model).__name__} does not support gradient checkpointing",
                        "set compute.gradient_checkpointing: false")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()


def setup_optimizer(config: RunConfig, model, rules, device, compact=None):
    """AdamW over the trainable parameters, in the freeze map's groups, each at its lr_scale; without
    weight decay under L2-SP (core.l2sp), which replaces it. `compact`: the model's CompactEmbedding
    (core.compact_vocab), which counts the decay the optimizer's steps owe its rows left out."""
    import torch

    from core.freeze import param_groups

    optim = config.optim
    l2sp = optim.l2sp_alpha > 0 or optim.l2sp_beta > 0
    if l2sp and optim.weight_decay:
        log.info("L2-SP (alpha %g, beta %g) replaces weight decay: optim.weight_decay %g is not applied",
                 optim.l2sp_alpha, optim.l2sp_beta, optim.weight_decay)
    groups = param_groups(model, rules, 0.0 if l2sp else optim.weight_decay)
    for group in groups:
        group["lr"] = optim.lr * group["lr_scale"]
    # torch picks its per-tensor Python loop on CPU unless asked; the fused kernel made MiniLM's
    # optimizer step 5x faster (BENCHMARKS.md), and it is what Trainer uses by default too.
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                  fused=device.type in ("cpu", "cuda") or None)
    if compact is not None:
        compact.follow(optimizer)
    return optimizer


def setup_plan(config: RunConfig, train_rows: int, processes: int) -> StepPlan:
    """The step plan; refused when the rows make no batch for some process."""
    plan = plan_steps(config, train_rows, processes)
    if plan.micro_batches_per_epoch == 0:
        raise UserError(f"{train_rows} training rows make no full batch per process "
                        f"(optim.batch_size {config.optim.batch_size}, {processes} processes)",
                        "lower optim.batch_size or add data")
    if plan.warmup_problem:
        log.warning(plan.warmup_problem)
    return plan


def setup_scheduler(plan: StepPlan, optimizer):
    """The learning-rate schedule over the plan's steps, its warmup included."""
    from transformers import get_scheduler

    return get_scheduler(plan.scheduler, optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps)


def restore_state(paths: RunPaths, model, optimizer, scheduler) -> tuple[TrainState, Path]:
    """Load the newest usable checkpoint into model, optimizer and scheduler (and every RNG); its
    training state and folder. Every process calls it: under FSDP rank 0 reads the checkpoint and
    each process takes its shards (core.checkpoint), so all of them agree on which one loads."""
    checkpoint, state = load_latest(paths.checkpoints, model, optimizer, scheduler, warn=log.warning)
    log.info("resumed from %s", checkpoint)
    return state, checkpoint
