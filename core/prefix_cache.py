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
Whether a run has the cache, and what it will gain, is decided without torch in core.prefix_plan,
which the dry run and the freeze-map screen ask too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

from core.memory import format_bytes
from core.prefix_plan import blocks_name, cache_limit_bytes, plan_prefix_cache, prefix_modules

log = logging.getLogger("core.engine")
"""The engine's logger: the cache's line is part of the run's start, and shows in its events."""


class _Captured(Exception):
    """Raised by the hook on the last prefix block: the caching pass needs nothing after it."""

    def __init__(self, output) -> None:
        super().__init__()
        self.output = output


def inner_model(model):
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
        self.validation_key = len(self.lengths)
        """Validation row i is cached under key validation_key + i (after the training rows)."""
        self.real = list(stack[:k]) if active else []
        self.stubs = [_stub_class()(block, i == 0) for i, block in enumerate(self.real)]

    @classmethod
    def for_run(cls, config, acc, model, train_rows, validation_rows=()) -> PrefixCache:
        """The cache of a run (off, or only keeping the frozen prefix in eval mode, where it cannot
        help), decided by core.prefix_plan as the dry run and the freeze screen decide it, with one
        log line saying whether it is on, its size, or why not. Validation rows are cached too, under
        keys after the training rows' (`validation_key`): every evaluation runs the same prefix."""
        from accelerate.utils import DistributedType

        from core.describe import describe_model

        inner = inner_model(model)
        desc = describe_model(inner)
        if acc.distributed_type == DistributedType.FSDP or not desc.blocks:  # nothing a user could change
            log.debug("prefix cache off: %s", "FSDP shards the blocks" if desc.blocks else "no block stack found")
            return cls()
        trainable = [name for name, p in inner.named_parameters() if p.requires_grad]  # a tied head: the embedding's name
        lengths = [len(ex.input_ids) for ex in [*train_rows, *validation_rows]]
        limit = _limit_bytes(config.compute.prefix_cache_max_gb, acc.device)
        plan = plan_prefix_cache(inner, desc, trainable, config, tokens=sum(lengths), length=max(lengths, default=1),
                                 labelled_share=1.0, device=acc.device.type, epochs=1, limit_bytes=limit)
        if not plan.blocks:
            log.debug("prefix cache off: block 0 trains, nothing below it to cache")
            return cls()
        k = plan.blocks
        eval_modules = list(prefix_modules(inner, desc, k).values()) if config.compute.frozen_eval_mode else []
        if not plan.on:
            log.log(logging.WARNING if "prefix_cache_max_gb" in plan.off else logging.INFO, "prefix cache off: %s", plan.off)
            return cls(eval_modules=eval_modules)
        stack = inner.get_submodule(desc.blocks[0].rpartition(".")[0])
        log.info("prefix cache on: the embeddings and %s of %d run once per row, then their output is "
                 "reused: up to %s for %d rows (limit %s)%s", blocks_name(k), len(stack), format_bytes(plan.bytes),
                 len(lengths), format_bytes(limit), "; frozen prefix in eval mode (no dropout)" if eval_modules else "")
        cache = cls(inner, stack, k, eval_modules, lengths, limit, active=True)
        cache.validation_key = len(train_rows)
        return cache

    @contextlib.contextmanager
    def serving(self, rows: list[int], batch: dict) -> Iterator[None]:
        """Around one micro-batch's forward and backward: `rows` are the keys of its rows (a training
        row's index, or validation_key + a validation row's), in the order of `batch`'s rows. Caches the rows not cached yet, then lets the forward
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

        from core.data.batching import model_inputs

        missing = [j for j, row in enumerate(rows) if row not in self.store]
        if not missing:
            return
        width = max(self.lengths[rows[j]] for j in missing)
        index = torch.tensor(missing, device=batch["input_ids"].device)
        hook = self.stack[self.k - 1].register_forward_hook(self._capture)
        try:
            with torch.no_grad():
                self.inner(**model_inputs(batch, index, width))
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


def _limit_bytes(max_gb: float | None, device) -> float:
    """compute.prefix_cache_max_gb, or a quarter of what the cache's own device has available now
    (on a GPU torch asks that device; core.prefix_plan's NVML reading knows only the first GPU)."""
    if max_gb is None and device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0] / 4
    return cache_limit_bytes(max_gb, "cpu")
