"""Batches: which rows go together in each step (`batch_plan`, `process_share`) and how they become
tensors (`collate`).

The engine plans each epoch's optimizer steps, batches of the effective batch (rows per step over
all processes), and only then cuts a step into each process's share and that into micro-batches.
So the rows of a step depend on the effective batch alone: a run whose micro-batch was halved after
running out of memory trains the same rows per step as one that started with the smaller
micro-batch. The plan depends on nothing but the row lengths and (seed, epoch), so a resumed run
recomputes the batches it already trained on and skips them.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from core.data.examples import Example
from core.loss import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

def batch_plan(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool, drop_last: bool = False
) -> list[list[int]]:
    """The batches of one epoch as lists of example indices; the same inputs give the same plan.
    The engine asks for batches of the effective batch: one per optimizer step (see process_share).

    With `group_by_length`, the shuffled order is cut into chunks of 50 batches, each chunk sorted
    by length so batches hold rows of similar length (less padding), and the batch order shuffled
    again; the batch with the longest row goes first, so running out of memory shows at the first
    step rather than mid-epoch, and the one short batch stays last, as without grouping: the plan
    counts an epoch's steps with it last (core.plan), and several processes leave it out when it does
    not go round (process_share), so shuffled into the middle it trained no process (a crash) and
    pushed a full step out of the epoch. The generator is seeded with a string of (seed, epoch): string
    seeds are hashed with SHA-512, so different pairs never collide the way seed+epoch would.
    """
    rng = random.Random(f"batch-plan:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        chunk = batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
            batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        short = [b for b in batches if len(b) < batch_size]  # at most one: the last chunk's remainder
        batches = [b for b in batches if len(b) == batch_size]
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        batches += short
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return batches


def process_share(step_rows: list[int], unit: int, processes: int, rank: int) -> list[int]:
    """The rows of one optimizer step that process `rank` trains: the step's rows cut into units of
    `unit` rows (optim.batch_size), dealt out in turn. A full step has a whole number of units per
    process; the units of a short last step that do not go round are left out, so every process
    has rows. Units are contiguous, so a length-grouped step gives each process rows of like length."""
    units = [step_rows[i : i + unit] for i in range(0, len(step_rows), unit)]
    return [row for chunk in units[rank : len(units) - len(units) % processes : processes] for row in chunk]


def collate(examples: list[Example], pad_token_id: int | None, task: str) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids (pad id), attention_mask, labels (-100 padding for causal LM,
    one class id per row for classification). Tokenizers without a pad token (GPT-2) pad with id 0,
    which the attention mask and the -100 labels hide.

    Packed blocks (data.packing) get position_ids instead of an attention mask: transformers builds
    the mask that keeps each packed row to itself from where the positions restart, and only when no
    attention mask is given. Their padding counts as one more row (positions from 0), which attends
    to itself alone and carries no label."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    pad = 0 if pad_token_id is None else pad_token_id
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    packed = getattr(examples[0], "position_ids", None) is not None  # packed blocks (data.packing)
    layout = torch.zeros((len(examples), width), dtype=torch.long)  # the attention mask, or the position ids
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        if packed:
            layout[row, :n] = torch.tensor(example.position_ids, dtype=torch.long)
            layout[row, n:] = torch.arange(width - n)
        else:
            layout[row, :n] = 1
    if task == "classification":
        labels = torch.tensor([e.labels for e in examples], dtype=torch.long)
    else:
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "position_ids" if packed else "attention_mask": layout, "labels": labels}


def model_inputs(batch: dict[str, torch.Tensor], rows=None, width: int | None = None) -> dict:
    """The model's keyword arguments of a collated batch (all but its labels: an attention mask, or
    a packed batch's position ids), for the rows `rows` (an index tensor; None: all) and the first
    `width` positions (None: all). A packed batch also turns the key-value cache off: transformers
    reads packed rows from the position ids only when no cache is passed or made."""
    inputs: dict = {key: (value if rows is None else value[rows])[:, :width]
                    for key, value in batch.items() if key != "labels"}
    if "position_ids" in inputs:
        inputs["use_cache"] = False
    return inputs
