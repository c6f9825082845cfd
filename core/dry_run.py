"""`sft-tui train CONFIG --dry-run`: everything a run prepares before its first step, then the plan
and the memory the run will need, without training and without a run folder.

It goes through core.setup's steps as the engine does (data and tokenizer, the model with its freeze
map and gradient checkpointing, the optimizer, the step plan), so a config that would fail at the
start of a run fails here with the same UserError. On the CPU the peak is that of the whole process:
the estimate (core.memory) plus the process's resident memory measured just before the model loads,
which holds torch, the libraries, the tokenizer and the data. On a GPU it is the device's share.
It also says whether the frozen-prefix cache will be on (core.prefix_plan), its size, which the
peak includes, and the speed-up expected from it; and whether only the input embedding's used rows
train (core.vocab_plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.config import RunConfig
from core.device_usage import process_memory
from core.launch import local_gpus, run_gpus
from core.memory import MemoryEstimate, estimate_model, format_bytes, fsdp_shards, labelled_share
from core.memory_fit import overflow
from core.oom import step_advice
from core.plan import StepPlan, checkpoint_clock
from core.prefix_plan import PrefixPlan, blocks_name, plan_prefix_cache
from core.unfreezing import UnfreezeSchedule, Unfreezer

if TYPE_CHECKING:
    from core.vocab_plan import VocabPlan

SHOWN_STEPS = 6
"""Scheduled evaluations and checkpoints listed by step before the rest are counted only."""


@dataclass(frozen=True)
class DryRun:
    plan: StepPlan
    evaluates: bool
    """Whether there are validation rows: without them the engine skips the planned evaluations."""
    total_params: int
    trainable_params: int
    device: str
    """cpu or cuda: where the peak is."""
    batch: int
    length: int
    """Tokens in the longest micro-batch row: the longest training row, up to data.max_length."""
    estimate: MemoryEstimate
    baseline_bytes: int
    """CPU: the process's resident memory before the model loaded; 0 on a GPU."""
    prefix: PrefixPlan
    """The frozen-prefix cache the run will have (its bytes are in `estimate`)."""
    vocab: VocabPlan | None = None
    """The input embedding's rows that train where core.compact_vocab leaves the others out."""
    before_training: bool = False
    """Whether the run evaluates once before its first step (eval.before_training, with validation rows)."""
    unfreezing: UnfreezeSchedule | None = None
    """The stages of freeze.unfreezing, None when everything trains from the first step."""
    shards: int = 1
    """The GPUs FSDP spreads the model over (core.memory.fsdp_shards)."""
    clock: str = ""
    """The checkpoints the run's clock adds (core.plan.checkpoint_clock)."""
    overflow: str = ""
    """Where the peak would not fit (core.memory_fit) and what needs less; empty where it fits."""

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.estimate.total


def prepare(config: RunConfig) -> DryRun:
    """Prepare the run short of training and estimate its peak memory."""
    import torch
    from transformers import set_seed

    from core import setup
    from core.describe import describe_model
    from core.launch import launch_warnings
    from core.loss import trained_tokens
    from core.vocab_plan import plan_compact_vocab

    set_seed(config.seed)
    precision = setup.mixed_precision(config.precision)
    device = "cuda" if torch.cuda.is_available() and config.compute.devices != "cpu" else "cpu"
    tokenizer, data = setup.setup_data(config)
    baseline = process_memory()["rss_bytes"] if device == "cpu" else 0
    model, rules, summary = setup.setup_model(config, tokenizer, data)
    setup.setup_optimizer(config, model, rules, torch.device(device))
    vocab = plan_compact_vocab(config, model, len(data.token_ids), config.compute.nproc)
    plan = setup.setup_plan(config, len(data.train), config.compute.nproc)
    for warning in launch_warnings(config, device == "cpu", lambda: summary.total_params):
        setup.log.warning(warning)
    length = max(len(example.input_ids) for example in data.train)
    tokens = sum(len(example.input_ids) for example in data.train)
    trained = sum(trained_tokens(example.labels) for example in data.train) if config.task == "causal-lm" else 0
    share = labelled_share(tokens, trained, config.compute.labelled_logits_only)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's adapters are inside
    trainable = [name for name, p in inner.named_parameters() if p.requires_grad]
    cached = tokens + sum(len(example.input_ids) for example in data.validation)  # the cache keeps validation rows too
    prefix = plan_prefix_cache(inner, describe_model(inner), trainable, config, tokens=cached, length=length,
                               labelled_share=share, device=device,
                               epochs=max(1.0, plan.total_steps / plan.steps_per_epoch))  # a first epoch gains nothing
    estimate = estimate_model(model, batch=config.optim.batch_size, length=length, task=config.task,
                              checkpointing=config.compute.gradient_checkpointing,
                              activation_bytes=4 if precision == "no" else 2, device=device,
                              labelled_share=share, prefix_cache_bytes=prefix.bytes, l2sp=config.optim.l2sp_alpha > 0,
                              vocab=vocab, quantized=config.lora.quantized, cls_only=config.compute.last_block_cls_only,
                              shards=(shards := fsdp_shards(config.compute, device)))
    return DryRun(plan=plan, evaluates=bool(data.validation), total_params=summary.total_params,  # as the run counts
                  trainable_params=summary.trainable_params, device=device,
                  batch=config.optim.batch_size, length=length, estimate=estimate, baseline_bytes=baseline,
                  prefix=prefix, vocab=vocab, before_training=config.eval.before_training and bool(data.validation),
                  unfreezing=unfreezer.schedule if (unfreezer := Unfreezer.for_run(config, model, plan.steps_per_epoch))
                  else None, shards=shards, clock=checkpoint_clock(config),
                  overflow=_overflow(config, baseline + estimate.total, device))


def _overflow(config: RunConfig, peak: int, device: str) -> str:
    """The report's warning where the estimated peak is more than the run's device holds."""
    over = overflow(peak, config.compute.nproc, run_gpus(config, local_gpus()) if device == "cuda" else [])
    if over is None:
        return ""
    return (f"warning: that is more than {over.where} ({format_bytes(over.total)}): the run would run out of "
            f"memory; it needs less with: {', '.join(step_advice(config, config.optim.batch_size))}")


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    shown = ", ".join(str(step) for step in steps[:SHOWN_STEPS])
    more = f", … {len(steps) - SHOWN_STEPS} more" if len(steps) > SHOWN_STEPS else ""
    return f"{len(steps)} (after step{'s' if len(steps) > 1 else ''} {shown}{more})"


def _prefix_line(prefix: PrefixPlan, epochs: int) -> str:
    if not prefix.blocks:
        return "prefix cache: off (no frozen blocks below the lowest trained one)"
    if prefix.off:
        return f"prefix cache: off ({prefix.off})"
    speedup = prefix.speedup
    return (f"prefix cache: on, the embeddings and {blocks_name(prefix.blocks)} run once per row (training and validation), "
            f"{format_bytes(prefix.bytes)}; expected {speedup.later_epochs:.1f}x faster steps from epoch 2, "
            f"{speedup.overall:.1f}x over {epochs} epoch{'s' if epochs > 1 else ''}")


def _vocab_line(vocab: VocabPlan | None) -> list[str]:
    if vocab is None:
        return []
    return [f"compact vocabulary: on, {vocab.used:,} of the input embedding's {vocab.rows:,} rows train "
            f"(those the training rows use); {vocab.stateless_params:,} parameters hold no gradient or AdamW state"]


def _unfreezing_line(schedule: UnfreezeSchedule | None) -> list[str]:
    if schedule is None:
        return []
    starts = [f"{stage} from step {schedule.start_step(i)}" for i, stage in enumerate(schedule.stages)]
    shown = starts if len(starts) <= SHOWN_STEPS else [*starts[:SHOWN_STEPS - 1], "…", starts[-1]]
    return [f"unfreezing: {len(starts)} stages, one every {schedule.every} steps: {', '.join(shown)}"]


def report(dry: DryRun) -> str:
    """What a dry run prints: the plan, the trainable parameters and the peak memory, the last on a
    line of its own (`peak_memory_bytes: N`) for scripts."""
    plan, memory = dry.plan, dry.estimate
    share = dry.trainable_params / dry.total_params if dry.total_params else 0.0
    processes = plan.processes
    sharded = f" (FSDP: weights, gradients and AdamW state split over {dry.shards})" if dry.shards > 1 else ""
    where = (f"each GPU{sharded}" if dry.device != "cpu" else "the process (CPU)" if processes == 1
             else f"each of the {processes} processes (CPU)")
    in_all = f" ({format_bytes(processes * dry.peak_bytes)} in all)" if dry.device == "cpu" and processes > 1 else ""
    parts = [("weights", memory.weights), ("gradients", memory.gradients), ("AdamW state", memory.optimizer),
             (f"activations (batch {dry.batch} x {dry.length} tokens)", memory.activations)]
    parts += [("logits and loss", memory.logits)] if memory.logits else []
    parts += [("prefix cache", memory.prefix_cache)] if memory.prefix_cache else []
    parts += [("half-precision weight copies", memory.weight_copies)] if memory.weight_copies else []
    parts += [("L2-SP reference", memory.reference)] if memory.reference else []
    parts += [("freed memory the allocator keeps (on the CPU)", memory.allocator_kept)] if memory.allocator_kept else []
    parts += [("process baseline (torch, libraries, data)", dry.baseline_bytes)] if dry.device == "cpu" else []
    lines = [
        (f"plan: {plan.total_steps} optimizer step{'s' * (plan.total_steps != 1)} over {plan.epochs} "
         f"epoch{'s' if plan.epochs > 1 else ''} "
        f"({plan.steps_per_epoch} per epoch), {plan.effective_batch} rows per step "
        f"(batch {plan.batch_size} x accumulation {plan.grad_accum} x {plan.processes} process"
        f"{'es' if plan.processes > 1 else ''}), {plan.warmup_steps} warmup steps, {plan.scheduler} schedule"),
        f"evaluations: {('before training, then ' if dry.before_training else '') + _steps(plan.eval_steps) if dry.evaluates else 'none (no validation rows)'}",
        f"checkpoints: {_steps(plan.checkpoint_steps)}{dry.clock}",
        f"trainable parameters: {dry.trainable_params:,} of {dry.total_params:,} ({share:.2%})",
        *_unfreezing_line(dry.unfreezing),
        _prefix_line(dry.prefix, plan.epochs),
        *_vocab_line(dry.vocab),
        f"estimated peak memory of {where}: {format_bytes(dry.peak_bytes)}{in_all}",
        *(f"  {name}: {format_bytes(size)}" for name, size in parts),
        *([dry.overflow] if dry.overflow else []),
        f"peak_memory_bytes: {dry.peak_bytes}",
    ]
    return "\n".join(lines)
