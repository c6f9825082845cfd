"""Fast dropout masks on the CPU (core.dropout_masks): each element kept at the rounded rate and
independently of its neighbours, in every dtype and layout; drawn from the seeded generator; only
while a run trains; and in effect in a run, which they leave reproducible."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.config import parse_config
from core.dropout_masks import fast_dropout
from core.events import ListSink, LogMessage, StepMetrics

ON = SimpleNamespace(compute=SimpleNamespace(fast_dropout="auto"))
OFF = SimpleNamespace(compute=SimpleNamespace(fast_dropout="off"))
N = 1 << 22


def _within(draws: torch.Tensor, rate: float, sigmas: float = 5.0) -> bool:
    """Whether the mean of these 0/1 draws is `rate`, up to `sigmas` binomial standard deviations."""
    spread = (rate * (1 - rate) / draws.numel()) ** 0.5
    return abs(draws.double().mean().item() - rate) <= sigmas * spread


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.3333])
def test_each_element_is_kept_at_the_rounded_rate_and_independently(p):
    rate = round(p * 32768) / 32768
    torch.manual_seed(0)
    with fast_dropout(ON, "cpu"):
        mask = torch.empty(N).bernoulli_(p)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert _within(mask, rate)
    for slot in range(4):  # the four slices of each random word, the top one included
        assert _within(mask[slot::4], rate)
    assert _within(mask[:-1] * mask[1:], rate * rate)  # neighbours, in one word and across two
    assert _within(mask[:-4] * mask[4:], rate * rate)  # the same slice of neighbouring words


def test_dropout_keeps_the_expectation_and_the_gradient_follows_the_mask():
    x = torch.full((N,), 2.0, requires_grad=True)
    torch.manual_seed(1)
    with fast_dropout(ON, "cpu"):
        y = torch.nn.functional.dropout(x, 0.1, training=True)
    kept = y != 0
    assert _within(kept, round(0.9 * 32768) / 32768)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.bool, torch.int64])
def test_every_dtype_and_a_transposed_view_are_filled(dtype):
    base = torch.zeros(512, 384, dtype=dtype)
    with fast_dropout(ON, "cpu"):
        view = base.t().bernoulli_(0.25)
    assert view.data_ptr() == base.data_ptr() and view.dtype == dtype
    assert _within(base.double(), 0.25)


def test_the_edges_of_p_and_an_invalid_p():
    with fast_dropout(ON, "cpu"):
        assert torch.empty(1000).bernoulli_(1.0).eq(1).all()
        assert torch.empty(1000).bernoulli_(0.0).eq(0).all()
        assert torch.empty(0).bernoulli_(0.5).numel() == 0
        assert torch.empty(()).bernoulli_(1.0).item() == 1.0
        with pytest.raises(RuntimeError, match="p=1.5"):
            torch.empty(3).bernoulli_(1.5)


def test_masks_come_from_the_seeded_generator():
    with fast_dropout(ON, "cpu"):
        torch.manual_seed(7)
        first = torch.empty(1000).bernoulli_(0.5)
        torch.manual_seed(7)
        again = torch.empty(1000).bernoulli_(0.5)
        generator = torch.Generator().manual_seed(7)
        explicit = torch.empty(1000).bernoulli_(0.5, generator=generator)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(explicit, first)


def _torch_mask() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.empty(1000).bernoulli_(0.5)


def test_torch_draws_its_own_masks_outside_a_run_after_the_last_overlapping_run_and_when_off():
    expected = _torch_mask()
    with fast_dropout(ON, "cpu"):
        with fast_dropout(ON, "cpu"):  # two runs in one process
            assert not torch.equal(_torch_mask(), expected)
        assert not torch.equal(_torch_mask(), expected)  # the other run still trains
    torch.testing.assert_close(_torch_mask(), expected)
    for config, device in ((OFF, "cpu"), (ON, "cuda")):  # off, and a GPU run, whose dropout is fused
        with fast_dropout(config, device):
            torch.testing.assert_close(_torch_mask(), expected)


def _run(model_dir, data, runs, name: str, **compute):
    from core.engine import train

    config = parse_config({
        "task": "classification", "seed": 5,
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 24, "val_ratio": 0.2},
        "freeze": {"preset": "all"},
        "optim": {"batch_size": 4, "lr": 3e-3},
        "schedule": {"epochs": 1},
        "compute": compute,
        "output": {"runs_dir": str(runs), "run_name": name},
    })
    sink = ListSink()
    train(config, [sink], report_interval_s=0)
    return [e.loss for e in sink.of_type(StepMetrics)], [e.message for e in sink.of_type(LogMessage)]


def test_a_run_draws_the_fast_masks_says_so_and_repeats_itself(tiny_model_factory, cls_file, tmp_path):
    model_dir = tiny_model_factory("bert")  # BERT's dropout: embeddings, attention, each block, the head
    torch_losses, torch_logs = _run(model_dir, cls_file, tmp_path, "torch", fast_dropout="off")
    losses, logs = _run(model_dir, cls_file, tmp_path, "fast")
    again, _ = _run(model_dir, cls_file, tmp_path, "again")
    assert any(m.startswith("fast dropout masks on") for m in logs)
    assert not any(m.startswith("fast dropout masks") for m in torch_logs)
    assert len(losses) >= 5
    assert losses == again  # the seed decides the masks
    assert losses[0] != torch_losses[0]  # other masks from the first step on


def test_gradient_checkpointing_recomputes_the_same_masks(tiny_model_factory):
    """Checkpointing recomputes each block's forward, dropout included, in the backward pass: from the
    generator state it saved, so the fast masks must come from that generator too."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_factory("bert"), num_labels=3)
    recomputed = AutoModelForSequenceClassification.from_pretrained(tiny_model_factory("bert"), num_labels=3)
    recomputed.load_state_dict(plain.state_dict())
    recomputed.gradient_checkpointing_enable()
    ids, labels = torch.randint(5, 100, (4, 12)), torch.tensor([0, 1, 2, 1])
    with fast_dropout(ON, "cpu"):
        for model in (plain, recomputed):
            model.train()
            torch.manual_seed(5)
            model(input_ids=ids, labels=labels).loss.backward()
    grads = [dict(m.named_parameters()) for m in (plain, recomputed)]
    assert any(p.grad.abs().sum() > 0 for p in grads[0].values() if p.grad is not None)
    for name, parameter in grads[0].items():
        if parameter.grad is not None:
            torch.testing.assert_close(grads[1][name].grad, parameter.grad, msg=name)
