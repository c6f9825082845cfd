"""Whether a run trains only the input-embedding rows its training rows use (core.compact_vocab), and
what that saves, decided without building anything: the engine, the dry run and the freeze-map
screen's memory estimate ask it alike. torch is imported only to check the embedding's class, which
only a caller that holds a model (or its skeleton on the meta device) does."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

log = logging.getLogger("core.engine")
"""The engine's logger: whether the run compacts its vocabulary is part of its start."""

MAX_USED_SHARE = 0.5
"""Above this share of rows used, the rows left out would save too little to be worth a second lookup."""


@dataclass(frozen=True)
class VocabPlan:
    """How many rows of the input embedding train, of how many, each `width` parameters wide."""

    used: int
    rows: int
    width: int

    @property
    def trained_params(self) -> int:
        """Parameters of the used rows: the trained copy of them that the run holds beside the embedding."""
        return self.used * self.width

    @property
    def stateless_params(self) -> int:
        """Parameters the freeze map trains that get no gradient and no optimizer state."""
        return (self.rows - self.used) * self.width

    def counted(self, total: int, trainable: int, reference: int) -> tuple[int, int, int]:
        """(parameters held, parameters with a gradient and AdamW state, parameters of L2-SP's
        starting copy) of a model whose counts without compaction are `total`, `trainable` and
        `reference` (0 without L2-SP): what the memory estimate counts. L2-SP copies the trained
        parameter, so only the used rows."""
        return (total + self.trained_params, trainable - self.stateless_params,
                max(reference - self.stateless_params, 0) if reference else 0)


def used_ids(examples: Iterable, pad_token_id: int | None) -> list[int]:
    """Every token id a training batch can hold: the rows' own, and the id core.data.collate pads with."""
    ids = {0 if pad_token_id is None else pad_token_id}
    for example in examples:
        ids.update(example.input_ids)
    return sorted(ids)


def plan_compact_vocab(config, model, used: int, processes: int, trainable: Collection[str] | None = None,
                       announce: bool = True) -> VocabPlan | None:
    """The plan for `model`'s input embedding under `config` when the training rows use `used` token
    ids, or None where every row trains as usual. `trainable`: the parameter names the freeze map
    trains, for a model whose requires_grad flags it has not set (the freeze screen's skeleton);
    default: those flags. `announce`: log why not where that is news."""
    from torch import nn

    if config.compute.compact_vocab == "off" or config.lora.enabled:
        return None
    embedding = model.get_input_embeddings()
    if type(embedding) is not nn.Embedding:
        return None  # a subclass may scale or extend its lookup
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return None
    names = [name for name, p in model.named_parameters(remove_duplicate=False) if p is embedding.weight]
    if len(names) > 1:
        return None  # tied to the output head, whose gradient reaches every row
    if not (embedding.weight.requires_grad if trainable is None else names[0] in trainable):
        return None  # frozen: nothing to save
    rows, width = embedding.weight.shape
    if used > MAX_USED_SHARE * rows:
        return None
    if processes > 1:
        if announce:
            log.info("compact vocabulary off: it runs in one process (compute.nproc %d); every row of the input "
                     "embedding trains", processes)
        return None
    return VocabPlan(used=used, rows=rows, width=width)
