"""The frozen-prefix activation cache (core.prefix_cache): the same losses, gradients and weights as
the plain path, the prefix run once per row, and the cases it refuses with their reasons."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from core.config import parse_config
from core.events import LogMessage, StepMetrics

ENCODERS = ("bert",)
DROPOUT = ("bert", "gpt2")
"""Tiny models whose config keeps the stock dropout (0.1): their runs ask for compute.frozen_eval_mode."""


def _config(model_dir, data, runs, arch, **compute) -> dict:
    """Top-1 of 2 blocks (bert: head only), with a tied LM head frozen so nothing below trains."""
    encoder = arch in ENCODERS
    rules = [] if encoder else [{"match": "lm_head", "train": False}]
    return {
        "task": "classification" if encoder else "causal-lm", "seed": 5,
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 24, "val_ratio": 0.0},
        "freeze": {"preset": "head-only" if encoder else "top-n", "top_n": 1, "rules": rules},
        "optim": {"batch_size": 4, "lr": 3e-3},
        "schedule": {"epochs": 2, "warmup_steps": 0},
        "eval": {"num_samples": 0},
        "checkpoint": {"every_steps": 0},
        "compute": {"frozen_eval_mode": arch in DROPOUT, **compute},
        "output": {"runs_dir": str(runs), "run_name": arch},
    }


class _Sink:
    def __init__(self) -> None:
        self.events = []

    def emit(self, event) -> None:
        self.events.append(event)

    def logs(self) -> list[str]:
        return [e.message for e in self.events if isinstance(e, LogMessage)]


def _train(config: dict):
    """(sink, final weights) of a run of `config`, reporting every step."""
    from safetensors.torch import load_file

    from core.engine import train

    sink = _Sink()
    result = train(parse_config(config), [sink], report_interval_s=0)
    weights = {}
    for file in sorted(result.output_path.glob("*.safetensors")):
        weights.update(load_file(file))
    return sink, weights


def _count_prefix_rows(monkeypatch) -> list[int]:
    """Rows that block 0 of every model built from here on runs for (its forward's batch sizes)."""
    from core import setup

    seen: list[int] = []
    build = setup.setup_model

    def counted(*args, **kwargs):
        model, rules, summary = build(*args, **kwargs)
        from core.describe import describe_model

        block0 = model.get_submodule(describe_model(model).blocks[0])
        block0.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
        return model, rules, summary

    monkeypatch.setattr(setup, "setup_model", counted)
    return seen


@pytest.mark.parametrize(("arch", "compute"), [("llama", {}), ("qwen2", {}), ("gpt2", {}), ("bert", {}),
                                               ("llama", {"gradient_checkpointing": True})],
                         ids=["llama", "qwen2", "gpt2", "bert", "llama-checkpointing"])
def test_cached_run_matches_the_plain_run(arch, compute, tiny_model_factory, sft_file, cls_file, tmp_path,
                                          monkeypatch):
    data = cls_file if arch in ENCODERS else sft_file
    off = _config(tiny_model_factory(arch), data, tmp_path / "off", arch, prefix_cache="off", **compute)
    plain_sink, plain = _train(off)
    seen = _count_prefix_rows(monkeypatch)
    sink, cached = _train(_config(tiny_model_factory(arch), data, tmp_path / "on", arch, **compute))

    assert any(m.startswith("prefix cache on") for m in sink.logs()), sink.logs()
    assert "prefix cache off: compute.prefix_cache is off" in plain_sink.logs()
    losses = [e.loss for e in sink.events if isinstance(e, StepMetrics)]
    plain_losses = [e.loss for e in plain_sink.events if isinstance(e, StepMetrics)]
    assert len(losses) == len(plain_losses) > 4
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses))
    assert plain.keys() == cached.keys()
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], msg=name)
    train_rows = len(data.read_text(encoding="utf-8").splitlines())
    assert sum(seen) == train_rows  # each row once over two epochs: the second adds none


def _model(arch: str, folder):
    """A tiny model of `arch` with only its top block (and head) trainable, as top-1 freezing leaves it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from core.describe import describe_model

    if arch in ENCODERS:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    desc = describe_model(model)
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(p + ".") for p in desc.blocks[-1:] + desc.top + desc.head))
    if arch not in ENCODERS:
        model.get_output_embeddings().weight.requires_grad_(False)  # tied: the embedding
    return model


def _cache(model, rows, **compute):
    from core.prefix_cache import PrefixCache

    config = parse_config({"model": {"name_or_path": "x"}, "data": {"train": "x.jsonl"},
                           "compute": {"frozen_eval_mode": True, **compute}})
    acc = SimpleNamespace(device=torch.device("cpu"), distributed_type=DistributedType.NO)
    return PrefixCache.for_run(config, acc, model, rows)


@pytest.mark.parametrize("arch, packed", [("llama", False), ("gpt2", False), ("bert", False), ("llama", True)],
                         ids=["llama", "gpt2", "bert", "llama-packed"])
def test_gradients_of_a_step_match_at_every_padding(arch, packed, tiny_model_factory):
    from core.data import Example, collate
    from core.data.prepare import _pack
    from core.loss import batch_loss_sum

    torch.manual_seed(0)
    model = _model(arch, tiny_model_factory(arch))
    task = "classification" if arch in ENCODERS else "causal-lm"
    rows = [SimpleNamespace(input_ids=torch.randint(5, 200, (n,)).tolist(),
                            labels=(i % 3) if arch in ENCODERS else torch.randint(5, 200, (n,)).tolist())
            for i, n in enumerate([7, 12, 5, 9])]
    if packed:  # blocks of several rows (data.packing), told apart by their position ids
        rows = _pack([Example(torch.randint(5, 200, (n,)).tolist(), torch.randint(5, 200, (n,)).tolist())
                      for n in [3, 4, 5, 7, 2, 6, 4, 5]], 12)
        assert [len(b.position_ids) for b in rows] == [12, 9, 10, 5]
    cache = _cache(model, rows)
    assert cache.active
    model.eval()  # dropout off in the top block too: the two paths must draw nothing

    def step(indices, use_cache):
        batch = collate([rows[i] for i in indices], 0, task)
        model.zero_grad()
        with cache.serving(indices, batch) if use_cache else torch.enable_grad():
            loss, _ = batch_loss_sum(model, batch, task)
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    prefix_runs: list[int] = []
    cache.real[0].register_forward_hook(lambda module, args, output: prefix_runs.append(args[0].shape[0]))
    for indices, runs in (([0, 1, 2], [3]), ([2, 3, 0], [1]), ([1, 2], [])):  # filling, mixed, cached at a new width
        prefix_runs.clear()
        loss, grads = step(indices, True)
        assert prefix_runs == runs  # the rows not cached yet, and only those
        plain_loss, plain_grads = step(indices, False)
        torch.testing.assert_close(loss, plain_loss)
        for name in plain_grads:
            torch.testing.assert_close(grads[name], plain_grads[name], msg=name)
    assert cache.prefix_rows == 4 and set(cache.store) == {0, 1, 2, 3}
    assert [type(m).__name__ for m in cache.stack] == [type(cache.real[0]).__name__] * 2  # the real blocks are back


def test_ineligible_maps_say_why_and_train(tiny_model_factory, sft_file, cls_file, tmp_path):
    llama, gpt2 = tiny_model_factory("llama"), tiny_model_factory("gpt2")
    cases = {
        "dropout": (_config(gpt2, sft_file, tmp_path / "a", "gpt2", frozen_eval_mode=False),
                    "block 0 draws dropout; set compute.frozen_eval_mode"),
        "embeddings": (_config(llama, sft_file, tmp_path / "b", "llama") | {"freeze": {"preset": "top-n", "top_n": 1}},
                       "trains; freeze "),
        # nothing frozen below the lowest trained block: nothing to say in every full or LoRA run
        "full": (_config(llama, sft_file, tmp_path / "c", "llama") | {"freeze": {"preset": "all"}}, None),
        "lora": (_config(llama, sft_file, tmp_path / "d", "llama") | {"lora": {"enabled": True}, "freeze": {}}, None),
        "memory": (_config(llama, sft_file, tmp_path / "e", "llama", prefix_cache_max_gb=1e-6),
                   "(compute.prefix_cache_max_gb)"),
    }
    for name, (config, reason) in cases.items():
        config["schedule"] = {"max_steps": 2}
        sink, _ = _train(config)
        lines = [m for m in sink.logs() if m.startswith("prefix cache")]
        if reason is None:
            assert lines == [], name
        else:
            assert len(lines) == 1 and lines[0].startswith("prefix cache off") and reason in lines[0], (name, lines)
        assert len([e for e in sink.events if isinstance(e, StepMetrics)]) == 2


def test_cache_that_outgrows_its_limit_turns_off(tiny_model_factory):
    rows = [SimpleNamespace(input_ids=list(range(5, 15)), labels=list(range(5, 15))) for _ in range(3)]
    model = _model("llama", tiny_model_factory("llama"))
    cache = _cache(model, rows, prefix_cache_max_gb=1e-9 * 3 * 10 * 64 * 4 / 1.073741824)  # three rows just fit
    from core.data import collate

    cache.lengths.append(30)  # a row longer than the start's estimate counted: the limit is checked as it fills
    rows.append(SimpleNamespace(input_ids=list(range(5, 35)), labels=list(range(5, 35))))
    with cache.serving([0, 1, 2], collate(rows[:3], 0, "causal-lm")):
        pass
    assert cache.active and len(cache.store) == 3
    with cache.serving([3], collate(rows[3:], 0, "causal-lm")):
        pass
    assert not cache.active and not cache.store
    assert all(type(m).__name__ != "Stub" for m in cache.stack)


def test_expected_speedup_counts_the_blocks_below_the_lowest_trained_one():
    from core.memory import ModelShape
    from core.prefix_plan import expected_speedup

    shape = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152, rms_norm=True,
                       activation="silu", attention_dropout=0.0)
    blocks = [f"model.layers.{i}" for i in range(30)]
    top2 = expected_speedup(shape, blocks, ["model.embed_tokens"], ["model.layers.28.mlp", "model.layers.29"],
                            epochs=3, length=128, head_positions=0.2)
    assert top2.cached_blocks == 28 and 2 < top2.later_epochs < 15 and 1 < top2.overall < top2.later_epochs
    assert top2.cache_bytes_per_token == 576 * 4
    tied = expected_speedup(shape, blocks, ["model.embed_tokens"], ["model.embed_tokens.weight", "model.layers.29"],
                            epochs=3, length=128)
    assert tied.cached_blocks == 0 and tied.later_epochs == tied.overall == 1.0


def test_validation_rows_run_the_prefix_once_over_all_evaluations(tiny_model_factory, sft_file, tmp_path, monkeypatch):
    """Evaluations read the frozen prefix's output from the cache too: the same metrics as without
    it, and block 0 runs once per training and validation row over two epochs and their evaluations."""
    from core.events import EvalResult, RunStarted

    def config(runs, **compute):
        cfg = _config(tiny_model_factory("llama"), sft_file, runs, "llama", **compute)
        cfg["data"]["val_ratio"] = 0.25
        cfg["eval"] = {"num_samples": 0, "every_steps": 2}
        return cfg

    plain_sink, _ = _train(config(tmp_path / "off", prefix_cache="off"))
    seen = _count_prefix_rows(monkeypatch)
    sink, _ = _train(config(tmp_path / "on"))
    evals = [e.metrics for e in sink.events if isinstance(e, EvalResult)]
    plain_evals = [e.metrics for e in plain_sink.events if isinstance(e, EvalResult)]
    assert len(evals) == len(plain_evals) >= 3
    for cached, plain in zip(evals, plain_evals):
        torch.testing.assert_close(cached["loss"], plain["loss"])
    started = next(e for e in sink.events if isinstance(e, RunStarted))
    assert started.validation_rows > 0
    assert sum(seen) == started.train_rows + started.validation_rows
