"""Train only the rows of the input embedding that the training data looks up.

In every step, an input embedding's gradient is zero in each row that no training token looks up,
yet a full fine-tune allocates, fills, clips and steps all of them: MiniLM has 30,522 rows and 3,000
short texts use 3,962 of them. AdamW moves a row whose gradient was always zero by its weight decay
alone: its moments stay zero, so w <- w * (1 - lr * weight_decay) in each step that has a gradient.

`CompactEmbedding` takes the embedding's place. Its trained parameter holds only the used rows, under
the embedding's own name (the freeze map, L2-SP and the optimizer see it as the embedding), and the
other rows wait in a frozen buffer while their pending decay is multiplied into one number. Whenever
the weights are read (`state_dict`: checkpoints, the exported model) every row is written back, so
what is saved is the whole embedding a run without it would have saved, the same numbers up to float
rounding (tests/test_compact_vocab.py). Loading a whole embedding splits it again.

It applies where it is exact and pays (core.vocab_plan): `compute.compact_vocab: auto`, one
process (DDP would broadcast the frozen rows each step), no LoRA, a plain `nn.Embedding` that trains
and shares its weight with no other module (a tied output head's gradient covers every row), and
training rows that use at most half of its rows. A GPU saves the memory of the unused rows' gradients
and AdamW moments (12 bytes a parameter); a CPU saves most of the time, too (BENCHMARKS.md).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import UserError
from core.vocab_plan import plan_compact_vocab

log = logging.getLogger("core.engine")
"""The engine's logger: whether the run compacts its vocabulary is part of its start."""


def compact_vocab(config, model, token_ids: list[int], processes: int) -> CompactEmbedding | None:
    """Put a CompactEmbedding in place of `model`'s input embedding where core.vocab_plan allows, for
    the `token_ids` of the training rows (core.data's PreparedData.token_ids); call it before the
    optimizer is built, then `follow` the optimizer."""
    plan = plan_compact_vocab(config, model, len(token_ids), processes)
    if plan is None:
        return None
    compact = CompactEmbedding(model.get_input_embeddings(), token_ids)
    model.set_input_embeddings(compact)
    log.info("compact vocabulary on: the training rows use %s of the input embedding's %s rows; only those "
             "carry gradients and optimizer state (%s fewer parameters stepped)",
             f"{plan.used:,}", f"{plan.rows:,}", f"{plan.stateless_params:,}")
    return compact


def saved_weight_bytes(model: nn.Module) -> int:
    """The bytes of the weights that a checkpoint or an export writes. A CompactEmbedding writes its
    whole embedding back while its parameter holds only the used rows, so counting parameters alone
    put the ETA's checkpoint estimate 46 MB short on the MiniLM demo."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, CompactEmbedding):
            total += (module.full.numel() - module.weight.numel()) * module.full.element_size()
    return total


class CompactEmbedding(nn.Module):
    """An nn.Embedding whose parameter holds only the rows `used` (sorted ids); see the module's text."""

    def __init__(self, embedding: nn.Embedding, used: list[int]) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.weight.shape
        full = embedding.weight.detach()
        used_t = torch.tensor(used, dtype=torch.long, device=full.device)
        index = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=full.device)
        index[used_t] = torch.arange(len(used), device=full.device)
        self.register_buffer("full", full, persistent=False)  # the original storage: no copy
        self.register_buffer("used", used_t, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.weight = nn.Parameter(full[used_t].clone())
        pad = int(index[embedding.padding_idx]) if embedding.padding_idx is not None else -1
        self.padding_idx = pad if pad >= 0 else None  # a padding row that no batch holds stays in `full`
        self.decay = 1.0
        """The product of (1 - lr * weight_decay) over the steps since `full` last took it."""
        self.register_state_dict_post_hook(_write_back)
        self.register_load_state_dict_pre_hook(_split)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.index[input_ids]
        inside = F.embedding(rows.clamp(min=0), self.weight, self.padding_idx)
        outside = F.embedding(input_ids, self.full)  # ids no training row uses: evaluation, generation
        if self.decay != 1.0:
            outside = outside * self.decay
        return torch.where((rows >= 0).unsqueeze(-1), inside, outside)

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """The whole embedding as it now stands: the pending decay and the trained rows written into `full`."""
        if self.decay != 1.0:
            self.full.mul_(self.decay)
            self.decay = 1.0
        self.full.index_copy_(0, self.used, self.weight.detach().to(self.full.dtype))
        return self.full

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """Count the weight decay that `optimizer`'s steps give the rows left out, and refuse a loaded
        optimizer state kept for a different set of rows (the training data changed under a resumed run)."""
        # by position: loading a state dict (as accelerate's prepare does) replaces the group dicts
        at = next(i for i, g in enumerate(optimizer.param_groups) if any(p is self.weight for p in g["params"]))

        def stepped(stepped_optimizer, _args, _kwargs) -> None:
            if self.weight.grad is not None:  # AdamW skips (and does not decay) a weight without a gradient
                group = stepped_optimizer.param_groups[at]
                self.decay *= 1.0 - group["lr"] * group["weight_decay"]

        def loaded(loaded_optimizer) -> None:
            moments = loaded_optimizer.state.get(self.weight, {}).get("exp_avg")
            if moments is not None and moments.shape != self.weight.shape:
                raise UserError(f"the checkpoint's optimizer state is for {moments.shape[0]:,} rows of the input "
                                f"embedding, but this run's training rows use {self.weight.shape[0]:,}: the "
                                "training data changed since the run started",
                                "resume with the data the run started with, or start a new run")

        optimizer.register_step_post_hook(stepped)
        optimizer.register_load_state_dict_post_hook(loaded)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, training {self.weight.shape[0]} rows"


def _write_back(module: CompactEmbedding, state_dict: dict, prefix: str, _metadata) -> None:
    """state_dict holds the whole embedding under the embedding's own name, as without compaction."""
    state_dict[prefix + "weight"] = module.merged().detach()


def _split(module: CompactEmbedding, state_dict: dict, prefix: str, *_args) -> None:
    """Loading a whole embedding (a checkpoint) fills `full` and leaves the used rows to the parameter."""
    weight = state_dict.get(prefix + "weight")
    if weight is not None and weight.shape[0] == module.num_embeddings:
        with torch.no_grad():
            module.full.copy_(weight)
        module.decay = 1.0
        state_dict[prefix + "weight"] = weight[module.used.to(weight.device)]
