"""The shapes prepared data takes: one tokenized row (`Example`) and the whole result of
`prepare_data` (`PreparedData`, with its `DataStats`).

They live apart from the code that makes them because everything downstream (batching, the engine,
the evaluation, the data screen) reads them without needing to know how rows were loaded or encoded.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from dataclasses import dataclass, field

from core.config import ColumnMap


@dataclass(slots=True)
class Example:
    """One tokenized row.

    `labels` is a class id for classification, and for causal LM one target per token with -100
    where no loss is taken. Causal-LM validation rows also carry what sample generation needs: the
    prompt's token ids (ready to feed `generate`), the prompt as text for display, and the
    reference answer.
    """

    input_ids: list[int]
    labels: list[int] | int
    prompt_ids: list[int] | None = None
    prompt_text: str | None = None
    reference: str | None = None
    system_tokens: int = 0
    """Chat rows: how many leading tokens are the system prompt (the row's own system turns, or the
    default one a chat template adds), which the data preview folds so the turns themselves show."""
    position_ids: list[int] | None = None
    """A packed block (data.packing): each packed row's positions, restarting at 0 where a row
    starts, which is how transformers' models tell the rows apart and keep attention within each."""


@dataclass
class DataStats:
    """What tokenization did, for the data screen and the run log.

    Per-split counts are keyed "train" and "validation". Token lengths and totals are of the
    training rows before packing; with packing, rows_out["train"] counts blocks.
    """

    rows_in: dict[str, int]
    rows_out: dict[str, int]
    rows_truncated: dict[str, int]
    rows_dropped: dict[str, int]
    length_min: int
    length_mean: float
    length_p50: int
    length_p95: int
    length_max: int
    tokens_total: int
    """Real (non-padding) tokens in the training rows."""
    loss_tokens: int
    """Causal LM: trained tokens (core.loss.trained_tokens) of the training rows; 0 for classification."""
    label_counts: dict[str, int] | None
    """Classification: training rows per label."""


@dataclass
class PreparedData:
    """What `prepare_data` returns: the tokenized splits, the format and columns it read, and notes."""

    train: list[Example]
    validation: list[Example]
    format: str
    columns: ColumnMap
    labels: list[str] | None
    """Classification: the label names; class id i is labels[i]."""
    stats: DataStats
    warnings: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    """The distinct token ids of the training rows and the padding id, ascending (core.vocab_plan.used_ids)."""

    @functools.cached_property
    def digest(self) -> str:
        """A fingerprint of the tokenized rows of both splits, in order: a resume compares it with
        the run's start (the data file changed, or the split drew other rows), and a benchmark checks
        that its sides train the same rows. Computed once (the rows do not change after prepare_data)."""
        h = hashlib.sha256()
        for split in (self.train, self.validation):
            for ex in split:
                labels = ex.labels if isinstance(ex.labels, list) else [ex.labels]
                h.update(len(ex.input_ids).to_bytes(4, "little") + array("q", ex.input_ids).tobytes())
                h.update(array("q", labels).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]
