"""A BERT-style classifier's last encoder block, computed at the first token only.

A sequence classifier of the BERT family reads one position of the last block's output: the first
token ([CLS], RoBERTa's <s>), through BERT's pooler or RoBERTa's classification head. Below the
last block every position matters, since the first token attends to them all; in the last block
only the keys and values need every position, and its query, attention output, feed-forward
network and norms need the first token alone: 10 of a block's 12 h² multiply-adds per position, a
seventh of MiniLM's six blocks. The loss and its gradients are the same (tests/test_cls_only.py);
in training, the block's dropout draws masks for one position instead of all, so the numbers
depend on the seed differently.

The block's forward is swapped for the duration of one loss forward (core.loss.batch_loss_sum), not
for the run: a checkpoint, an export, the frozen-prefix cache's caching pass and anything else that
reads the model's hidden states see the real block. It calls the block's own modules (projections,
dropout, output dense and norm, feed-forward chunk) and transformers' attention function for the
model's attention implementation; only the choice of query rows is ours. Left alone (the plain
forward runs): other architectures, whose heads read another position (a decoder's last token) or
whose blocks are built otherwise (DistilBERT), attention implementations other than eager and sdpa
(flash attention's unpadding assumes its query rows are the last ones), a block under gradient
checkpointing (its recomputation in the backward pass would run the real forward) or torch.compile,
and a last block whose output the frozen-prefix cache serves (core.prefix_cache: it ran once, whole).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

FIRST_TOKEN_CLASSIFIERS = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}
"""model_type of the sequence classifiers whose head reads the first token of the last block's
output, and whose blocks are BERT's (attention.self, attention.output, feed_forward_chunk)."""


def swappable_blocks(model) -> list:
    """The encoder blocks of a BERT-family sequence classifier `model` (through DDP and peft
    wrappers) whose forward this module or core.unpadded may swap for one loss forward: not under
    gradient checkpointing (its recomputation in the backward pass runs the real forward) or
    torch.compile, not the prefix cache's stand-ins (which serve a block's cached output), not
    swapped already. Empty for other models and for attention other than eager and sdpa."""
    from core.prefix_cache import inner_model

    inner = inner_model(model)
    config = inner.config
    if (config.model_type not in FIRST_TOKEN_CLASSIFIERS or not type(inner).__name__.endswith("ForSequenceClassification")
            or config.is_decoder or config._attn_implementation not in ("eager", "sdpa")):
        return []
    return [block for block in getattr(inner, inner.base_model_prefix).encoder.layer
            if not getattr(block, "gradient_checkpointing", False) and getattr(block, "_compiled_call_impl", None) is None
            and next(block.parameters(), None) is not None and "forward" not in vars(block)]


def cls_only_block(model):
    """The last encoder block of `model` where computing it at the first token only leaves the loss
    unchanged and saves work; None elsewhere."""
    from core.prefix_cache import inner_model

    blocks = swappable_blocks(model)
    if not blocks:
        return None
    inner = inner_model(model)
    last = getattr(inner, inner.base_model_prefix).encoder.layer[-1]
    return last if blocks[-1] is last else None


def first_token_top(model, blocks: list[str], trainable: list[str]) -> str | None:
    """How the memory estimate counts `model`'s last block under compute.last_block_cls_only:
    "trained" or "passed" (frozen, with the backward pass going through it) where it runs at the
    first token only, None where it runs whole. `blocks`: core.describe's block paths; `trainable`:
    the names of the trainable parameters or modules. Works on a weightless skeleton too."""
    from core.memory import within

    if not blocks or cls_only_block(model) is None:
        return None
    return "trained" if any(within(name, blocks[-1]) for name in trainable) else "passed"


def _forward_at_cls(block, hidden_states, attention_mask=None, *args, **kwargs):
    """The block's output at the first token, shaped [B, 1, H]: a reader of any other position
    fails on the shape rather than reading something that was not computed."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = block.attention.self
    rows, length = hidden_states.shape[:2]
    width = attention.attention_head_size
    first = hidden_states[:, :1]
    query = attention.query(first).view(rows, 1, -1, width).transpose(1, 2)
    key = attention.key(hidden_states).view(rows, length, -1, width).transpose(1, 2)
    value = attention.value(hidden_states).view(rows, length, -1, width).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query row's mask over every key
    eager = sys.modules[type(attention).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
    context, _ = interface(attention, query, key, value, attention_mask,
                           dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling)
    attended = block.attention.output(context.reshape(rows, 1, -1), first)
    return block.feed_forward_chunk(attended)


@contextlib.contextmanager
def last_block_at_cls(model, enabled: bool = True) -> Iterator[None]:
    """Within it, `model`'s forward computes its last block at the first token only, where
    cls_only_block finds one (compute.last_block_cls_only)."""
    block = cls_only_block(model) if enabled else None
    if block is None:
        yield
        return
    block.forward = types.MethodType(_forward_at_cls, block)
    try:
        yield
    finally:
        del block.forward
