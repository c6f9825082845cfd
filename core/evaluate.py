"""Evaluation and sample generation, called by the training loop.

Each process evaluates its share of the validation rows; the sums behind the metrics are reduced
across processes once, so every rank sees the same numbers (early stopping must agree everywhere).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.data import collate
from core.metrics import classification_metrics, lm_metrics


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over the trained (label != -100) positions, in fp32."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


def batch_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str) -> tuple[torch.Tensor, Any]:
    """(summed loss, logits) of one batch; the caller divides by the items of the whole step."""
    if task == "classification":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        return loss, logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return lm_loss_sum(logits, batch["labels"]), logits


def count_items(examples: list[Any], task: str) -> int:
    """What a step's loss is averaged over: rows for classification, trained tokens for causal LM."""
    if task == "classification":
        return len(examples)
    return sum(sum(1 for t in ex.labels[1:] if t != -100) for ex in examples)


@torch.no_grad()
def evaluate(model, examples, *, task, num_labels, batch_size, pad_token_id, accelerator) -> dict[str, float]:
    """Metrics over this rank's share of `examples`, reduced over all ranks."""
    model.eval()
    device = accelerator.device
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    order = sorted(range(len(mine)), key=lambda i: len(mine[i].input_ids))  # less padding
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros((max(num_labels, 1), max(num_labels, 1)), device=device, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        chunk = [mine[i] for i in order[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id, task).items()}
        with accelerator.autocast():
            loss, logits = batch_loss_sum(model, batch, task)
        loss_sum += loss.double()
        if task == "classification":
            count += len(chunk)
            preds = logits.argmax(-1)
            confusion.index_put_((batch["labels"], preds), torch.ones_like(preds, dtype=torch.float64), accumulate=True)
        else:
            count += (batch["labels"][:, 1:] != -100).sum()
    loss_sum, count, confusion = (accelerator.reduce(t, "sum") for t in (loss_sum, count, confusion))
    model.train()
    if task == "classification":
        return classification_metrics(confusion.cpu(), float(loss_sum), int(count))
    return lm_metrics(float(loss_sum), int(count))


@torch.no_grad()
def generate_samples(model, tokenizer, examples, *, max_new_tokens, device) -> list[tuple[str, str, str]]:
    """Greedy continuations of validation prompts: (prompt, model output, reference)."""
    model.eval()
    out = []
    for ex in examples:
        ids = torch.tensor([ex.prompt_ids], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        out.append((ex.prompt_text, text.strip(), ex.reference))
    model.train()
    return out
