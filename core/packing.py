"""Packing's one condition on the model: it must keep packed rows apart.

A packed block (data.packing, core.data.prepare) holds several rows, told apart only by their
position ids restarting at 0; transformers' models build from them a mask that keeps each row's
attention within the row (masking_utils' packed-sequence detection, used when no attention mask is
given). A model whose attention does not go through that machinery would let every row see the rows
before it in its block, and train on a context the data never had, with no error. So a run that
packs first asks the model itself: a row's logits must be the same packed behind another row as
alone.
"""

from __future__ import annotations

from core.errors import UserError

TOLERANCE = 1e-3
"""Largest difference allowed between the packed and the lone row's logits, relative to their size:
rounding moves them by about 1e-6; attending to another row, by a whole part of them."""


def check_packing(model) -> None:
    """Raise a UserError naming data.packing when `model` lets a packed row attend to the row before
    it. One no-grad forward of 9 tokens and one of 4, in eval mode (no dropout), on the model's device."""
    import torch

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab, (1, n), generator=generator).to(device) for n in (5, 4))
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=positions,
                           use_cache=False).logits[0, 5:]  # as core.data.batching.model_inputs calls it
            alone = model(input_ids=second, position_ids=positions[:, :4], use_cache=False).logits[0]
    finally:
        model.train(training)
    difference = (packed.float() - alone.float()).abs().max() / alone.float().abs().max().clamp_min(1e-6)
    if difference > TOLERANCE:
        raise UserError(
            f"data.packing: {type(model).__name__} lets packed rows attend to each other (its attention does not "
            "follow the position ids that tell them apart), so it would train on contexts the data does not have",
            "set data.packing: false (length-grouped batches keep padding low too)",
            fields={"data.packing": "this model cannot keep packed rows apart"},
        )
