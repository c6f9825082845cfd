"""Evaluation and sample generation, called by the training loop.

Each process evaluates its share of the validation rows; the sums behind the metrics are reduced
across processes once, so every rank sees the same numbers (early stopping must agree everywhere).
"""

from __future__ import annotations

import torch

from core.data import collate
from core.loss import batch_loss_sum, count_items
from core.metrics import classification_metrics, lm_metrics


@torch.no_grad()
def evaluate(model, examples, *, task, num_labels, batch_size, pad_token_id, accelerator,
             labelled_only: bool = False) -> dict[str, float]:
    """Metrics over this rank's share of `examples`, reduced over all ranks. `labelled_only`
    (compute.labelled_logits_only): causal-LM logits at the labelled positions only (core.loss)."""
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
            loss, logits = batch_loss_sum(model, batch, task, labelled_only=labelled_only)
        loss_sum += loss.double()
        count += count_items(chunk, task)
        if task == "classification":
            preds = logits.argmax(-1)
            confusion.index_put_((batch["labels"], preds), torch.ones_like(preds, dtype=torch.float64), accumulate=True)
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
