"""data.packing: whole rows packed into blocks, kept apart by their position ids. A packed batch must
train what the same rows padded would: the same summed loss and the same gradients, on every
decoder we build; and a model that would let packed rows see each other is refused before a run."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.data import Example, collate
from core.data.prepare import _pack
from core.errors import UserError
from core.loss import IGNORE_INDEX, batch_loss_sum, trained_tokens
from core.packing import check_packing


def _rows(vocab: int, lengths: list[int], seed: int = 0) -> list[Example]:
    """Rows with a prompt of 2 tokens (no label) and an answer (labels = its tokens)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        rows.append(Example(ids, [IGNORE_INDEX, IGNORE_INDEX, *ids[2:]]))
    return rows


def test_packing_keeps_rows_whole_in_order_with_their_own_positions():
    rows = _rows(50, [5, 7, 3, 9, 4, 6])
    blocks = _pack(rows, 12)
    assert [len(b.input_ids) for b in blocks] == [12, 12, 10]  # 5+7 | 3+9 | 4+6
    assert [t for b in blocks for t in b.input_ids] == [t for r in rows for t in r.input_ids]
    assert blocks[0].position_ids == [*range(5), *range(7)]
    # each row's first token gets no label (the row before must not learn to predict it): the
    # trained tokens are exactly the unpacked rows'
    assert sum(trained_tokens(b.labels) for b in blocks) == sum(trained_tokens(r.labels) for r in rows)
    assert blocks[1].labels[3] == IGNORE_INDEX


def test_a_row_as_long_as_a_block_is_a_block_of_its_own():
    blocks = _pack(_rows(50, [3, 8, 2]), 8)
    assert [b.position_ids for b in blocks] == [list(range(3)), list(range(8)), list(range(2))]


def test_collate_gives_packed_blocks_positions_and_no_attention_mask():
    blocks = _pack(_rows(50, [3, 4, 5]), 7)  # [3+4], [5]
    batch = collate(blocks, pad_token_id=0, task="causal-lm")
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1]]  # padding: a row of its own
    assert batch["labels"][1, 5:].tolist() == [IGNORE_INDEX, IGNORE_INDEX]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "mistral"])
@pytest.mark.parametrize("labelled_only", [False, True], ids=["all-logits", "labelled-logits"])
def test_a_packed_batch_trains_what_the_padded_rows_would(tiny_model_factory, arch, labelled_only):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory(arch), dtype=torch.float32)
    model.eval()  # no dropout: the two forwards must see the same network
    check_packing(model)
    rows = _rows(model.config.vocab_size, [6, 9, 4, 11, 5, 7], seed=1)
    padded = collate(rows, pad_token_id=0, task="causal-lm")
    packed = collate(_pack(rows, 16), pad_token_id=0, task="causal-lm")
    assert packed["input_ids"].numel() < padded["input_ids"].numel()

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss, _ = batch_loss_sum(model, batch, "causal-lm", labelled_only=labelled_only)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(packed)
    expected_loss, expected_grads = loss_and_grads(padded)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


class _SeesAcrossRows(torch.nn.Module):
    """A decoder whose forward drops the position ids: every packed row sees the rows before it."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, use_cache=None):
        return self.inner(input_ids=input_ids)


def test_a_model_that_lets_packed_rows_see_each_other_is_refused(tiny_model_factory):
    model = _SeesAcrossRows(AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama")))
    model.train()
    with pytest.raises(UserError) as err:
        check_packing(model)
    assert err.value.message.startswith("data.packing: _SeesAcrossRows lets packed rows attend to each other")
    assert "data.packing: false" in err.value.hint
    assert list(err.value.fields) == ["data.packing"]
    assert model.training  # the check put the model back in training mode


def test_a_packed_run_trains_blocks_of_several_rows(tiny_model_factory, sft_file, tmp_path):
    from core.config import parse_config
    from core.engine import train
    from core.events import ListSink, RunFinished, StepMetrics
    from helpers import tiny_lm_config

    runs = {}
    for packing in (False, True):
        fields = tiny_lm_config(tiny_model_factory("llama"), sft_file, tmp_path / f"runs-{packing}",
                                schedule={"max_steps": 12})
        fields["data"]["packing"] = packing
        config = parse_config(fields)
        sink = ListSink()
        train(config, [sink], None, report_interval_s=0)
        assert sink.of_type(RunFinished)
        runs[packing] = sink.of_type(StepMetrics)
    packed, padded = runs[True], runs[False]
    assert packed[-1].epoch > padded[-1].epoch  # a step of 8 blocks holds more rows than one of 8 rows
    assert sum(m.loss for m in packed[-3:]) < sum(m.loss for m in packed[:3])
