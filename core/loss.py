"""The training loss, and the one definition of a trained token.

The loss, the data statistics ("N of M tokens trained") and the app's data preview must agree on
which label positions carry loss, or the preview would promise tokens the loss never sees. Causal
LM predicts token i from the tokens before it, so the loss shifts the labels by one and position 0
never carries loss: `trained_tokens` counts exactly the positions `lm_loss_sum` sums over.

torch is imported inside the loss functions only, so the app can count trained tokens at
start-up without it.
"""

from __future__ import annotations

import functools
import inspect
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


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions whose logits `lm_loss_sum` uses, those t whose next label
    labels[t + 1] is trained (the shift); the last position predicts nothing."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@functools.cache
def _keeps_logits_by_mask(model_class: type) -> bool:
    """Whether a causal LM's forward takes `logits_to_keep` (transformers' slice_logits_to_keep,
    which reads a 2-D bool tensor as a per-row mask). Remote-code models may lack it."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def keeps_labelled_logits(model: torch.nn.Module) -> bool:
    """Whether `model`, through its DDP/FSDP and peft wrappers, can compute the logits of the
    labelled positions only: the transformers model inside takes `logits_to_keep`."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    if hasattr(inner, "get_base_model"):  # peft's PeftModel
        inner = inner.get_base_model()
    return _keeps_logits_by_mask(type(inner))


def labelled_lm_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """The causal-LM loss of `lm_loss_sum` with the output head applied only at the positions that
    predict a trained label: (summed loss, [N, V] logits of those N positions).

    Only a fraction of an SFT batch's positions carry a label, yet full logits cost B x T x V at the
    activation precision plus their fp32 copy and gradients, the largest tensors of a small model's
    step. The mask goes to the model as `logits_to_keep`: transformers 5 slices the final hidden
    states with it (slice_logits_to_keep: a 2-D bool mask keeps per-row positions, flattened to
    [N, H]) right before the head, so the head (tied or not, frozen or trained, LoRA or not) sees N
    rows and whatever the model does to its logits afterwards (Gemma 2's soft-capping, Cohere's
    logit_scale) still applies, element by element. The call goes through the model's own forward,
    so DDP's gradient hooks, FSDP's unsharding and peft's adapters all run as in the plain path.
    Not chosen: an int or 1-D `logits_to_keep` (one set of positions for every row: the union of
    the rows' answer spans, which with right padding and prompts of different lengths is most of
    the sequence), or calling the decoder body and the head by hand (it would bypass the wrappers'
    forwards and every model's own post-processing of its logits)."""
    import torch.nn.functional as F

    from core.data.batching import model_inputs

    keep = predicting_positions(batch["labels"])
    logits = model(**model_inputs(batch), logits_to_keep=keep).logits
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    if logits.shape[:-1] != targets.shape:
        raise UserError(f"the model returned logits of shape {tuple(logits.shape)} for {targets.numel()} labelled "
                        "positions: it does not slice them by a logits_to_keep mask",
                        "set compute.labelled_logits_only: false")
    return F.cross_entropy(logits.float(), targets, reduction="sum"), logits


def batch_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str, *,
                   labelled_only: bool = False, cls_only: bool = False,
                   unpadded: bool = False) -> tuple[torch.Tensor, Any]:
    """(summed loss, logits) of one batch; the caller divides by the items of the whole step.
    `labelled_only` (compute.labelled_logits_only): a causal LM computes logits at the labelled
    positions only (labelled_lm_loss_sum), where the model supports it; `cls_only`
    (compute.last_block_cls_only): a BERT-family classifier computes its last block at the first
    token only (core.cls_only); `unpadded` (compute.unpadded_encoder): its blocks at the real tokens
    only (core.unpadded). The same loss either way."""
    import torch.nn.functional as F

    from core.cls_only import last_block_at_cls
    from core.data.batching import model_inputs
    from core.unpadded import real_tokens_only

    if task == "causal-lm" and labelled_only and keeps_labelled_logits(model):
        return labelled_lm_loss_sum(model, batch)
    if task == "classification":
        with last_block_at_cls(model, cls_only), real_tokens_only(model, unpadded):
            logits = model(**model_inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), logits
    logits = model(**model_inputs(batch)).logits
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
