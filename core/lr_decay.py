"""Layer-wise learning-rate decay (Howard & Ruder, 2018; ELECTRA's and many BERT recipes' choice):
the top block trains at the base learning rate, each block below at `decay` times the one above,
the embeddings lowest of all, so the general features of the lower layers move least.

It is a generator of ordinary freeze rules with lr_scale, not a setting of its own: the user sees
the rules it wrote in the freeze map, edits or deletes them, and a YAML config holds nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from core.config import FreezeRule
from core.describe import ModelDescription, embedding_parts, tied_to_head


FLOOR = 0.1
"""The lowest lr scale the default decay leaves the bottom layer: below it a layer barely moves."""


def default_decay(blocks: int) -> float:
    """The decay offered first: 0.8, the usual choice for BERT-sized stacks of 6-12 blocks, unless it
    would leave the embeddings (decay ** blocks) below FLOOR; then the decay that leaves them at it,
    rounded up to 2 decimals. 0.8 over 30 blocks would train the embeddings at x0.0012 of the base
    lr, frozen in all but name; 0.93 leaves them at x0.11."""
    exact = FLOOR ** (1 / max(blocks, 1))
    return max(0.8, math.ceil(exact * 100) / 100)


def decayed_modules(description: ModelDescription) -> list[str]:
    """The modules layer-wise decay writes rules for, from the bottom: the embeddings with what holds
    them below the stack (core.describe.embedding_parts), then the blocks. An embedding tied to the
    LM head is left out: it is the head, which keeps the base learning rate."""
    tied = tied_to_head(description)
    return [path for path in embedding_parts(description.blocks, description.embeddings) if path not in tied] + \
        list(description.blocks)


def layerwise_lr_rules(description: ModelDescription, decay: float,
                       trains: Callable[[str], bool]) -> list[FreezeRule]:
    """Rules giving block i of n (from the bottom) lr_scale decay^(n-1-i), and the embeddings
    decay^n; for the modules that `trains` (the current map) says train, so no rule unfreezes a
    frozen one. The head and the modules above the blocks keep their scale (1 unless a rule says
    otherwise). Raises ValueError for a decay outside (0, 1]."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer-wise lr decay must be in (0, 1], not {decay}")
    blocks, n = description.blocks, len(description.blocks)
    scales = {block: decay ** (n - 1 - i) for i, block in enumerate(blocks)}
    scales.update({path: decay**n for path in decayed_modules(description) if path not in scales})
    return [FreezeRule(match=path, train=True, lr_scale=round(scale, 6))
            for path, scale in scales.items() if trains(path)]
