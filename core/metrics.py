"""Evaluation metrics from sums that can be added across batches and processes.

Classification keeps a confusion matrix, causal LM a loss sum and a token count: both reduce across
DDP ranks with a single all-reduce and give exact corpus-level numbers (not means of batch means).
"""

from __future__ import annotations

import math

import torch

LOWER_IS_BETTER = {"loss", "perplexity"}


def classification_metrics(confusion: torch.Tensor, loss_sum: float, rows: int) -> dict[str, float]:
    """Loss, accuracy and macro-F1 from a confusion matrix (rows: true class, columns: predicted)."""
    confusion = confusion.double()
    tp = confusion.diag()
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = actual > 0
    return {
        "loss": loss_sum / max(rows, 1),
        "accuracy": float(tp.sum() / confusion.sum().clamp(min=1)),
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def lm_metrics(loss_sum: float, tokens: int) -> dict[str, float]:
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` beats `best`. NaN is never better (a diverged evaluation must not become the
    best checkpoint), and anything finite beats a NaN best kept from before this rule."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best
