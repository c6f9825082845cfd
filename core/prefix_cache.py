"""The frozen-prefix activation cache: the blocks below the lowest trained one run once per row.

With a freeze map that trains only the top of a model, everything below the lowest trained block
(the embeddings and blocks 0..k-1, "the prefix") computes the same output for a given row in every
epoch, as long as nothing in it trains and it draws no dropout. The cache computes that output once
per training row, under no_grad (no autograd bookkeeping), and keeps it unpadded; in every training
forward the prefix blocks are replaced for that forward by stubs: block 0's returns the batch's
cached hidden states, right-padded as core.data.collate pads (zeros at padded positions, which the
attention mask hides and no loss reads), the others pass their input on. The real blocks are back
in place after each micro-batch, so checkpoints, evaluation, samples and export see the real model.
Validation rows are not cached: evaluation runs the whole model (core.evaluate).

Swapping entries of the block list, not wrapping the model, keeps the model's own forward in charge
(masks, rotary positions, per-layer attention types by index, logits_to_keep, DDP and peft
wrappers), so it works for any architecture whose block list core.describe finds. Not chosen:
skipping the embeddings too (no generic way to feed a base model its mid-stack input; the lookup is
cheap), and caching under FSDP (sharded blocks gather their weights in their own forward).
`expected_speedup` estimates the gain from the model shape and the freeze map without torch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from core.memory import ModelShape, blocks_in_backward, format_bytes

log = logging.getLogger("core.engine")
"""The engine's logger: the cache's line is part of the run's start, and shows in its events."""
CONFIG_DROPOUTS = ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop")
"""Config names of attention dropout, which some attention functions take as a float, not a module."""


class _Captured(Exception):
    """Raised by the hook on the last prefix block: the caching pass needs nothing after it."""

    def __init__(self, output) -> None:
        super().__init__()
        self.output = output


def _within(path: str, ancestors: Iterable[str]) -> bool:
    return any(path == a or path.startswith(a + ".") for a in ancestors)


def _inner_model(model):
    """The transformers model inside accelerate's (DDP) and peft's wrappers; peft's adapters are
    injected into it in place, so running it runs them."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


class PrefixCache:
    """One run's cache; `serving(rows, batch)` wraps the forward and backward of a micro-batch.
    Built by `for_run`, which also decides whether the cache is on (`active`) and logs why."""

    def __init__(self, inner=None, stack=None, k: int = 0, eval_modules: list | None = None,
                 lengths: list[int] | None = None, limit_bytes: float = 0.0, active: bool = False) -> None:
        self.inner, self.stack, self.k = inner, stack, k
        self.eval_modules = eval_modules or []
        self.lengths = lengths or []
        self.limit_bytes, self.active = limit_bytes, active
        self.store: dict[int, object] = {}
        self.bytes = 0
        self.prefix_rows = 0
        """Rows the prefix has run for: a row runs once, however many epochs."""
        self.tuple_len = 0  # the real blocks' output: 0 a tensor, else a tuple of that length
        self.real = list(stack[:k]) if active else []
        self.stubs = [_stub_class()(block, i == 0) for i, block in enumerate(self.real)]

    @classmethod
    def for_run(cls, config, acc, model, train_rows) -> PrefixCache:
        """The cache of a run (off, or only keeping the frozen prefix in eval mode, where it cannot
        help), with one log line saying whether it is on, its size, or why not."""
        inner = _inner_model(model)
        found = _prefix(inner, config, acc)
        if isinstance(found, NoPrefix):  # said only where the user's freeze map could give one
            log.log(logging.INFO if found.actionable else logging.DEBUG, "prefix cache off: %s", found.reason)
            return cls()
        stack, k, modules, dropout = found
        eval_modules = modules if config.compute.frozen_eval_mode else []
        lengths = [len(ex.input_ids) for ex in train_rows]
        why = (f"the frozen blocks below block {k} draw dropout ({dropout}); set compute.frozen_eval_mode: true "
               "to run them without it" if dropout and not eval_modules else None)
        need = sum(lengths) * inner.config.get_text_config().hidden_size * 4  # fp32 hidden states
        limit = _limit_bytes(config.compute.prefix_cache_max_gb, acc.device)
        if why is None and config.compute.prefix_cache == "off":
            why = "compute.prefix_cache is off"
        if why is None and need > limit:
            log.warning("prefix cache off: the outputs of %s for %d rows would need %s, over the limit of "
                        "%s (compute.prefix_cache_max_gb); training recomputes them every epoch",
                        _blocks(k), len(lengths), format_bytes(need), format_bytes(limit))
            return cls(eval_modules=eval_modules)
        if why is not None:
            log.info("prefix cache off: %s", why)
            return cls(eval_modules=eval_modules)
        log.info("prefix cache on: the embeddings and %s of %d run once per row, then their output is "
                 "reused: up to %s for %d rows (limit %s)%s", _blocks(k), len(stack), format_bytes(need), len(lengths),
                 format_bytes(limit), "; frozen prefix in eval mode (no dropout)" if eval_modules else "")
        return cls(inner, stack, k, eval_modules, lengths, limit, active=True)

    @contextlib.contextmanager
    def serving(self, rows: list[int], batch: dict) -> Iterator[None]:
        """Around one micro-batch's forward and backward: `rows` are the indices of its training
        rows, in the order of `batch`'s rows. Caches the rows not cached yet, then lets the forward
        start from the cached outputs; the real blocks and training flags are restored after."""
        flags = [(m, m.training) for m in self.eval_modules]
        for m, _ in flags:
            m.training = False  # each module by itself: eval() would also turn its children's off
        try:
            if self.active:
                self._fill(rows, batch)
            if self.active:  # still: _fill turns the cache off when it outgrows its limit
                self._install(rows, batch["input_ids"].shape[1])
            yield
        finally:
            for i, block in enumerate(self.real):
                if self.stack[i] is not block:
                    self.stack[i] = block
            for m, training in flags:
                m.training = training

    def _fill(self, rows: list[int], batch: dict) -> None:
        """Run the prefix under no_grad for the rows of `batch` not cached yet, stopping after block
        k-1, and keep each row's hidden states up to its length."""
        import torch

        missing = [j for j, row in enumerate(rows) if row not in self.store]
        if not missing:
            return
        width = max(self.lengths[rows[j]] for j in missing)
        index = torch.tensor(missing, device=batch["input_ids"].device)
        hook = self.stack[self.k - 1].register_forward_hook(self._capture)
        try:
            with torch.no_grad():
                self.inner(input_ids=batch["input_ids"][index, :width],
                           attention_mask=batch["attention_mask"][index, :width])
            raise RuntimeError("the model's forward did not run its block list")  # a bug, not a user error
        except _Captured as captured:
            hidden = captured.output
        finally:
            hook.remove()
        self.prefix_rows += len(missing)
        for j, h in zip(missing, hidden):
            row = rows[j]
            kept = h[: self.lengths[row]].clone()  # a copy: a view would keep the whole batch alive
            self.store[row] = kept
            self.bytes += kept.numel() * kept.element_size()
        if self.bytes > self.limit_bytes:
            log.warning("prefix cache off: it outgrew its limit of %s (compute.prefix_cache_max_gb) at %d rows; "
                        "training recomputes the frozen blocks from here on", format_bytes(self.limit_bytes),
                        len(self.store))
            self.store.clear()
            self.active = False

    def _capture(self, module, args, output) -> None:
        if isinstance(output, tuple):
            if any(x is not None for x in output[1:]):
                raise RuntimeError(f"{type(module).__name__} returns more than its hidden states; "
                                   "set compute.prefix_cache: off")
            self.tuple_len = len(output)
            output = output[0]
        raise _Captured(output.detach())

    def _install(self, rows: list[int], width: int) -> None:
        """Put the stubs in place of blocks 0..k-1, block 0's holding this batch's hidden states."""
        import torch.nn.functional as F
        from torch.nn.utils.rnn import pad_sequence

        hidden = pad_sequence([self.store[row] for row in rows], batch_first=True)
        if hidden.shape[1] < width:
            hidden = F.pad(hidden, (0, 0, 0, width - hidden.shape[1]))
        self.stubs[0].value = hidden if self.tuple_len == 0 else (hidden,) + (None,) * (self.tuple_len - 1)
        for i, stub in enumerate(self.stubs):
            self.stack[i] = stub


@functools.cache
def _stub_class():
    """The stub's class, made on first use: torch is imported only by a run that uses the cache."""
    from torch import nn

    class Stub(nn.Module):
        """Stands in for a prefix block during a cached forward: block 0's returns `value` (the
        cached hidden states), the others their input. Attributes it lacks come from the real block
        (some models read a block's attention type from it)."""

        def __init__(self, real, first: bool) -> None:
            super().__init__()
            self.__dict__["real"] = real  # not a submodule: the stub must hold no parameters
            self.first = first
            self.value = None

        def __getattr__(self, name: str):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.__dict__["real"], name)

        def forward(self, hidden_states, *args, **kwargs):
            return self.value if self.first else hidden_states

    return Stub


@dataclass(frozen=True)
class NoPrefix:
    """Why a run has no frozen prefix to cache; `actionable` where a freeze rule could give it one."""

    reason: str
    actionable: bool = False


def _prefix(inner, config, acc):
    """(block list, k, the prefix's modules, its dropout or None) of a model whose embeddings and
    blocks 0..k-1 are frozen below a trained block k (k = the number of blocks when none trains),
    or why there is no such prefix to cache."""
    from accelerate.utils import DistributedType
    from torch import nn

    from core.describe import describe_model

    if acc.distributed_type == DistributedType.FSDP:
        return NoPrefix("FSDP shards the blocks, which gather their weights in their own forward")
    desc = describe_model(inner)
    if not desc.blocks:
        return NoPrefix("no stack of transformer blocks found in the model")
    trainable = [name for name, p in inner.named_parameters() if p.requires_grad]  # a tied head under the embedding's name
    trained = [i for i, block in enumerate(desc.blocks) if any(_within(name, [block]) for name in trainable)]
    k = trained[0] if trained else len(desc.blocks)
    if k == 0:
        first = next(name for name in trainable if _within(name, desc.blocks[:1]))
        return NoPrefix(f"block 0 trains ({first}): nothing below the lowest trained block to cache")
    below = [name for name in trainable if not _within(name, desc.blocks[k:] + desc.top + desc.head)]
    if below:
        embedding = " (an embedding; a tied LM head is the embedding)" if _within(below[0], desc.embeddings) else ""
        return NoPrefix(f"{below[0]}{embedding} trains below block {k}, so the blocks below it need a backward pass",
                        actionable=True)
    stack_path = desc.blocks[0].rpartition(".")[0]
    base = inner.base_model_prefix if any(name == inner.base_model_prefix for name, _ in inner.named_children()) else ""
    modules = {path: m for path, m in inner.named_modules()  # the base model's, less the stack's ancestors
               if path and (not base or _within(path, [base])) and not _within(stack_path, [path])
               and not _within(path, desc.blocks[k:] + desc.top)}
    dropout = [f"{path} p={m.p}" for path, m in modules.items()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    dropout += [f"{path}.{key}={value}" for path, m in modules.items() for key, value in vars(m).items()
                if "dropout" in key and isinstance(value, float) and value > 0]
    text = inner.config.get_text_config()
    dropout += [f"config {key}={getattr(text, key)}" for key in CONFIG_DROPOUTS
                if isinstance(getattr(text, key, None), float) and getattr(text, key) > 0]
    return inner.get_submodule(stack_path), k, list(modules.values()), ", ".join(dict.fromkeys(dropout)) or None


def _blocks(k: int) -> str:
    return "block 0" if k == 1 else f"blocks 0-{k - 1}"


def _limit_bytes(max_gb: float | None, device) -> float:
    """compute.prefix_cache_max_gb, or a quarter of what the cache's device has available now."""
    if max_gb is not None:
        return max_gb * 1024**3
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0] / 4
    import psutil

    return psutil.virtual_memory().available / 4


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
    LM head over `head_positions` of the positions; a trained block's backward costs two forwards, a
    frozen block the backward passes through one, and the head's about two. Dropout and the memory
    limit are not known here: the run's log says whether the cache is on."""
    trained, passed = blocks_in_backward(blocks, embeddings, trainable)
    cached = len(blocks) - trained - passed
    h, kv = shape.hidden, shape.hidden * shape.kv_heads // shape.heads
    block = 2 * (2 * h * h + 2 * h * kv + (3 if shape.rms_norm else 2) * h * shape.intermediate) + 4 * length * h
    head = 2 * h * shape.vocab * head_positions * 3 if lm_head else 0
    plain = len(blocks) * block + 2 * trained * block + passed * block + head
    later = plain - cached * block
    total = epochs * plain / (plain + (epochs - 1) * later) if epochs > 0 else 1.0
    return PrefixSpeedup(cached, plain / later, total, shape.hidden * 4 if cached else 0)
