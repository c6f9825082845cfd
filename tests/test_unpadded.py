"""compute.unpadded_encoder: a BERT-family classifier's blocks at the real tokens only give the same
loss and gradients as the padded blocks, compute at fewer positions, and every other model runs as
it is."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from core.cls_only import last_block_at_cls, swappable_blocks
from core.unpadded import real_tokens_only
from test_cls_only import LENGTHS, assert_same_numbers, batch, classifier, electra, loss_and_grads

UNPADDED = {"unpadded": True}
"""core.loss's option for the blocks at the real tokens only, compared with the padded blocks."""


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_real_tokens_only_give_the_same_loss_and_gradients(tiny_model_factory, arch, attn):
    model = classifier(tiny_model_factory(arch), attn)
    assert swappable_blocks(model) == list(getattr(model, model.base_model_prefix).encoder.layer)
    assert_same_numbers(model, UNPADDED, {})
    assert_same_numbers(model, UNPADDED | {"cls_only": True}, {"cls_only": True})  # beside the first-token last block


def test_electra_and_a_lora_wrapped_bert_too(tiny_model_factory):
    from peft import LoraConfig, get_peft_model

    assert_same_numbers(electra(), UNPADDED, {})
    wrapped = get_peft_model(classifier(tiny_model_factory("bert")),
                             LoraConfig(r=4, target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"]))
    assert len(swappable_blocks(wrapped)) == wrapped.config.num_hidden_layers
    assert_same_numbers(wrapped, UNPADDED, {})


def test_the_blocks_compute_the_real_tokens_and_get_their_forwards_back(tiny_model_factory):
    model = classifier(tiny_model_factory("bert")).eval()
    blocks = swappable_blocks(model)
    seen = []
    for block in blocks:
        block.intermediate.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape[:-1])))
    inputs = batch()
    with last_block_at_cls(model), real_tokens_only(model):
        assert "forward" in vars(blocks[0]) and blocks[-1].forward.__name__ == "_forward_at_cls"  # left to cls_only
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert not any("forward" in vars(block) for block in blocks)  # checkpoints and exports see the real blocks
    assert seen == [(sum(LENGTHS),)] * (len(blocks) - 1) + [(len(LENGTHS), 1)]
    seen.clear()
    with real_tokens_only(model):  # a batch without padding: transformers passes no mask, the block runs as it is
        model(input_ids=inputs["input_ids"][:, :2], attention_mask=inputs["attention_mask"][:, :2])
    assert seen == [(len(LENGTHS), 2)] * len(blocks)
    seen.clear()
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[0, -1] = 0  # 1 position of 40 is padding: less than LEAST_PADDING, not worth the gathering
    with real_tokens_only(model):
        model(input_ids=torch.randint(5, 200, (4, 10)), attention_mask=mask)
    assert seen == [(4, 10)] * len(blocks)


@pytest.mark.parametrize("arch", ["distilbert", "gpt2", "llama"])
def test_other_classifiers_run_as_they_are(tiny_model_factory, arch):
    model = classifier(tiny_model_factory(arch))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    assert swappable_blocks(model) == []
    model.eval()
    inputs = batch(model.config.pad_token_id)
    assert_close(loss_and_grads(model, inputs, unpadded=True)[0], loss_and_grads(model, inputs)[0])


def test_gradient_checkpointing_and_flash_attention_keep_the_padded_blocks(tiny_model_factory):
    from core.setup import enable_gradient_checkpointing

    model = classifier(tiny_model_factory("bert"))
    enable_gradient_checkpointing(model)
    assert swappable_blocks(model) == []
    model = classifier(tiny_model_factory("bert"))
    model.config._attn_implementation = "flash_attention_2"
    assert swappable_blocks(model) == []


def test_a_run_trains_and_evaluates_the_same_numbers_and_says_so(tiny_model_factory, cls_file, tmp_path):
    """Two runs of random batches, with the model's dropout at 0 so that both draw nothing: the same
    evaluations after the same steps, whether the blocks saw the padding or not."""
    from core.config import parse_config
    from core.engine import train
    from core.events import EvalResult, ListSink, LogMessage

    folder = tmp_path / "bert"
    shutil.copytree(tiny_model_factory("bert"), folder)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text())
                                      | {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    config = {"task": "classification", "model": {"name_or_path": str(folder)},
              "data": {"train": str(cls_file), "max_length": 24, "val_ratio": 0.25, "group_by_length": False},
              "optim": {"batch_size": 4}, "schedule": {"max_steps": 6}, "eval": {"every_steps": 2},
              "checkpoint": {"every_steps": 0}, "output": {"runs_dir": str(tmp_path), "save_final": False}}
    line = "the encoder's blocks skip the padding of batches that are a tenth or more padding (compute.unpadded_encoder)"
    runs = {}
    for on in (True, False):
        sink = ListSink()
        train(parse_config(config | {"compute": {"unpadded_encoder": on}}), [sink])
        assert any(e.message.startswith(line) for e in sink.of_type(LogMessage)) is on
        runs[on] = [(e.step, e.metrics["loss"]) for e in sink.of_type(EvalResult)]
    assert [step for step, _ in runs[True]] == [0, 2, 4, 6]  # before training, then every 2 steps
    assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-6)


def test_auto_batches_at_random_only_a_classifier_whose_blocks_skip_the_padding(tiny_model_factory):
    """data.group_by_length: auto. Where the blocks skip the padding, grouping bought a third more
    speed for 1-2% of eval loss on short-text classification (BENCHMARKS.md): random batches, as
    Trainer's. Elsewhere padding costs what it computes: grouped. A set value is kept."""
    from core.config import parse_config
    from core.setup import enable_gradient_checkpointing
    from core.unpadded import groups_by_length

    def grouped(model, task="classification", **sections):
        return groups_by_length(parse_config({"task": task, **sections}), model)

    bert = classifier(tiny_model_factory("bert"))
    assert not grouped(bert)
    assert grouped(bert, compute={"unpadded_encoder": False})
    assert grouped(bert, data={"group_by_length": True})
    gpt2 = classifier(tiny_model_factory("gpt2"))
    assert grouped(gpt2) and not grouped(gpt2, data={"group_by_length": "off"})
    enable_gradient_checkpointing(bert)  # its blocks run padded: see the test above
    assert grouped(bert)


def test_a_run_of_a_bert_classifier_asks_for_random_batches_and_says_so(tiny_model_factory, cls_file, tmp_path,
                                                                         monkeypatch):
    from core.config import parse_config
    from core.data import batching
    from core.engine import train
    from core.events import ListSink, LogMessage

    asked = []
    plan = batching.batch_plan
    monkeypatch.setattr(batching, "batch_plan", lambda *args: asked.append(args[-1]) or plan(*args))
    config = {"task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
              "data": {"train": str(cls_file), "max_length": 24, "val_ratio": 0.25},
              "optim": {"batch_size": 4}, "schedule": {"max_steps": 2}, "eval": {"every_steps": 0},
              "checkpoint": {"every_steps": 0}, "output": {"runs_dir": str(tmp_path), "save_final": False}}
    sink = ListSink()
    train(parse_config(config), [sink])
    assert asked == [False]
    assert any(e.message.endswith("; batches are random, as Trainer's (data.group_by_length)")
               for e in sink.of_type(LogMessage))
