"""The draft's memory estimate: what a training step of the run Start would launch needs, from the
model's config, the freeze map (with LoRA's adapters), the hyperparameter form and, once loaded, the
data. Step 3 shows it with its parts; step 5 warns when it is more than the run's device holds.

It depends on the freeze map and on the form (batch size, max_length, gradient checkpointing,
precision), so it is asked on every change of the session: arithmetic on the model's config and the
map's trainable parameter names, no torch. It counts the data's trained-token share (a causal LM's
logits are only computed where a label is) and the prefix cache's memory once the data has loaded;
before that it errs high on logits and leaves the cache's size out. Under L2-SP (optim.l2sp_alpha
above 0) it counts the starting copy of the trained pretrained weights. Once the data is known,
input-embedding rows that no training row uses carry no gradient or optimizer state where
core.vocab_plan says the run will leave them out."""

from __future__ import annotations

from dataclasses import dataclass

from core.cls_only import first_token_top
from core.freeze import resolve
from core.launch import run_gpus
from core.memory import MemoryEstimate, blocks_in_backward, estimate_peak, fsdp_shards, labelled_share, model_shape
from core.memory_fit import Overflow, overflow
from core.prefix_plan import PrefixPlan, plan_prefix_cache
from core.vocab_plan import VocabPlan, plan_compact_vocab
from sft_tui.widgets.freeze.state import reference_params, tensor_index


@dataclass(frozen=True)
class TrainedMap:
    """What the freeze map trains, as the estimate needs it: trainable names or module paths, the
    (trained, passed) blocks, the parameters L2-SP would keep a starting copy of, and how the last
    block counts at the first token (core.cls_only.first_token_top)."""

    trainable: list[str]
    blocks: tuple[int, int]
    reference: int
    top: str | None


def trained_map(session) -> TrainedMap:
    """The session's freeze map (under LoRA, its adapters' targets and the modules it saves)."""
    model, preview = session.model, session.freeze_preview
    description = model.description
    states = resolve(model.skeleton, preview.rules)
    if preview.lora is not None:  # the adapters train inside the layers they target, and the map's full modules
        trainable = preview.lora.targets + preview.lora.modules_to_save
    else:
        trainable = [name for name, state in states.items() if state.train]
    # A classification head starts random (load_model counts it new); a causal LM's is pretrained.
    new = description.head if model.task == "classification" else []
    return TrainedMap(trainable, blocks_in_backward(description.blocks, description.embeddings, trainable),
                      reference_params(tensor_index(model.skeleton), states, new),
                      first_token_top(model.skeleton, description.blocks, trainable))


@dataclass(frozen=True)
class DraftMemory:
    estimate: MemoryEstimate
    """The peak of a step as the draft is."""
    other: MemoryEstimate
    """The same with gradient checkpointing switched the other way."""
    prefix: PrefixPlan
    vocab: VocabPlan | None
    device: str
    """cuda or cpu: where the peak is."""
    length: int
    """The rows' length the activations are for: data.max_length, up to the model's positions."""


def draft_memory(session, trained: TrainedMap) -> DraftMemory:
    """The estimate of the session's draft, whose model is loaded and whose freeze map is valid."""
    model, config, summary = session.model, session.config, session.freeze_summary
    device = "cuda" if session.cuda and config.compute.devices != "cpu" else "cpu"
    half = config.precision in ("bf16", "fp16") or (config.precision == "auto" and device == "cuda")
    length = min(config.data.max_length, model.max_positions or config.data.max_length)
    stats = session.data.stats if session.data is not None else None
    share = labelled_share(stats.tokens_total, stats.loss_tokens, config.compute.labelled_logits_only) if stats else 1.0
    prefix = plan_prefix_cache(model.skeleton, model.description, trained.trainable, config,
                               tokens=stats.tokens_total if stats else None, length=length, labelled_share=share,
                               device=device, epochs=config.schedule.epochs)
    args = {"batch": config.optim.batch_size, "length": length, "task": config.task,
            "activation_bytes": 2 if half else 4, "device": device,
            "adapters": session.freeze_preview.adapters, "labelled_share": share,
            "prefix_cache_bytes": prefix.bytes,
            "quantized": config.lora.quantized,
            "first_token_top": trained.top if config.compute.last_block_cls_only else None,
            "shards": fsdp_shards(config.compute, device)}
    shape, on = model_shape(model.skeleton.config), config.compute.gradient_checkpointing
    held = summary.total_params + summary.originals_params  # peft keeps the originals of what trains in full
    stepped, reference = summary.trainable_params, trained.reference if config.optim.l2sp_alpha else 0
    vocab = (plan_compact_vocab(config, model.skeleton, len(session.data.token_ids), config.compute.nproc,
                                trainable=trained.trainable, announce=False) if session.data is not None else None)
    if vocab is not None:  # once the data is known, the rows it leaves out (core.vocab_plan)
        held, stepped, reference = vocab.counted(held, stepped, reference)
    estimate, other = (estimate_peak(held, stepped, shape, trained.blocks, checkpointing=checkpointing,
                                     reference_params=reference, **args) for checkpointing in (on, not on))
    return DraftMemory(estimate, other, prefix, vocab, device, length)


def draft_overflow(session, memory: DraftMemory) -> Overflow | None:
    """Where the draft's peak would not fit (core.memory_fit), asked anew each time: the GPUs and
    the RAM are the machine's, not the draft's."""
    config = session.config
    gpus = run_gpus(config, session.gpus) if memory.device == "cuda" else []
    return overflow(memory.estimate.total, config.compute.nproc, gpus)
