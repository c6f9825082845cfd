"""Whether a draft run's frozen-prefix cache (core.prefix_cache) will be on, its size and its
expected speed-up: for the memory estimate, the dry run and the freeze-map screen.

It follows the checks PrefixCache.for_run makes at a run's start, in the same order (a prefix to
cache, nothing below it training, FSDP, dropout unless compute.frozen_eval_mode, compute.prefix_cache,
the memory limit), but by attribute reads on the model's modules: the app passes its meta skeleton
and the freeze map's trainable names, the dry run its built model, and neither imports torch for it.
The engine's own check stays the word that counts; this one tells the user beforehand, in words
that name what to change.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

from core.describe import within
from core.device_usage import gpu_stats
from core.memory import ModelShape, block_linear_params, blocks_in_backward, format_bytes, model_shape

CONFIG_DROPOUTS = ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop")
"""Config names of attention dropout, which some attention functions take as a float, not a module."""


@dataclass(frozen=True)
class PrefixSpeedup:
    """What the prefix cache is expected to save on one model and freeze map (for the freeze-map screen)."""

    cached_blocks: int
    """Blocks below the lowest trained one, run once per row; 0 where the cache cannot help."""
    later_epochs: float
    """Step-time ratio, plain over cached, in the epochs after the first (which computes the cache)."""
    overall: float
    """The same ratio over the whole run of `epochs` epochs."""
    cache_bytes_per_token: int
    """Memory the cache holds per training token (fp32 hidden states)."""


def expected_speedup(shape: ModelShape, blocks: list[str], embeddings: list[str], trainable: Iterable[str], *,
                     epochs: int, length: int, lm_head: bool = True, head_positions: float = 1.0) -> PrefixSpeedup:
    """The prefix cache's expected speed-up from the model's shape (core.memory.model_shape) and its
    freeze map (`trainable`: the trained parameter names or module paths), without torch: forward
    FLOPs per token of a block (its projections, MLP and attention over `length` tokens) and of an
    LM head over `head_positions` of the positions (a classification head: a pooler-sized layer once a
    row); a trained block's backward costs two forwards, a
    frozen block the backward passes through one, and the head's about two. Dropout and the memory
    limit are not known here: the run's log says whether the cache is on."""
    trained, passed = blocks_in_backward(blocks, embeddings, trainable)
    cached = len(blocks) - trained - passed
    h = shape.hidden
    block = 2 * block_linear_params(shape) + 4 * length * h
    head = 2 * h * (shape.vocab * head_positions if lm_head else h / length) * 3  # a classifier's pooler: once a row
    plain = len(blocks) * block + 2 * trained * block + passed * block + head
    later = plain - cached * block
    total = epochs * plain / (plain + (epochs - 1) * later) if epochs > 0 else 1.0
    return PrefixSpeedup(cached, plain / later, total, shape.hidden * 4 if cached else 0)


@dataclass(frozen=True)
class PrefixPlan:
    """The cache a run will have."""

    blocks: int
    """Frozen blocks below the lowest trained one (the prefix); 0: there is none, nothing to say."""
    bytes: int
    """What the cache will hold when on (training tokens x hidden x 4); 0 when off or the data is unknown."""
    off: str | None
    """Why it will be off, in a few words that name what to change; None when it will be on."""
    speedup: PrefixSpeedup | None
    """The expected speed-up when it is on."""

    @property
    def on(self) -> bool:
        return self.blocks > 0 and self.off is None


NO_PREFIX = PrefixPlan(0, 0, None, None)



def blocks_name(k: int) -> str:
    """The prefix's blocks as the run's log names them."""
    return "block 0" if k == 1 else f"blocks 0-{k - 1}"


def _is_dropout(module) -> bool:
    """torch's dropout modules all derive from _DropoutNd; asked by name, so torch need not be imported."""
    return any(cls.__name__ == "_DropoutNd" for cls in type(module).__mro__)


_DROPOUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> {k: prefix_dropout}: the walk over a 30-block model's modules takes milliseconds, and the
freeze summary asks on every change of the form."""


def prefix_dropout(model, description, k: int) -> str | None:
    """The dropout that the embeddings and blocks 0..k-1 of `model` (not wrapped by peft or DDP) draw
    in training mode, as core.prefix_cache finds it: dropout modules, float dropout attributes of the
    base model's modules outside the stack's trained part, and the config's attention dropout. Kept
    per model and k: a model's modules and their dropout do not change once built."""
    known = _DROPOUT.setdefault(model, {})
    if k not in known:
        known[k] = _find_dropout(model, description, k)
    return known[k]


def prefix_modules(model, description, k: int) -> dict:
    """{path: module} of the embeddings and blocks 0..k-1 with what holds them in the base model,
    less the stack's trained part, the top (final norm) and the head: what runs once per row under
    the cache, and what compute.frozen_eval_mode puts in eval mode."""
    blocks = description.blocks
    stack = blocks[0].rpartition(".")[0]
    prefix = getattr(model, "base_model_prefix", "")
    base = prefix if any(name == prefix for name, _ in model.named_children()) else ""
    skipped = set(blocks[k:] + description.top)

    def kept(path: str) -> bool:  # set lookups, not a scan of the blocks per module
        parts = path.split(".")
        return (bool(path) and (not base or parts[0] == base) and not within(stack, [path])
                and not any(".".join(parts[:i]) in skipped for i in range(1, len(parts) + 1)))

    return {path: m for path, m in model.named_modules() if kept(path)}


def _find_dropout(model, description, k: int) -> str | None:
    modules = prefix_modules(model, description, k)
    found = [f"{path} p={m.p}" for path, m in modules.items() if _is_dropout(m) and m.p > 0]
    found += [f"{path}.{key}={value}" for path, m in modules.items() for key, value in vars(m).items()
              if "dropout" in key and isinstance(value, float) and value > 0]
    text = model.config.get_text_config()
    found += [f"config {key}={getattr(text, key)}" for key in CONFIG_DROPOUTS
              if isinstance(getattr(text, key, None), float) and getattr(text, key) > 0]
    return ", ".join(dict.fromkeys(found)) or None


def _tied_head(model) -> bool:
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    return inputs is not None and outputs is not None and getattr(outputs, "weight", None) is inputs.weight


def cache_limit_bytes(max_gb: float | None, device: str) -> float | None:
    """compute.prefix_cache_max_gb, or a quarter of the memory available on the device now (the run
    takes a quarter of what is available at its start); None where NVML cannot say."""
    if max_gb is not None:
        return max_gb * 1024**3
    if device == "cuda":
        stats = gpu_stats()
        return (stats[0]["memory_total"] - stats[0]["memory_used"]) / 4 if stats else None
    return psutil.virtual_memory().available / 4


def plan_prefix_cache(model, description, trainable: Sequence[str], config, *, tokens: int | None, length: int,
                      labelled_share: float, device: str, epochs: float,
                      limit_bytes: float | None = None) -> PrefixPlan:
    """The prefix cache of a run of `config` on `model` (its structure; core.describe's
    `description`) whose trainable parameters or module paths are `trainable`. `tokens`: the
    training rows' tokens (None while the data is unknown: no size then); `length`,
    `labelled_share` and `epochs` feed the speed-up (expected_speedup). `limit_bytes`: the cache's
    limit where the caller knows it (a run, from its device); else compute.prefix_cache_max_gb or a
    quarter of what `device` has available."""
    blocks = description.blocks
    trained = [i for i, block in enumerate(blocks) if any(within(name, [block]) for name in trainable)]
    k = trained[0] if trained else len(blocks)
    if k == 0:
        return NO_PREFIX
    compute = config.compute
    below = [name for name in trainable if not within(name, blocks[k:] + description.top + description.head)]
    off = None
    embedding = next((path for path in description.embeddings if below and within(below[0], [path])), None)
    if embedding is not None:
        off = (f"the tied LM head is the embedding and trains; freeze {description.head[0]}"
               if _tied_head(model) and description.head else f"{embedding} trains; freeze it")
    elif below:
        off = f"{below[0].removesuffix('.weight').removesuffix('.bias')} trains below block {k}; freeze it"
    elif compute.distributed == "fsdp" and compute.nproc > 1:
        off = "FSDP shards the blocks (compute.distributed)"
    elif not compute.frozen_eval_mode and prefix_dropout(model, description, k):
        off = f"{blocks_name(k)} {'draws' if k == 1 else 'draw'} dropout; set compute.frozen_eval_mode"
    elif compute.prefix_cache == "off":
        off = "compute.prefix_cache is off"
    need = tokens * model_shape(model.config).hidden * 4 if tokens else 0
    limit = (limit_bytes or cache_limit_bytes(compute.prefix_cache_max_gb, device)) if off is None and need else None
    if limit is not None and need > limit:
        off = f"{format_bytes(need)} > limit {format_bytes(limit)} (compute.prefix_cache_max_gb)"
    if off is not None:
        return PrefixPlan(k, 0, off, None)
    speedup = expected_speedup(model_shape(model.config), blocks, description.embeddings, trainable,
                               epochs=epochs, length=length, lm_head=config.task == "causal-lm",
                               head_positions=labelled_share)
    return PrefixPlan(k, need, None, speedup)
