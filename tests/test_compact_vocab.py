"""Only the rows of the input embedding that the training rows use train (core.compact_vocab): the
same losses, evaluations, samples and saved weights as a run that trains every row, a resume that
continues it exactly, and the runs it leaves alone."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from core.config import parse_config
from core.errors import UserError
from core.events import EvalResult, ListSink, LogMessage, SampleGenerated, StepMetrics
from helpers import StopAt


def _config(model_dir, data, runs, task: str, name: str, **compute) -> dict:
    """Every weight trains, with weight decay, clipping, warmup and checkpoints: each meets the rows left out."""
    return {
        "task": task, "seed": 3,
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 24, "val_ratio": 0.2},
        "freeze": {"preset": "all"},
        "optim": {"batch_size": 4, "lr": 3e-3, "weight_decay": 0.1, "max_grad_norm": 0.5},
        "schedule": {"epochs": 2, "warmup_steps": 2},
        "eval": {"every_steps": 4, "num_samples": 2 if task == "causal-lm" else 0, "max_new_tokens": 6},
        "checkpoint": {"every_steps": 5},
        "compute": compute,
        "output": {"runs_dir": str(runs), "run_name": name},
    }


def _train(config: dict, control=None, resume_dir=None):
    from core.engine import train

    sink = ListSink()
    result = train(parse_config(config) if config else None, [sink], control, report_interval_s=0,
                   resume_dir=resume_dir)
    return result, sink


def _weights(folder) -> dict[str, torch.Tensor]:
    return {k: v for file in sorted(folder.glob("*.safetensors")) for k, v in load_file(file).items()}


def _logs(sink) -> list[str]:
    return [e.message for e in sink.of_type(LogMessage)]


@pytest.fixture(scope="module")
def untied_llama(tiny_model_factory, tmp_path_factory):
    """The tiny Llama with its own output head: its input embedding is looked up only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_model_factory("llama")
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    folder = tmp_path_factory.mktemp("untied-llama")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["bert", "untied-llama"])
def test_a_compact_run_matches_a_run_that_trains_every_row(arch, tiny_model_factory, untied_llama, cls_file, sft_file,
                                                           tmp_path):
    model_dir, data, task = ((tiny_model_factory("bert"), cls_file, "classification") if arch == "bert"
                             else (untied_llama, sft_file, "causal-lm"))
    plain_result, plain = _train(_config(model_dir, data, tmp_path, task, "plain", compact_vocab="off"))
    result, compact = _train(_config(model_dir, data, tmp_path, task, "compact"))

    on = [m for m in _logs(compact) if m.startswith("compact vocabulary on")]
    assert on and not any(m.startswith("compact vocabulary") for m in _logs(plain))
    losses = [e.loss for e in compact.of_type(StepMetrics)]
    assert len(losses) >= 8
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([e.loss for e in plain.of_type(StepMetrics)]))
    evals = [e.metrics["loss"] for e in compact.of_type(EvalResult)]
    assert len(evals) >= 2
    plain_evals = [e.metrics["loss"] for e in plain.of_type(EvalResult)]
    torch.testing.assert_close(torch.tensor(evals), torch.tensor(plain_evals))
    if task == "causal-lm":  # generation looks up ids no training row holds
        outputs = [s.output for s in compact.of_type(SampleGenerated)]
        assert outputs and outputs == [s.output for s in plain.of_type(SampleGenerated)]
    saved, expected = _weights(result.output_path), _weights(plain_result.output_path)
    assert saved.keys() == expected.keys()
    embedding = next(name for name in saved if "word_embeddings" in name or "embed_tokens" in name)
    start = _weights(model_dir)
    start_embedding = next(v for k, v in start.items() if k.endswith(embedding.split(".", 1)[-1]))
    assert saved[embedding].shape == start_embedding.shape  # the whole embedding is saved
    moved = ~torch.isclose(saved[embedding], start_embedding, rtol=0, atol=1e-6).all(dim=1)
    assert 0 < int(moved.sum()) < len(moved)  # the used rows trained; the others moved by decay alone, less
    for name in expected:
        torch.testing.assert_close(saved[name], expected[name], msg=name)


def test_a_resumed_compact_run_continues_exactly(tiny_model_factory, cls_file, tmp_path):
    model_dir = tiny_model_factory("bert")
    whole, whole_sink = _train(_config(model_dir, cls_file, tmp_path, "classification", "whole"))
    first, part1 = _train(_config(model_dir, cls_file, tmp_path, "classification", "cut"), StopAt(6))
    assert first.reason == "stopped" and first.last_checkpoint.name == "step-6"
    checkpoint, start = _weights(first.last_checkpoint), _weights(model_dir)
    embedding = next(name for name in checkpoint if "word_embeddings" in name)
    assert checkpoint[embedding].shape == start[embedding.removeprefix("bert.")].shape  # checkpoints hold every row
    resumed, part2 = _train(None, resume_dir=first.run_dir)
    assert resumed.reason == "completed"
    losses = {e.step: e.loss for e in [*part1.of_type(StepMetrics), *part2.of_type(StepMetrics)]}
    expected = {e.step: e.loss for e in whole_sink.of_type(StepMetrics)}
    assert sorted(losses) == sorted(expected)
    torch.testing.assert_close(torch.tensor([losses[s] for s in sorted(losses)]),
                               torch.tensor([expected[s] for s in sorted(expected)]))
    a, b = _weights(whole.output_path), _weights(resumed.output_path)
    for name in a:
        torch.testing.assert_close(b[name], a[name], msg=name)


def test_resuming_on_changed_training_data_is_refused_by_name(tiny_model_factory, cls_file, tmp_path):
    model_dir = tiny_model_factory("bert")
    first, _ = _train(_config(model_dir, cls_file, tmp_path, "classification", "cut"), StopAt(5))
    with cls_file.open("a", encoding="utf-8") as f:  # rows whose words the first start never saw
        f.writelines(json.dumps({"text": f"novel{i} words{i}", "label": "neg"}) + "\n" for i in range(40))
    with pytest.raises(UserError) as err:
        _train(None, resume_dir=first.run_dir)
    assert f"the data of run {first.run_dir} changed since it started" in err.value.message  # core.setup.changed_data
    events = first.run_dir / "events.jsonl"  # a run started before its data's digest was recorded:
    events.write_text(events.read_text(encoding="utf-8").replace('"data_digest"', '"no_digest"'), encoding="utf-8")
    with pytest.raises(UserError) as err:  # the optimizer state's rows still tell
        _train(None, resume_dir=first.run_dir)
    assert "the training data changed since the run started" in err.value.message


def test_unused_ids_read_the_decayed_rows_and_state_dict_holds_the_whole_embedding():
    from core.compact_vocab import CompactEmbedding

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, padding_idx=0)
    original = embedding.weight.detach().clone()
    compact = CompactEmbedding(embedding, [0, 3, 7])
    assert compact.weight.shape == (3, 4) and compact.padding_idx == 0
    with torch.no_grad():
        compact.weight[1] += 1.0  # row 3 trained
    compact.decay = 0.5  # two steps' decay owed by the rows left out
    ids = torch.tensor([[3, 5, 0]])
    out = compact(ids)
    torch.testing.assert_close(out[0, 0], original[3] + 1.0)
    torch.testing.assert_close(out[0, 1], original[5] * 0.5)
    out.sum().backward()
    assert compact.weight.grad[0].abs().sum() == 0  # the padding row gets no gradient, as in nn.Embedding

    state = compact.state_dict()
    assert set(state) == {"weight"} and state["weight"].shape == (10, 4)
    torch.testing.assert_close(state["weight"][3], original[3] + 1.0)
    torch.testing.assert_close(state["weight"][5], original[5] * 0.5)
    torch.testing.assert_close(state["weight"][7], original[7])  # used, untrained: no decay owed

    again = CompactEmbedding(torch.nn.Embedding(10, 4, padding_idx=0), [0, 3, 7])
    again.load_state_dict(state)
    torch.testing.assert_close(again(torch.arange(10)), state["weight"])
    # a padding row no batch holds is not one of the trained rows (index -1 would name the last one)
    assert CompactEmbedding(torch.nn.Embedding(10, 4, padding_idx=9), [0, 3, 7]).padding_idx is None


def test_saved_weight_bytes_count_the_whole_embedding_a_checkpoint_writes():
    """The ETA's first checkpoint estimate: what state_dict writes, not the parameters alone."""
    from core.compact_vocab import CompactEmbedding, saved_weight_bytes

    model = torch.nn.Sequential(CompactEmbedding(torch.nn.Embedding(10, 4), [1, 2]), torch.nn.Linear(4, 3))
    written = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert saved_weight_bytes(model) == written == (10 * 4 + 4 * 3 + 3) * 4
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < written


def _plan(config: dict, model, data_rows, processes: int = 1):
    from core.vocab_plan import plan_compact_vocab, used_ids

    return plan_compact_vocab(parse_config(config), model, len(used_ids(data_rows, 0)), processes)


def test_runs_it_cannot_serve_train_every_row(tiny_model_factory, cls_file, sft_file, tmp_path, caplog):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    rows = [SimpleNamespace(input_ids=[1, 2, 5, 9])]
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_model_factory("bert"), num_labels=2)
    config = _config(tiny_model_factory("bert"), cls_file, tmp_path, "classification", "x")
    assert _plan(config, bert, rows).used == 5  # with the padding id, 0
    assert _plan({**config, "compute": {"compact_vocab": "off"}}, bert, rows) is None
    assert _plan({**config, "lora": {"enabled": True}}, bert, rows) is None
    assert _plan(config, bert, [SimpleNamespace(input_ids=list(range(400)))]) is None  # most rows used: no gain
    with caplog.at_level(logging.INFO, logger="core.engine"):
        assert _plan(config, bert, rows, processes=2) is None
    assert "compact vocabulary off: it runs in one process (compute.nproc 2)" in caplog.text
    bert.get_input_embeddings().weight.requires_grad_(False)
    assert _plan(config, bert, rows) is None  # frozen by the freeze map: nothing to save
    tied = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"))
    assert _plan(_config(tiny_model_factory("llama"), sft_file, tmp_path, "causal-lm", "x"), tied, rows) is None


def test_the_dry_run_says_so_and_counts_no_state_for_the_rows_left_out(tiny_model_factory, cls_file, tmp_path):
    from core.dry_run import prepare, report

    config = _config(tiny_model_factory("bert"), cls_file, tmp_path, "classification", "x")
    on, off = prepare(parse_config(config)), prepare(parse_config({**config, "compute": {"compact_vocab": "off"}}))
    assert on.vocab is not None and off.vocab is None
    assert "compact vocabulary: on" in report(on) and "compact vocabulary" not in report(off)
    assert on.trainable_params == off.trainable_params  # the freeze map still trains the whole embedding
    saved = on.vocab.stateless_params * 12 - on.vocab.trained_params * 4  # fp32 gradient and 2 moments; the copy
    assert off.estimate.total - on.estimate.total == saved > 0
    l2sp = {**config, "optim": {**config["optim"], "l2sp_alpha": 0.01}}  # its starting copy: the used rows only
    on, off = prepare(parse_config(l2sp)), prepare(parse_config({**l2sp, "compute": {"compact_vocab": "off"}}))
    assert off.estimate.reference - on.estimate.reference == on.vocab.stateless_params * 4


def test_a_trained_embedding_below_frozen_blocks_keeps_the_prefix_cache_off(tiny_model_factory, cls_file, tmp_path):
    """The compact embedding keeps the embedding's parameter name, so core.prefix_plan still sees
    it train below the frozen block 0 (a cache there would drop its gradient)."""
    config = _config(tiny_model_factory("bert"), cls_file, tmp_path, "classification", "below", frozen_eval_mode=True)
    config["freeze"]["rules"] = [{"match": "bert.encoder.layer.0", "train": False}]
    _, sink = _train(config)
    logs = _logs(sink)
    assert any(m.startswith("compact vocabulary on") for m in logs)
    assert any(m.startswith("prefix cache off: ") and "trains" in m for m in logs), logs
