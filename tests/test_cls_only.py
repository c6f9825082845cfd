"""compute.last_block_cls_only: a BERT-family classifier's last block at the first token only gives
the same loss and gradients as the whole block, and every other model runs as it is."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from core.cls_only import cls_only_block, last_block_at_cls
from core.data import collate
from core.loss import batch_loss_sum

LENGTHS = (9, 4, 7, 2)
"""Rows of different lengths: the batch is padded, so the attention mask matters."""


def classifier(folder, attn="sdpa"):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, attn_implementation=attn)


def electra():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=200, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=3)
    return ElectraForSequenceClassification(config)


def batch(pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    from core.data import Example

    torch.manual_seed(1)
    rows = [Example(input_ids=torch.randint(5, 200, (n,)).tolist(), labels=i % 3) for i, n in enumerate(LENGTHS)]
    return collate(rows, pad_token_id, "classification")


def loss_and_grads(model, inputs, **options):
    """(loss, logits, gradients) of a classification batch through core.loss with `options`."""
    model.zero_grad(set_to_none=True)
    loss, logits = batch_loss_sum(model, inputs, "classification", **options)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_numbers(model, swapped: dict | None = None, plain: dict | None = None):
    """The loss, logits and every gradient with a swap of core.loss's on (`swapped`, by default the
    last block at the first token only) and off (`plain`): in eval mode, as dropout's masks are
    drawn for other shapes."""
    model.eval()
    inputs = batch()
    on = loss_and_grads(model, inputs, **(swapped or {"cls_only": True}))
    off = loss_and_grads(model, inputs, **(plain or {}))
    assert_close(on[0], off[0], rtol=1e-5, atol=1e-6)
    assert_close(on[1], off[1], rtol=1e-5, atol=1e-6)
    assert on[2].keys() == off[2].keys() and on[2]
    for name in off[2]:
        assert_close(on[2][name], off[2][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_first_token_only_gives_the_same_loss_and_gradients(tiny_model_factory, arch, attn):
    model = classifier(tiny_model_factory(arch), attn)
    assert cls_only_block(model) is getattr(model, model.base_model_prefix).encoder.layer[-1]
    assert_same_numbers(model)


def test_electra_and_a_lora_wrapped_bert_too(tiny_model_factory):
    from peft import LoraConfig, get_peft_model

    assert_same_numbers(electra())
    wrapped = get_peft_model(classifier(tiny_model_factory("bert")),
                             LoraConfig(r=4, target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"]))
    assert cls_only_block(wrapped) is not None
    assert_same_numbers(wrapped)


def test_the_block_computes_one_position_and_gets_its_forward_back(tiny_model_factory):
    model = classifier(tiny_model_factory("bert")).eval()
    block = cls_only_block(model)
    seen = []
    block.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    inputs = batch()
    with last_block_at_cls(model):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert "forward" not in vars(block)  # the real forward is back: checkpoints and exports see it
    model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    hidden = model.config.hidden_size
    assert seen == [(4, 1, hidden), (4, max(LENGTHS), hidden)]


@pytest.mark.parametrize("arch", ["distilbert", "gpt2", "llama"])
def test_other_classifiers_run_as_they_are(tiny_model_factory, arch):
    """DistilBERT's blocks are built otherwise, and a decoder's head reads the last token."""
    model = classifier(tiny_model_factory(arch))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    assert cls_only_block(model) is None
    model.eval()
    inputs = batch(model.config.pad_token_id)
    assert_close(loss_and_grads(model, inputs, cls_only=True)[0], loss_and_grads(model, inputs)[0])


def test_gradient_checkpointing_and_flash_attention_keep_the_whole_block(tiny_model_factory):
    """Checkpointing recomputes the block in the backward pass, after the swap is undone; flash
    attention's unpadding takes a lone query row for the last position."""
    from core.setup import enable_gradient_checkpointing

    model = classifier(tiny_model_factory("bert"))
    enable_gradient_checkpointing(model)
    assert cls_only_block(model) is None
    model = classifier(tiny_model_factory("bert"))
    model.config._attn_implementation = "flash_attention_2"
    assert cls_only_block(model) is None


def test_the_run_says_when_the_last_block_runs_at_the_first_token(tiny_model_factory, cls_file, tmp_path):
    from core.config import parse_config
    from core.engine import train
    from core.events import ListSink, LogMessage

    config = {"task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
              "data": {"train": str(cls_file), "max_length": 24, "val_ratio": 0.0},
              "schedule": {"max_steps": 2}, "eval": {"every_steps": 0}, "checkpoint": {"every_steps": 0},
              "output": {"runs_dir": str(tmp_path), "save_final": False}}
    line = "the last block runs at the first token only, the one the head reads (compute.last_block_cls_only)"
    for on in (True, False):
        sink = ListSink()
        train(parse_config(config | {"compute": {"last_block_cls_only": on}}), [sink])
        assert (line in [e.message for e in sink.of_type(LogMessage)]) is on
