"""The training loss, and the one definition of a trained token.

The loss, the data statistics ("N of M tokens trained") and the app's data preview must agree on
which label positions carry loss, or the preview would promise tokens the loss never sees. Causal
LM predicts token i from the tokens before it, so the loss shifts the labels by one and position 0
never carries loss: `trained_tokens` counts exactly the positions `lm_loss_sum` sums over.

torch is imported inside the loss functions only, so the app can count trained tokens at
start-up without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.errors import UserError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
"""Label of a token that carries no loss (the value PyTorch's cross-entropy skips)."""


def trained_positions(labels: Sequence[int]) -> list[bool]:
    """Which positions of one causal-LM row's `labels` carry loss: those after the first whose
    label is not IGNORE_INDEX (the first has nothing before it to be predicted from)."""
    return [i > 0 and label != IGNORE_INDEX for i, label in enumerate(labels)]


def trained_tokens(labels: Sequence[int]) -> int:
    """How many positions of a row carry loss (trained_positions): what the data stats, the data
    preview and the loss all count."""
    return sum(trained_positions(labels))


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over the trained positions (see trained_tokens), in fp32."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def batch_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str) -> tuple[torch.Tensor, Any]:
    """(summed loss, logits) of one batch; the caller divides by the items of the whole step."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if task == "classification":
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), logits
    return lm_loss_sum(logits, batch["labels"]), logits


def count_items(examples: list[Any], task: str) -> int:
    """What a loss sum is averaged over: rows for classification, trained tokens for causal LM."""
    if task == "classification":
        return len(examples)
    return sum(trained_tokens(ex.labels) for ex in examples)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the weights since the last checkpoint are not trustworthy."""


def raise_if_diverged(loss: float, step: int) -> None:
    """Stop a run whose training loss is NaN or infinite: every step after it would only spoil the
    weights, and the checkpoint about to be written with them."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the training loss became {loss} by step {step}; the run was stopped",
            "lower optim.lr, keep optim.max_grad_norm > 0, or use precision fp32; "
            "the last checkpoint (if any) holds the last good weights",
        )
