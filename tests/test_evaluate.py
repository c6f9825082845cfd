"""core.evaluate: length-grouped batches that every rank runs alike, metrics that do not depend on
the grouping, the default batch and the user's eval.batch_size, and EvalResult's speed fields."""

from __future__ import annotations

import json
import random
from contextlib import nullcontext

import pytest
import torch
from helpers import tiny_lm_config
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from core.config import parse_config
from core.data import Example, collate
from core.evaluate import (
    EVAL_ROWS_PER_TRAINING_ROW,
    MIN_FILL,
    default_batch_size,
    eval_batches,
    evaluate,
)
from core.events import EvalResult, ListSink, parse_event_lines
from core.loss import IGNORE_INDEX, batch_loss_sum, count_items
from core.metrics import classification_metrics, lm_metrics

VOCAB, LABELS = 50, 3


def bert(layers: int = 2):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=LABELS)
    return BertForSequenceClassification(config)


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def rows(task: str, n: int = 37, seed: int = 1) -> list[Example]:
    """Rows of 3 to 30 tokens; causal-LM rows train on their second half."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 30))]
        half = len(ids) // 2
        labels = rng.randrange(LABELS) if task == "classification" else [IGNORE_INDEX] * half + ids[half:]
        out.append(Example(input_ids=ids, labels=labels))
    return out


class Rank:
    """An accelerate.Accelerator as evaluate sees it, for process `index` of `world`. Ranks run one
    after another: each reduce adds what the ranks before it left at the same call (the last rank
    run holds the true sums)."""

    def __init__(self, index: int, world: int, earlier: list | None = None) -> None:
        self.device, self.process_index, self.num_processes = torch.device("cpu"), index, world
        self.earlier, self.sent = earlier or [], []

    def autocast(self):
        return nullcontext()

    def reduce(self, tensor, op):
        assert op == "sum"
        total = tensor + (self.earlier[len(self.sent)] if self.earlier else 0)
        self.sent.append(total)
        return total


def one_row_at_a_time(model, examples, task) -> dict[str, float]:
    """The metrics with no batching at all: no padding, the given order."""
    model.eval()
    loss_sum, items, confusion = 0.0, 0, torch.zeros(LABELS, LABELS, dtype=torch.float64)
    with torch.no_grad():
        for ex in examples:
            batch = collate([ex], 0, task)
            loss, logits = batch_loss_sum(model, batch, task)
            loss_sum, items = loss_sum + float(loss), items + count_items([ex], task)
            if task == "classification":
                confusion[batch["labels"][0], logits.argmax(-1)[0]] += 1
    if task == "classification":
        return classification_metrics(confusion, loss_sum, items)
    return lm_metrics(loss_sum, items)


def run(model, examples, task, batch_size, rank=None, labelled_only=False):
    return evaluate(model, examples, task=task, num_labels=LABELS if task == "classification" else 0,
                    batch_size=batch_size, pad_token_id=0, accelerator=rank or Rank(0, 1), labelled_only=labelled_only)


@pytest.mark.parametrize("n", [1, 2, 5, 37, 64])
@pytest.mark.parametrize("processes", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_eval_batches_deal_every_row_once_and_every_rank_the_same_number_of_batches(n, processes, batch_size):
    lengths = [random.Random(n).randint(1, 99) for _ in range(n)]
    shares = [eval_batches(lengths, batch_size, processes, rank) for rank in range(processes)]
    assert len({len(share) for share in shares}) == 1  # the same number of forwards everywhere
    dealt = [row for share in shares for batch in share for row in batch]
    assert sorted(dealt) == list(range(n))
    batches = [batch for share in shares for batch in share]
    assert all(len(batch) <= batch_size for batch in batches)
    assert processes > 1 or all(batches)  # an empty batch only where rows do not go round the ranks
    ordered = sorted(lengths, reverse=True)
    for batch in batches:  # each batch a run of neighbours in length order: the least padding
        if batch:
            mine = sorted((lengths[i] for i in batch), reverse=True)
            assert any(ordered[k : k + len(batch)] == mine for k in range(n - len(batch) + 1))
            assert mine[-1] >= MIN_FILL * mine[0]  # at most half of it padding


@pytest.mark.parametrize("task, labelled_only", [("classification", False), ("causal-lm", False),
                                                 ("causal-lm", True)])
def test_metrics_do_not_depend_on_grouping_batch_size_or_order(task, labelled_only):
    """Grouped and padded batches give the metrics of one row at a time: sums over rows."""
    model = bert() if task == "classification" else llama()
    examples = rows(task)
    expected = one_row_at_a_time(model, examples, task)
    shuffled = random.Random(7).sample(examples, len(examples))
    for batch_size in (1, 5, 64):
        for order in (examples, shuffled):
            got = run(model, order, task, batch_size, labelled_only=labelled_only)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # fp32 forwards of other shapes
    if task == "classification":
        assert 0 < expected["accuracy"] < 1  # a model that is not constant: the confusion matrix matters


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_give_the_single_process_metrics(task, world):
    model = bert() if task == "classification" else llama()
    examples = rows(task, n=11)
    whole = run(model, examples, task, 4)
    earlier: list = []
    for index in reversed(range(world)):
        rank = Rank(index, world, earlier)
        metrics = run(model, examples, task, 4, rank=rank)
        earlier = rank.sent
    torch.testing.assert_close(metrics, whole, rtol=1e-5, atol=1e-6)


def test_evaluation_restores_each_module_training_flag():
    """A module the run keeps in eval mode (compute.frozen_eval_mode) stays so; the rest train on."""
    model = bert()
    model.train()
    model.bert.embeddings.eval()
    before = [m.training for m in model.modules()]
    run(model, rows("classification", n=4), "classification", 2)
    assert [m.training for m in model.modules()] == before
    assert model.training and not model.bert.embeddings.training


@pytest.mark.parametrize("preset, layers, task, factor", [
    ("all", 6, "classification", EVAL_ROWS_PER_TRAINING_ROW["classification"]),
    ("all", 2, "classification", 2),  # two blocks in backward: twice the rows at most
    ("head-only", 6, "classification", 1),
    ("all", 2, "causal-lm", EVAL_ROWS_PER_TRAINING_ROW["causal-lm"]),
])
def test_default_batch_is_capped_by_the_blocks_in_backward(preset, layers, task, factor):
    model = bert(layers) if task == "classification" else llama()
    for name, param in model.named_parameters():
        param.requires_grad = preset == "all" or name.startswith("classifier")
    assert default_batch_size(model, task, 8) == 8 * factor


@pytest.mark.parametrize("eval_batch, expected", [(3, 3), (None, 16)])
def test_the_engine_uses_eval_batch_size_when_set(eval_batch, expected, tiny_model_factory, sft_file, tmp_path,
                                                  monkeypatch):
    """eval.batch_size wins; unset, the tiny two-block llama at micro-batch 8 evaluates 16 rows a batch."""
    import core.evaluate
    from core.engine import train

    seen, real = [], core.evaluate.evaluate

    def recording(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(core.evaluate, "evaluate", recording)
    config = parse_config(tiny_lm_config(tiny_model_factory("llama"), sft_file, tmp_path / "runs",
                                         schedule={"max_steps": 2}, eval={"every_steps": 2, "num_samples": 0,
                                                                          "batch_size": eval_batch},
                                         output={"save_final": False}))
    sink = ListSink()
    train(config, [sink], report_interval_s=0)
    assert seen == [expected, expected]  # before training (the same rows, the same batches) and after step 2
    result = sink.of_type(EvalResult)[0]
    assert result.tokens_per_s is not None and result.tokens_per_s > 0


def test_eval_events_parse_with_and_without_the_speed_field():
    new = EvalResult(step=4, epoch=0.5, metrics={"loss": 0.4}, is_best=True, seconds=2.0, tokens_per_s=1500.0)
    old = {k: v for k, v in new.to_dict().items() if k != "tokens_per_s"}  # an events.jsonl from before
    parsed_new, parsed_old = parse_event_lines([json.dumps(new.to_dict()), json.dumps(old)])
    assert parsed_new == new
    assert parsed_old.tokens_per_s is None and parsed_old.seconds == 2.0 and parsed_old.metrics == {"loss": 0.4}


async def test_the_train_screen_logs_eval_speed_when_the_event_has_it():
    """A new run's evaluations are logged with their tokens/s; an old log's (no tokens_per_s) are not."""
    from helpers import settle
    from textual.widgets import RichLog

    from core.events import RunStarted
    from sft_tui.app import create_app
    from sft_tui.messages import EngineEvent

    started = RunStarted(run_id="r", run_dir="runs/r", task="causal-lm", model="demo:tiny-lm", config_digest="0",
                         total_params=10, trainable_params=10, planned_steps=40, steps_per_epoch=20, train_rows=320,
                         validation_rows=32, device="cpu", precision="fp32", time=0)
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "5")
        for event in [started, EvalResult(step=10, epoch=0.5, metrics={"loss": 0.4}, is_best=True, seconds=2.0, time=0),
                      EvalResult(step=20, epoch=1.0, metrics={"loss": 0.3}, is_best=True, seconds=2.5,
                                 tokens_per_s=12345.6, time=0)]:
            app.screen.post_message(EngineEvent(event))
            await pilot.pause()
        log = [line.text for line in app.screen.query_one("#log", RichLog).lines]
        assert any("evaluation at step 20: 2.5s, 12,346 tok/s" in line for line in log)
        assert not any("evaluation at step 10" in line for line in log)
