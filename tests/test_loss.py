"""core.loss: the loss sums exactly the positions trained_tokens counts."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from core.data import Example, collate
from core.errors import UserError
from core.loss import IGNORE_INDEX, batch_loss_sum, count_items, keeps_labelled_logits, lm_loss_sum, trained_tokens

M = IGNORE_INDEX


def test_trained_tokens_skips_masked_labels_and_the_first_position():
    assert trained_tokens([5, 6, 7]) == 2  # position 0 is never predicted
    assert trained_tokens([M, M, 7, 8, M]) == 2
    assert trained_tokens([M, M]) == 0
    assert trained_tokens([]) == 0


def test_the_loss_sums_over_exactly_the_trained_tokens():
    """With uniform logits every trained position costs log(vocab): the sum counts them."""
    vocab = 11
    labels = [[M, M, 3, 4, M], [2, M, M, 5, 6]]
    logits = torch.zeros(2, 5, vocab)
    loss = lm_loss_sum(logits, torch.tensor(labels))
    expected = sum(trained_tokens(row) for row in labels) * torch.log(torch.tensor(float(vocab)))
    torch.testing.assert_close(loss, expected)


def test_count_items_is_rows_or_trained_tokens():
    rows = [SimpleNamespace(labels=[M, 1, 2]), SimpleNamespace(labels=[1, M, 3, 4])]
    assert count_items(rows, "causal-lm") == 2 + 2
    assert count_items(rows, "classification") == 2


def test_classification_loss_is_summed_over_rows():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 3))

    batch = {"input_ids": torch.ones(4, 2, dtype=torch.long), "attention_mask": torch.ones(4, 2),
             "labels": torch.tensor([0, 1, 2, 0])}
    loss, logits = batch_loss_sum(Fixed(), batch, "classification")
    torch.testing.assert_close(loss, 4 * torch.log(torch.tensor(3.0)))
    assert logits.shape == (4, 3)


def test_counting_trained_tokens_needs_no_torch():
    """The app's data preview counts trained tokens at start-up, where torch must not load."""
    code = "import sys, core.loss; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# compute.labelled_logits_only: the head and the loss at the labelled positions only, same numbers.

def _rows(vocab: int) -> list[Example]:
    """Rows of different lengths and answer spans: a prompt-then-answer row, a row whose answer
    ends before its last token, one without any trained token, and a fully trained one."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    a, b, c, d = ids(12), ids(9), ids(7), ids(5)
    return [Example(a, [M] * 7 + a[7:]), Example(b, [M] * 3 + b[3:6] + [M] * 3), Example(c, [M] * 7),
            Example(d, list(d))]


def _causal_lm(folder, lora: bool, head_trained: bool):
    """The tiny model in eval mode (no dropout: both paths must see the same network), with LoRA
    adapters on every linear layer or not, and its output head (tied to the embeddings) trained or frozen."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False,
                                                 fan_in_fan_out=model.config.model_type == "gpt2"))
    model.get_output_embeddings().weight.requires_grad_(head_trained)
    return model.eval()


def _loss_and_grads(model, batch, labelled_only: bool):
    model.zero_grad(set_to_none=True)
    loss, _ = batch_loss_sum(model, batch, "causal-lm", labelled_only=labelled_only)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("head_trained", [True, False], ids=["head-trained", "head-frozen"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_labelled_logits_give_the_plain_loss_and_gradients(tiny_model_factory, arch, lora, head_trained):
    model = _causal_lm(tiny_model_factory(arch), lora, head_trained)
    batch = collate(_rows(model.config.vocab_size), model.config.pad_token_id, "causal-lm")
    assert keeps_labelled_logits(model)
    plain_loss, plain_grads = _loss_and_grads(model, batch, labelled_only=False)
    loss, grads = _loss_and_grads(model, batch, labelled_only=True)
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and any("lora_" in n for n in grads) == lora
    assert any(p is model.get_output_embeddings().weight for p in model.parameters() if p.requires_grad) == head_trained
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], msg=lambda m, name=name: f"{name}: {m}")


def test_the_head_sees_only_the_labelled_positions(tiny_model_factory):
    model = _causal_lm(tiny_model_factory("llama"), lora=True, head_trained=False)
    rows = _rows(model.config.vocab_size)
    batch = collate(rows, model.config.pad_token_id, "causal-lm")
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    loss, logits = batch_loss_sum(model, batch, "causal-lm", labelled_only=True)
    assert seen == [count_items(rows, "causal-lm")] == [logits.shape[0]]
    assert seen[0] < batch["input_ids"].numel() / 2
    batch_loss_sum(model, batch, "causal-lm", labelled_only=False)
    assert seen[-1] == batch["input_ids"].numel()  # the plain path: every position


def test_a_batch_without_labelled_positions_costs_nothing(tiny_model_factory):
    model = _causal_lm(tiny_model_factory("qwen2"), lora=False, head_trained=True)
    batch = collate(_rows(model.config.vocab_size)[2:3], model.config.pad_token_id, "causal-lm")
    loss, grads = _loss_and_grads(model, batch, labelled_only=True)
    assert loss.item() == 0.0 and all(g.abs().sum() == 0 for g in grads.values())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_evaluation_loss_is_the_same_with_labelled_logits_only(tiny_model_factory, arch):
    from accelerate import Accelerator

    from core.evaluate import evaluate

    model = _causal_lm(tiny_model_factory(arch), lora=False, head_trained=True)
    rows = _rows(model.config.vocab_size) * 2
    kw = dict(task="causal-lm", num_labels=0, batch_size=3, pad_token_id=model.config.pad_token_id,
              accelerator=Accelerator(cpu=True))
    plain = evaluate(model, rows, labelled_only=False, **kw)
    labelled = evaluate(model, rows, labelled_only=True, **kw)
    assert plain["loss"] > 0
    assert labelled == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("model_type, post", [("gemma2", {"final_logit_softcapping": 2.0, "head_dim": 16}),
                                              ("cohere", {"logit_scale": 0.25})])
def test_logits_scaled_or_soft_capped_by_the_model_stay_exact(model_type, post):
    """The model's own post-processing of its logits (element by element) applies to the kept rows."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=64, vocab_size=61, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, **post)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    batch = collate(_rows(61), 0, "causal-lm")
    plain_loss, plain_grads = _loss_and_grads(model, batch, labelled_only=False)
    loss, grads = _loss_and_grads(model, batch, labelled_only=True)
    torch.testing.assert_close(loss, plain_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name])


class _Plain(torch.nn.Module):
    """A causal LM whose forward has no logits_to_keep: fixed logits that favour token 1."""

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 5)
        logits[..., 1] = 1.0
        return SimpleNamespace(logits=logits)


class _IgnoresTheMask(_Plain):
    def forward(self, input_ids, attention_mask, logits_to_keep=0):
        return super().forward(input_ids, attention_mask)


def test_a_model_without_logits_to_keep_takes_the_plain_path():
    batch = collate(_rows(5), 0, "causal-lm")
    assert not keeps_labelled_logits(_Plain())
    loss, logits = batch_loss_sum(_Plain(), batch, "causal-lm", labelled_only=True)
    torch.testing.assert_close(loss, lm_loss_sum(logits, batch["labels"]))
    assert logits.shape == (*batch["input_ids"].shape, 5)


def test_a_model_that_ignores_the_mask_is_an_error_naming_the_option():
    batch = collate(_rows(5), 0, "causal-lm")
    with pytest.raises(UserError, match="logits_to_keep") as caught:
        batch_loss_sum(_IgnoresTheMask(), batch, "causal-lm", labelled_only=True)
    assert "compute.labelled_logits_only: false" in caught.value.hint
