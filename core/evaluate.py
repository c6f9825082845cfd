"""Evaluation and sample generation, called by the training loop.

Each process evaluates its share of the validation rows; the sums behind the metrics (a loss sum,
an item count, a confusion matrix: core.metrics) are reduced across processes once, so every rank
sees the same numbers (early stopping must agree everywhere). Sums do not depend on which rows go
together or in what order, so the rows are grouped by length for speed without changing a metric.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from core.data import collate
from core.loss import batch_loss_sum, count_items
from core.metrics import classification_metrics, lm_metrics

EVAL_ROWS_PER_TRAINING_ROW = {"classification": 4, "causal-lm": 2}
"""The most evaluation rows a batch takes per training micro-batch row (eval.batch_size unset),
from core.memory's estimate. Without autograd a block's tensors are freed as the next block starts,
so an evaluation row holds about one block's working set where a training row holds the saved
tensors of every block in the backward pass: MiniLM full fine-tune at 16 x 128 tokens keeps 327 MB
of activations, an evaluation of 4 x 16 rows 228 MB. A causal LM's logits dominate, and an
evaluation keeps 8 bytes a logit (the logit and its fp32 log-probability) where training keeps 16
(core.memory.LOSS_BUFFER_BYTES adds the gradients): twice the rows. The factor is further capped
by the blocks in the backward pass (default_batch_size)."""


MIN_FILL = 0.5
"""The shortest row of an evaluation batch is at least this share of its longest (eval_batches)."""


def default_batch_size(model, task: str, micro_batch: int) -> int:
    """Rows per evaluation batch when eval.batch_size is unset: the training micro-batch times the
    task's factor (EVAL_ROWS_PER_TRAINING_ROW), but at most times the number of blocks the backward
    pass goes through (core.memory.blocks_in_backward) and at least once: a top-2 run keeps only two
    blocks' activations in training, and a head-only run none, so the forward's own working set is
    all the room there is."""
    from core.describe import describe_model
    from core.memory import blocks_in_backward

    description = describe_model(model)
    trainable = [name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    trained, passed = blocks_in_backward(description.blocks, description.embeddings, trainable)
    return micro_batch * max(1, min(EVAL_ROWS_PER_TRAINING_ROW[task], trained + passed))


def eval_batches(lengths: list[int], batch_size: int, processes: int, rank: int) -> list[list[int]]:
    """Process `rank`'s evaluation batches (row indices). All rows sorted by length, longest first
    (running out of memory shows at the first batch), are cut into groups of at most `processes` x
    `batch_size` rows whose shortest row is at least MIN_FILL of their longest; each group into
    batches of near-equal size, a multiple of `processes` of them, dealt out in turn. So at most
    half a batch is padding (C1's 120 docstring rows in one batch were 3.3 times their real tokens
    once padded, in these groups 1.4 times), the ranks get rows of like length (like work), and every rank runs the same
    number of forward passes: FSDP gathers weights in each forward and DDP broadcasts buffers in
    the first, collectives that hang if one rank runs a forward more. A batch is empty only when a
    group has fewer rows than batches (fewer than processes, or one-row batches that do not go
    round): evaluate still runs its forward."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or k - start == processes * batch_size or lengths[order[k]] < MIN_FILL * lengths[order[start]]:
            groups.append(order[start:k])
            start = k
    mine = []
    for group in groups:
        rows = len(group)
        count = processes * math.ceil(rows / (processes * batch_size))
        mine += [group[j * rows // count : (j + 1) * rows // count] for j in range(rank, count, processes)]
    return mine


@torch.no_grad()
def evaluate(model, examples, *, task, num_labels, batch_size, pad_token_id, accelerator,
             labelled_only: bool = False, cls_only: bool = False, unpadded: bool = False,
             prefix=None) -> dict[str, float]:
    """Metrics over this rank's share of `examples` (eval_batches), reduced over all ranks.
    `labelled_only` (compute.labelled_logits_only): causal-LM logits at the labelled positions only
    (core.loss); `cls_only` (compute.last_block_cls_only): a BERT-family classifier's last block at
    the first token only (core.cls_only); `unpadded` (compute.unpadded_encoder): its blocks at the real
    tokens only (core.unpadded). `prefix`: the run's core.prefix_cache.PrefixCache, which
    keeps the frozen prefix's output for each validation row from the first evaluation on
    (`examples` are the validation rows). no_grad rather than inference_mode: a model that caches a
    tensor during a forward (rotary tables) would hand later training steps an inference tensor,
    which autograd refuses."""
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros((max(num_labels, 1), max(num_labels, 1)), device=device, dtype=torch.float64)
    with _eval_mode(model):
        lengths = [len(ex.input_ids) for ex in examples]
        for rows in eval_batches(lengths, batch_size, accelerator.num_processes, accelerator.process_index):
            chunk = [examples[i] for i in rows] or examples[:1]  # an empty share still joins the forward
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id, task).items()}
            cached = prefix.serving([prefix.validation_key + i for i in rows], batch) if prefix and rows else None
            with accelerator.autocast(), cached or contextlib.nullcontext():
                loss, logits = batch_loss_sum(model, batch, task, labelled_only=labelled_only, cls_only=cls_only,
                                              unpadded=unpadded)
            if not rows:
                continue
            loss_sum += loss.double()
            count += count_items(chunk, task)
            if task == "classification":
                preds = logits.argmax(-1)
                confusion.index_put_((batch["labels"], preds), torch.ones_like(preds, dtype=torch.float64),
                                     accumulate=True)
    loss_sum, count, confusion = (accelerator.reduce(t, "sum") for t in (loss_sum, count, confusion))
    if task == "classification":
        return classification_metrics(confusion.cpu(), float(loss_sum), int(count))
    return lm_metrics(float(loss_sum), int(count))


@torch.no_grad()
def generate_samples(model, tokenizer, examples, *, max_new_tokens, device) -> list[tuple[str, str, str]]:
    """Greedy continuations of validation prompts: (prompt, model output, reference)."""
    out = []
    with _eval_mode(model):
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
    return out


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """The model in eval mode (no dropout) inside; after, each module's training flag as it was, not
    model.train(): modules the run keeps in eval mode (compute.frozen_eval_mode) stay so."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
