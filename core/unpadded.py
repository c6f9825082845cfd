"""A BERT-family encoder's blocks computed at the real tokens only, not at the padding.

A batch is padded to its longest row, and every block computes its projections, feed-forward
network and norms at every position, although nothing reads the padding's output: the attention
mask hides it as a key, and the head reads the first token. In random batches of short texts
(Trainer's default, and this engine's for these models: groups_by_length) about two thirds of the
positions are padding.
Here each block gathers its input's real tokens into one [tokens, hidden] matrix and runs its
linear layers and norms on that; only the attention itself, which needs the rows, sees queries,
keys and values spread back to the padded [rows, heads, length, width] shape. The block's output
is zero at the padding. The loss and every gradient are the same (tests/test_unpadded.py); in
training, dropout draws masks for the real tokens only, so the numbers depend on the seed
differently.

The blocks' forwards are swapped for one loss forward (core.loss.batch_loss_sum), as core.cls_only
swaps the last one: anything else that reads the model's hidden states sees the real blocks. Left
alone (the plain forward runs): the architectures core.cls_only leaves alone, decoders, attention
implementations other than eager and sdpa, a batch with little or no padding (LEAST_PADDING),
blocks under gradient checkpointing (their recomputation in the backward pass would run the real
forward on the unpadded input) or torch.compile, the prefix cache's stand-ins, and the last block
when core.cls_only computes it at the first token.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections.abc import Iterator

LEAST_PADDING = 0.1
"""The share of a batch's positions that must be padding for a block to gather its real tokens: below
it the gathering and spreading cost what they save (length-grouped batches, bench/engine_ab.py), and
the padded block runs as it is."""


def real_positions(attention_mask, rows: int, length: int, found: dict):
    """The flat indices (into rows x length) of the positions the 4D mask lets a query attend to:
    the real tokens. Found once per forward, as every block gets the same mask: `nonzero` waits for
    the device. `found` maps the mask tensor (by identity) to them."""
    import torch

    if found.get("mask") is not attention_mask:
        allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0  # sdpa's, eager's
        found.update(mask=attention_mask, real=allowed.any(dim=-2)[:, 0].expand(rows, length).reshape(-1).nonzero().squeeze(1))
    return found["real"]


def _forward_unpadded(block, hidden_states, attention_mask=None, *args, found: dict, **kwargs):
    """The block's output, computed at the tokens the mask lets a query attend to; zero elsewhere."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if attention_mask is None or attention_mask.dim() != 4:  # no padding, or a mask we do not read
        return type(block).forward(block, hidden_states, attention_mask, *args, **kwargs)
    rows, length, hidden = hidden_states.shape
    real = real_positions(attention_mask, rows, length, found)
    if real.numel() > rows * length * (1 - LEAST_PADDING):
        return type(block).forward(block, hidden_states, attention_mask, *args, **kwargs)
    tokens = hidden_states.reshape(rows * length, hidden).index_select(0, real)
    attention = block.attention.self
    width = attention.attention_head_size

    def padded(flat):  # [tokens, features] -> [rows x length, features], zero at the padding
        return flat.new_zeros(rows * length, flat.shape[-1]).index_copy(0, real, flat)

    def spread(projected):  # [tokens, heads x width] -> [rows, heads, length, width]
        return padded(projected).view(rows, length, -1, width).transpose(1, 2)

    eager = sys.modules[type(attention).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
    context, _ = interface(attention, spread(attention.query(tokens)), spread(attention.key(tokens)),
                           spread(attention.value(tokens)), attention_mask,
                           dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling)
    attended = block.attention.output(context.reshape(rows * length, -1).index_select(0, real), tokens)
    output = block.feed_forward_chunk(attended)
    return padded(output).view(rows, length, -1)


def groups_by_length(config, model) -> bool:
    """Whether the run's batches hold rows of similar length (data.group_by_length). auto groups them
    except where `model`'s blocks skip the padding here: random batches then run at three quarters
    of the grouped speed, and grouping, which makes a batch's rows alike, cost 1-2% of eval loss on
    short-text classification (BENCHMARKS.md, "Random batches by default for a classifier")."""
    if config.data.group_by_length != "auto":
        return config.data.group_by_length
    from core.cls_only import swappable_blocks

    return not (config.task == "classification" and config.compute.unpadded_encoder and swappable_blocks(model))


@contextlib.contextmanager
def real_tokens_only(model, enabled: bool = True) -> Iterator[None]:
    """Within it, `model`'s encoder blocks compute at the real tokens only, where
    core.cls_only.swappable_blocks finds them (compute.unpadded_encoder). Enter it inside
    core.cls_only's swap, which it leaves be."""
    from core.cls_only import swappable_blocks

    blocks = swappable_blocks(model) if enabled else []
    found: dict = {}
    for block in blocks:
        block.forward = types.MethodType(functools.partial(_forward_unpadded, found=found), block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
