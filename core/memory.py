"""Memory: the estimate of what training will need (what the process and the GPUs use now is
core.device_usage's).

The estimate (`estimate_peak`) adds up what one optimizer step holds at its peak: the weights; the
gradients and AdamW state of the trainable parameters only; the activations that autograd keeps for
the backward pass, by batch, length and the blocks the backward pass goes through (and, under mixed
precision, the half-precision copies of their weights), with a BERT-style classifier's last block
counted as it runs at the first token (compute.last_block_cls_only); a causal LM's logits with the
loss buffers over them (at the labelled positions only under compute.labelled_logits_only); the
frozen-prefix cache (core.prefix_cache) when it will be on; and, for a LoRA or
gradient-checkpointed run on the CPU, the freed memory that the C allocator keeps
(`allocator_kept`). It is arithmetic on numbers from the model's config
(`model_shape`) and its freeze map (`blocks_in_backward`), so the app computes it without torch; the
per-block constants were counted with torch's saved-tensor hooks on Llama, BERT and GPT-2 blocks
(bench/memory_estimate.py checks the total against measured peaks). A CPU process also holds torch
and its libraries, the tokenizer and the data: that baseline is measured, not estimated
(core.device_usage.process_memory before the model loads), and added by the caller that knows it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


ADAMW_STATE_BYTES = 8
"""AdamW keeps two fp32 moments (exp_avg, exp_avg_sq) per trainable parameter."""
MASTER_COPY_BYTES = 4
"""Half-precision weights train against an fp32 master copy of each trainable parameter."""
LOSS_BUFFER_BYTES = 12
"""Per logit of a causal LM at the backward pass's start: the loss's fp32 log-probabilities, their
gradient and the logits' gradient (the logits themselves are held at the activation precision)."""
ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 4, "quick_gelu": 2}
"""Intermediate-sized tensors an activation function keeps for backward when written as several
torch operations (GPT-2's tanh GELU); a fused one (gelu, relu, silu, gelu_pytorch_tanh) keeps one."""


def estimate_training_memory(
    total_params: int, trainable_params: int, param_bytes: int = 4, optimizer: str = "adamw"
) -> dict[str, int]:
    """Bytes for weights, gradients, optimizer state and their total: the part of the estimate that
    does not depend on the batch (`estimate_peak` adds the activations and logits)."""
    if optimizer != "adamw":
        raise ValueError(f"no memory model for optimizer {optimizer!r}")
    weights = total_params * param_bytes
    gradients = trainable_params * param_bytes
    state = trainable_params * (ADAMW_STATE_BYTES + (MASTER_COPY_BYTES if param_bytes < 4 else 0))
    return {"weights": weights, "gradients": gradients, "optimizer": state, "total": weights + gradients + state}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a transformer that its activations depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    rms_norm: bool
    """RMSNorm models (Llama, Mistral, Qwen, Gemma, Phi-3) also have a gated MLP (gate, up, down);
    LayerNorm ones (BERT, GPT-2, RoBERTa, DistilBERT) a plain one (in, out)."""
    activation: str
    attention_dropout: float
    """Above 0, attention on the CPU materialises its probabilities (and their dropout) per head."""


def _first(config, names: tuple[str, ...], default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def model_shape(config) -> ModelShape:
    """The ModelShape of a transformers config (its text part), read from the attribute names the
    common architectures use; plain attribute reads, so the app can call it without torch."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    return ModelShape(
        layers=int(text.num_hidden_layers),
        hidden=hidden,
        intermediate=int(_first(text, ("intermediate_size", "n_inner", "hidden_dim"), 4 * hidden)),
        heads=heads,
        kv_heads=int(_first(text, ("num_key_value_heads",), heads)),
        vocab=int(text.vocab_size),
        rms_norm=hasattr(text, "rms_norm_eps"),
        activation=str(_first(text, ("hidden_act", "activation_function", "activation"), "gelu")),
        attention_dropout=float(_first(text, ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"), 0.0)),
    )


def within(name: str, path: str) -> bool:
    """Whether the parameter or module `name` is `path` or inside it."""
    return name == path or name.startswith(path + ".")


def blocks_in_backward(blocks: list[str], embeddings: list[str], trainable: Iterable[str]) -> tuple[int, int]:
    """(trained, passed): the blocks that hold trainable parameters, and the frozen blocks that the
    backward pass still goes through because something below them trains (an embedding, or a tied
    LM head, which is the embedding). Blocks below the lowest one that needs a gradient keep no
    activations at all. `trainable`: names of the trainable parameters (or module paths)."""
    trainable = list(trainable)
    trained = [any(within(name, block) for name in trainable) for block in blocks]
    if any(within(name, path) for name in trainable for path in embeddings):
        lowest = 0
    else:
        lowest = trained.index(True) if any(trained) else len(blocks)
    passed = sum(1 for held in trained[lowest:] if not held)
    return sum(trained), passed


def block_activations(shape: ModelShape, length: int, trained: bool, device: str = "cpu") -> int:
    """Elements per token that one block keeps for backward: a trained block keeps the inputs of its
    linear layers for their weight gradients; a frozen block the backward pass goes through keeps
    only what its input gradient needs (norms, activation function, attention)."""
    h, i, kv = shape.hidden, shape.intermediate, shape.hidden * shape.kv_heads // shape.heads
    act = ACTIVATION_SAVES.get(shape.activation, 1)
    if trained:
        per_token = 8 * h + 2 * kv + i * (act + (3 if shape.rms_norm else 1))
    else:
        per_token = 6 * h + kv + (h if shape.rms_norm else 0) + i * (act + (1 if shape.rms_norm else 0))
    if shape.attention_dropout > 0 and device == "cpu":  # probabilities, dropout mask, dropped probabilities
        per_token += 3 * shape.heads * length
    return per_token


def first_token_block_activations(shape: ModelShape, trained: bool, device: str = "cpu") -> int:
    """Elements per token that a last block computed at the first token only (core.cls_only) keeps
    for backward: the keys and values, which every position has, and in a trained block the input
    their weight gradients need; the rest is the first position's, per row (block_activations at
    length 1)."""
    per_token = 2 * shape.hidden * shape.kv_heads // shape.heads + (shape.hidden if trained else 0)
    if shape.attention_dropout > 0 and device == "cpu":  # one query row's probabilities, mask, dropped copy
        per_token += 3 * shape.heads
    return per_token


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of an optimizer step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    prefix_cache: int = 0
    """The frozen prefix's cached outputs (PrefixPlan.bytes): full once the first epoch has run."""
    weight_copies: int = 0
    """Half-precision copies of weights that mixed precision keeps for the backward pass (weight_copies)."""
    reference: int = 0
    """L2-SP's fp32 copy of the trained pretrained weights' starting values (core.l2sp)."""
    allocator_kept: int = 0
    """Freed memory the process still holds: a LoRA or checkpointed run on the CPU (see allocator_kept)."""

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.prefix_cache
                + self.weight_copies + self.reference + self.allocator_kept)


@dataclass(frozen=True)
class Adapters:
    """Elements per token of a model's LoRA adapters that the estimate counts."""

    kept: int
    """What they keep for backward beyond their blocks' own: each adapter's down-projection output
    (rank wide), under lora.dropout its own dropped copy of the input, and under DoRA two outputs of
    the layer's width (DORA_OUTPUTS)."""
    outputs: int
    """The adapted layers' output widths, summed: the size of the temporaries their forward frees
    (allocator_kept)."""


NO_ADAPTERS = Adapters(0, 0)
"""A model without LoRA."""

DORA_OUTPUTS = 2
"""Output-sized tensors a DoRA layer keeps for backward per token: peft scales the base layer's
output and the adapter's by the magnitude over the weight norm, and the magnitude's gradient needs
both (peft's DoraLinearLayer.forward). Measured: without them the estimate was 24-36% low on DoRA
runs of MiniLM and a SmolLM2-shaped Llama, with them -12% to +0% (BENCHMARKS.md, Memory estimate)."""


KEPT_OUTPUTS = 2
"""Output-sized tensors per LoRA-adapted layer and token that a CPU process keeps (allocator_kept)."""


def allocator_kept(tokens: int, adapters: Adapters, recomputed_block: int, activation_bytes: int,
                   device: str) -> int:
    """Freed memory a training process holds on the CPU beyond its live tensors: glibc's malloc keeps
    freed memory in its heap, which goes back to the system only from its top, and raises its mmap
    threshold to each freed tensor's size, so later activations come from that heap too.

    - LoRA: peft's forward makes three temporaries of each adapted layer's output size (the base
      layer's output, the adapter's and its scaled copy) and frees them at once; a full fine-tune
      allocates its gradients and AdamW state into them, while LoRA's few megabytes of them, spread
      through the heap, cannot fill it. Measured, the process keeps about two output-sized tensors
      per adapted layer and token: summing two of them in place lowered MiniLM's peak by that much,
      and over ten LoRA configurations (MiniLM and a SmolLM2-shaped Llama, batch 4-64, all-linear
      and attention targets, dropout, a top-n map) the estimate with this term was within 13%.
    - Gradient checkpointing: the backward pass recomputes each block's activations and frees them
      after that block's backward, with gradients allocated between them; the heap keeps about one
      such block (`recomputed_block`, elements per token) on top of the live one. Without it the
      estimate was up to 32% low on MiniLM at batch 64, with it within 17% over seven
      configurations.

    BENCHMARKS.md, Memory estimate. A GPU's peak (max_memory_allocated) counts live tensors only."""
    if device != "cpu":
        return 0
    return tokens * (adapters.outputs * KEPT_OUTPUTS + recomputed_block) * activation_bytes


def block_linear_params(shape: ModelShape) -> int:
    """Weights of one block's linear layers: attention's query, key, value and output projections and
    the MLP's two (plain) or three (gated) matrices."""
    kv = shape.hidden * shape.kv_heads // shape.heads
    return 2 * shape.hidden * (shape.hidden + kv) + (3 if shape.rms_norm else 2) * shape.hidden * shape.intermediate


def weight_copies(shape: ModelShape, backward_blocks: int, lm_head: bool, activation_bytes: int) -> int:
    """Bytes of the half-precision weight copies a mixed-precision step keeps until its backward pass.

    Autocast casts each fp32 weight as a linear layer uses it, and the layer's backward needs that
    copy for its input's gradient, trained or frozen: so every block the backward pass goes through
    keeps a copy of its linear weights, and a causal LM one of its LM head (the embedding when tied).
    Counted with saved-tensor hooks on a Llama, full and LoRA alike; a 0.5B Qwen2 on an H200 (bf16,
    LoRA) peaked 27% above the estimate without them (BENCHMARKS.md, GPU check). In fp32 the layers
    keep the weights themselves: nothing more. `backward_blocks`: blocks whose copies live at once
    (one under gradient checkpointing, which recomputes a block at a time)."""
    if activation_bytes >= 4:
        return 0
    return (backward_blocks * block_linear_params(shape) + (shape.vocab * shape.hidden if lm_head else 0)) * activation_bytes


def estimate_peak(total_params: int, trainable_params: int, shape: ModelShape, blocks: tuple[int, int], *,
                  batch: int, length: int, task: str, checkpointing: bool = False,
                  activation_bytes: int = 4, device: str = "cpu", adapters: Adapters = NO_ADAPTERS,
                  labelled_share: float = 1.0, prefix_cache_bytes: int = 0, reference_params: int = 0,
                  quantized: bool = False, first_token_top: str | None = None, shards: int = 1) -> MemoryEstimate:
    """The peak of one training step on a micro-batch of `batch` rows of `length` tokens.

    `blocks`: (trained, passed) from blocks_in_backward. Weights are fp32 (the engine keeps fp32
    master weights; mixed precision casts on the fly), activations `activation_bytes` each (2 under
    bf16/fp16 autocast). With gradient checkpointing a block keeps only its input and one block at
    a time is recomputed in full during the backward pass. `adapters`: the LoRA adapters' sizes
    (adapter_sizes). `labelled_share`: the share of positions whose logits a causal LM computes
    (labelled_share()); the LM head's input stays per token, as the model computes the final
    hidden states everywhere. `prefix_cache_bytes`:
    PrefixPlan.bytes. `reference_params`: parameters L2-SP keeps a starting copy of (core.l2sp).
    `quantized`: the blocks' linear layers are 4-bit (QLoRA), which keep their packed weights for the
    backward pass, not half-precision copies. `first_token_top`: "trained" or "passed" where the top
    block, trained or passed through, runs at the first token only (core.cls_only.first_token_top;
    never under checkpointing, which this then ignores), None where it runs whole. `shards`: the GPUs
    FSDP spreads the model over (fsdp_shards), 1 where each holds all of it."""
    static = {name: size // shards for name, size in estimate_training_memory(total_params, trainable_params).items()}
    if shards > 1:
        # FSDP gathers a whole unit to compute it, in the compute precision (accelerate's policy):
        # the root's own parameters (embeddings, final norm, head) for the whole step, and two blocks
        # at once (the one computing, the next prefetched), whose gradients are whole until they are
        # reduce-scattered. The gathered weights are what the layers compute with: no autocast copies.
        block = block_linear_params(shape)
        static["weights"] += (max(total_params - shape.layers * block, 0) + 2 * block) * activation_bytes
        static["gradients"] += (2 * block * activation_bytes) if trainable_params else 0
    tokens = batch * length
    trained, passed = blocks
    recomputed = 0
    if checkpointing:
        per_token = (trained + passed) * shape.hidden
        if trained or passed:
            recomputed = block_activations(shape, length, trained > 0, device) + adapters.kept // max(trained, 1)
            per_token += recomputed
    else:
        per_token = (trained * block_activations(shape, length, True, device)
                     + passed * block_activations(shape, length, False, device) + adapters.kept)
    per_row = 0
    if first_token_top and (trained or passed) and not checkpointing:
        top_trained = first_token_top == "trained"
        per_token += (first_token_block_activations(shape, top_trained, device)
                      - block_activations(shape, length, top_trained, device))
        # its first position whole, and what reads the block's output (the pooler) reads that one
        per_row += block_activations(shape, 1, top_trained, device) + shape.hidden
    elif trained or passed:
        per_token += shape.hidden  # the final norm's input
    if task == "causal-lm" and trainable_params:
        per_token += shape.hidden  # the LM head's input
    elif trainable_params:
        per_row += shape.hidden  # a classification head reads one vector a row
    in_backward = min(trained + passed, 1) if checkpointing else trained + passed
    copies = 0 if shards > 1 else weight_copies(shape, 0 if quantized else in_backward,
                                                task == "causal-lm" and trainable_params > 0, activation_bytes)
    labelled = batch * math.ceil(length * labelled_share)  # positions with logits, whole ones per row
    logits = labelled * shape.vocab * (activation_bytes + LOSS_BUFFER_BYTES) if task == "causal-lm" else 0
    return MemoryEstimate(static["weights"], static["gradients"], static["optimizer"],
                          (tokens * per_token + batch * per_row) * activation_bytes, logits, prefix_cache_bytes,
                          copies, reference_params * 4 // shards,
                          allocator_kept(tokens, adapters, recomputed, activation_bytes, device))


def fsdp_shards(compute, device: str) -> int:
    """The GPUs a run's compute section spreads the model over: its processes under FSDP on GPUs,
    else 1 (DDP copies the whole model to each; accelerate shards no CPU processes)."""
    return compute.nproc if compute.distributed == "fsdp" and compute.nproc > 1 and device != "cpu" else 1


def labelled_share(tokens: int, trained: int, labelled_logits_only: bool) -> float:
    """The share of a causal LM's positions that get logits: those predicting a trained token
    (core.loss.trained_tokens; `trained` of the data's `tokens`) under compute.labelled_logits_only,
    else every position. 1 while the data is unknown (tokens 0): an estimate may only err high."""
    return min(1.0, trained / tokens) if labelled_logits_only and tokens else 1.0


def _out_width(layer) -> int:
    """Output features of a linear layer, an embedding or GPT-2's Conv1D (`nf`), as peft reads them."""
    for name in ("out_features", "embedding_dim", "nf"):
        if getattr(layer, name, None) is not None:
            return int(getattr(layer, name))
    return int(layer.weight.shape[0])


def adapter_sizes(model) -> Adapters:
    """The Adapters of a model peft wrapped: its LoRA layers with a trainable adapter (DoRA's have a
    magnitude vector)."""
    from torch import nn

    kept = outputs = 0
    for module in model.modules():
        down, dropout = getattr(module, "lora_A", None), getattr(module, "lora_dropout", None)
        if not isinstance(down, nn.ModuleDict) or not isinstance(dropout, nn.ModuleDict):
            continue
        trained = [name for name, layer in down.items() if layer.weight.requires_grad]
        embedded = [name for name, p in getattr(module, "lora_embedding_A", {}).items() if p.requires_grad]
        width = _out_width(module)
        outputs += width if trained or embedded else 0
        dora = getattr(module, "lora_magnitude_vector", {})
        kept += sum(DORA_OUTPUTS * width for name in trained + embedded if name in dora)
        for name in trained:
            kept += down[name].weight.shape[0]
            if isinstance(dropout[name], nn.Dropout) and dropout[name].p > 0:
                kept += down[name].weight.shape[1]
    return Adapters(kept, outputs)


def estimate_model(model, *, batch: int, length: int, task: str, checkpointing: bool,
                   activation_bytes: int = 4, device: str = "cpu", labelled_share: float = 1.0,
                   prefix_cache_bytes: int = 0, l2sp: bool = False, vocab=None, quantized: bool = False,
                   cls_only: bool = False, shards: int = 1) -> MemoryEstimate:
    """estimate_peak for a built model (LoRA adapters and the freeze map applied): its parameter
    counts, and the blocks its trainable parameters put in the backward pass. `l2sp`: L2-SP keeps
    a reference copy of the trained pretrained weights (optim.l2sp_alpha above 0). `vocab`: the run's
    core.vocab_plan.VocabPlan, whose rows left out hold no gradient or optimizer state, and whose
    used rows train as a copy beside the embedding. `quantized`: QLoRA's 4-bit base. `cls_only`:
    compute.last_block_cls_only is on (core.cls_only.first_token_top says where it applies). `shards`:
    fsdp_shards."""
    from core.cls_only import first_token_top
    from core.describe import describe_model
    from core.l2sp import reference_params

    description = describe_model(model)
    trainable = [name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    blocks = blocks_in_backward(description.blocks, description.embeddings, trainable)
    total, trained = description.total_params, description.trainable_params
    reference = reference_params(model) if l2sp else 0
    if vocab is not None:
        total, trained, reference = vocab.counted(total, trained, reference)
    return estimate_peak(total, trained, model_shape(model.config), blocks,
                         batch=batch, length=length, task=task, checkpointing=checkpointing,
                         activation_bytes=activation_bytes, device=device, adapters=adapter_sizes(model),
                         labelled_share=labelled_share, prefix_cache_bytes=prefix_cache_bytes,
                         reference_params=reference, quantized=quantized, shards=shards,
                         first_token_top=first_token_top(model, description.blocks, trainable) if cls_only else None)


def format_bytes(n: float) -> str:
    """`1.2 GB`: binary multiples with the short unit names nvidia-smi and most tools show."""
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while abs(n) >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{int(n)} B" if step == 0 else f"{n:.1f} {units[step]}"
