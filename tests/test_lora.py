"""LoRA through peft: targets, how it combines with the freeze map, training, export, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import StopAt, tiny_lm_config
from safetensors.torch import load_file

import core.export
from core.config import LoraConfig, parse_config
from core.describe import describe_model
from core.engine import train
from core.errors import UserError
from core.events import ListSink, RunStarted, StepMetrics
from core.freeze import base_name
from core.lora import apply_lora, plan_lora, quantize_problem, resolve_targets
from core.models import load_model


def lm_config(model_dir, data, tmp_path, **sections):
    sections["lora"] = {"enabled": True, **sections.get("lora", {})}
    return parse_config(tiny_lm_config(model_dir, data, tmp_path / "runs", **sections))


def cls_config(model_dir, data, tmp_path, **sections):
    config = {"task": "classification", "seed": 5, "model": {"name_or_path": str(model_dir)},
              "data": {"train": str(data), "max_length": 16}, "optim": {"lr": 5e-3, "batch_size": 8},
              "schedule": {"max_steps": 8}, "eval": {"every_steps": 8, "metric": "accuracy"},
              "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "cls"}, "lora": {"enabled": True}}
    for name, fields in sections.items():
        config.setdefault(name, {}).update(fields)
    return parse_config(config)


def run(config, control=None, **kw):
    sink = ListSink()
    return train(config, [sink], control, report_interval_s=0, **kw), sink


def losses(sink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of_type(StepMetrics)}


@pytest.fixture
def trained_model(monkeypatch):
    """The model the run exports, as it is handed to save_final (a copy: a merge changes it)."""
    import copy

    caught = {}
    save_final = core.export.save_final

    def spy(model, *args, **kwargs):
        caught["model"] = copy.deepcopy(model).eval()
        return save_final(model, *args, **kwargs)

    monkeypatch.setattr(core.export, "save_final", spy)
    return caught


def _loaded(model_dir, task="causal-lm"):
    model = load_model(parse_config({"model": {"name_or_path": str(model_dir)}}).model, task, ["a", "b"],
                       dtype=torch.float32)
    return model, describe_model(model)


# ---- targets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "task", "attention", "linear_per_block"), [
    ("llama", "causal-lm", {"q_proj", "k_proj", "v_proj", "o_proj"}, 7),
    ("gpt2", "causal-lm", {"c_attn", "c_proj"}, 4),
    ("bert", "classification", {"query", "key", "value", "dense"}, 6),
])
def test_presets_find_attention_and_linear_layers_of_each_architecture(arch, task, attention, linear_per_block,
                                                                       tiny_model_factory):
    model, desc = _loaded(tiny_model_factory(arch), task)
    found = resolve_targets(model, desc, ["attention"])
    assert {path.rsplit(".", 1)[1] for path in found} == attention
    assert all(".attn." in p or ".self_attn." in p or ".attention." in p for p in found)
    every = resolve_targets(model, desc, ["all-linear"])
    assert set(found) < set(every)
    assert not any(p.startswith(tuple(desc.head)) for p in every)  # never the output head
    assert len([p for p in every if p.startswith(desc.blocks[0] + ".")]) == linear_per_block


def test_a_pattern_covers_the_layers_below_the_modules_it_matches(tiny_model_factory):
    model, desc = _loaded(tiny_model_factory("llama"))
    assert resolve_targets(model, desc, ["model.layers.1.mlp"]) == [
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert resolve_targets(model, desc, ["re:.*\\.q_proj"]) == ["model.layers.0.self_attn.q_proj",
                                                                "model.layers.1.self_attn.q_proj"]


def test_a_target_that_matches_nothing_names_lora_targets(tiny_model_factory):
    model, desc = _loaded(tiny_model_factory("llama"))
    with pytest.raises(UserError) as caught:
        resolve_targets(model, desc, ["attention", "*.query"])
    assert "lora.targets" in caught.value.message and "'*.query'" in caught.value.message
    assert "model.layers.0.self_attn.q_proj" in caught.value.hint  # a few real names to pick from
    assert caught.value.fields == {"lora.targets.1": "matches no linear or embedding layer"}


def test_a_target_matching_nothing_exits_2_from_the_cli(tiny_model_factory, sft_file, tmp_path):
    config = tiny_lm_config(tiny_model_factory("llama"), sft_file, tmp_path / "runs")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", "run.yaml", "--set", "lora.enabled=true",
                          "--set", "lora.targets=[nothing_here]"], cwd=tmp_path, capture_output=True, text=True, check=False,
                         timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert out.returncode == 2, out.stderr
    assert "lora.targets" in out.stderr and "'nothing_here'" in out.stderr and "Traceback" not in out.stderr


def test_qlora_without_cuda_is_refused_before_the_run(tiny_model_factory, sft_file, tmp_path):
    problem = quantize_problem(LoraConfig(enabled=True, quantize="4bit"), cuda_available=False)
    assert "lora.quantize" in problem.message and "CUDA" in problem.message and "lora.quantize" in problem.fields
    assert quantize_problem(LoraConfig(enabled=True), cuda_available=False) is None
    if torch.cuda.is_available():
        return
    with pytest.raises(UserError, match="lora.quantize"):
        run(lm_config(tiny_model_factory("llama"), sft_file, tmp_path, lora={"quantize": "4bit"}))
    assert not (tmp_path / "runs" / "lm").exists()  # refused before anything trained


def test_a_broken_target_regex_is_told_how_to_fix_it_and_nothing_else():
    """Its hint also said to upgrade peft for DoRA / rsLoRA, which the config did not ask for."""
    from core.lora import lora_problem

    problem = lora_problem(LoraConfig(enabled=True, targets=["attention", "re:(x"]))
    assert "lora.targets.1" in problem.fields and problem.hint == "fix the regex after 're:'"


def test_qlora_asked_for_with_lora_off_says_the_run_is_a_full_fine_tune(tiny_model_factory, sft_file, tmp_path):
    """`--set lora.quantize=4bit` without lora.enabled trained a full fine-tune in full precision
    without a word: many times the memory the user planned for."""
    config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path, lora={"enabled": False, "quantize": "4bit"},
                       schedule={"max_steps": 1})
    _, sink = run(config)
    assert any(e.type == "log" and e.level == "warning" and "lora.quantize 4bit is set but lora.enabled is false"
               in e.message for e in sink.events)


# ---- freeze map and LoRA ----------------------------------------------------------------------------

def test_a_new_head_trains_in_full_and_top_n_blocks_take_no_adapters(tiny_model_factory, cls_file, tmp_path):
    model, desc = _loaded(tiny_model_factory("bert"), "classification")
    plan = plan_lora(model, desc, cls_config(tiny_model_factory("bert"), cls_file, tmp_path))
    assert plan.modules_to_save == ["classifier"]
    assert len(plan.targets) == 13  # 6 per block and the pooler

    top = cls_config(tiny_model_factory("bert"), cls_file, tmp_path, freeze={"preset": "top-n", "top_n": 1})
    plan = plan_lora(model, desc, top)
    assert plan.modules_to_save == ["bert.encoder.layer.1", "bert.pooler", "classifier"]
    assert all(p.startswith("bert.encoder.layer.0.") for p in plan.targets)


def test_the_summary_counts_adapters_and_the_head(tiny_model_factory, cls_file, tmp_path):
    model, desc = _loaded(tiny_model_factory("bert"), "classification")
    base_total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())
    config = cls_config(tiny_model_factory("bert"), cls_file, tmp_path, lora={"r": 4, "targets": ["attention"]})
    wrapped, plan, summary = apply_lora(model, desc, config)
    adapters = sum(4 * (m.in_features + m.out_features) for path, m in model.named_modules()
                   if base_name(path) in plan.targets and isinstance(m, torch.nn.Linear))
    assert summary.trainable_params == adapters + head
    assert summary.total_params == base_total + adapters
    assert summary.trainable_params == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch,sections,ties", [
    ("bert", {}, False),
    ("llama", {}, False),
    ("llama", {"freeze": {"preset": "top-n", "top_n": 1}}, True),
    ("llama", {"lora": {"targets": ["all-linear", "model.embed_tokens"]}}, True),
    ("gpt2", {"lora": {"targets": ["all-linear", "transformer.wte"]}}, False),  # peft ties by name only
])
def test_wrapping_prints_no_library_warning(tiny_model_factory, cls_file, sft_file, tmp_path, arch, sections, ties):
    """Wrapping is silent: peft read `is_gradient_checkpointing`, which transformers 5 deprecated, and
    said that the weight tying asked for found nothing to tie (BERT ties nothing; the tiny Llama's
    tied head stays frozen under default LoRA). Both opened every LoRA run's output, headless and in
    the app's log, and neither is the user's to act on. Tying is asked for where peft has a tied
    module to tie (a top-n map trains the head, an embedding target), and only there, as peft saves
    the flag with the adapter and warns again at its load."""
    import warnings

    from core.lora import plan_lora, trains_tied_weights

    task = "classification" if arch == "bert" else "causal-lm"
    model, desc = _loaded(tiny_model_factory(arch), task)
    config = (cls_config(tiny_model_factory(arch), cls_file, tmp_path) if arch == "bert"
              else lm_config(tiny_model_factory(arch), sft_file, tmp_path, **sections))
    assert trains_tied_weights(model, plan_lora(model, desc, config)) == ties
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped, _, _ = apply_lora(model, desc, config)
    assert [str(w.message) for w in caught] == []
    assert getattr(wrapped.peft_config["default"], "ensure_weight_tying", False) == ties


def test_merging_adapters_on_a_tied_head_is_refused_before_the_run(tiny_model_factory, sft_file, tmp_path):
    """An adapter on the tiny demo's tied lm_head (peft puts one on its embedding too) exported a
    `final/merged/` whose logits were 13 off the trained adapter's: both deltas went into the one
    shared weight."""
    from core.lora import plan_lora

    model, desc = _loaded(tiny_model_factory("llama"), "causal-lm")
    for target in ("lm_head", "model.embed_tokens"):
        config = lm_config(tiny_model_factory("llama"), sft_file, tmp_path,
                           lora={"targets": [target], "merge_on_export": True})
        with pytest.raises(UserError, match=f"lora.merge_on_export cannot merge adapters on {target}") as err:
            plan_lora(model, desc, config)
        assert "lora.merge_on_export" in err.value.fields
        assert plan_lora(model, desc, config.model_copy(update={"lora": config.lora.model_copy(
            update={"merge_on_export": False})})).targets == [target]  # the adapter alone is fine
    plan_lora(model, desc, lm_config(tiny_model_factory("llama"), sft_file, tmp_path, lora={"merge_on_export": True}))


# ---- training, export, resume -------------------------------------------------------------------

def test_only_adapters_and_the_head_train_and_both_exports_load(tiny_model_factory, cls_file, tmp_path,
                                                                trained_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model_dir = tiny_model_factory("bert")
    config = cls_config(model_dir, cls_file, tmp_path, lora={"merge_on_export": True, "r": 4})
    result, sink = run(config)
    started = sink.of_type(RunStarted)[0]
    assert 0 < started.trainable_params < started.total_params / 5

    # the trained model's base weights are the original ones, bit for bit
    trained = trained_model["model"]
    saved = dict(trained.named_parameters())
    original = {f"bert.{k}": v for k, v in load_file(str(model_dir / "model.safetensors")).items()}  # a bare BertModel
    base = {base_name(k): v for k, v in saved.items() if "lora_" not in k and ".modules_to_save." not in k}
    assert set(original) <= set(base)
    assert all(torch.equal(original[k], base[k]) for k in original)
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # every adapter moved off its zero start
    assert {k for k, v in saved.items() if v.requires_grad} == {k for k in saved if "lora_" in k or
                                                                ".modules_to_save." in k}

    adapter_files = {p.name for p in result.output_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= adapter_files
    assert "model.safetensors" not in adapter_files
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    base_model = AutoModelForSequenceClassification.from_pretrained(model_dir, **labels)
    with_adapter = PeftModel.from_pretrained(base_model, result.output_path).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(result.output_path / "merged").eval()
    assert merged.config.id2label == {0: "neg", 1: "pos"}

    batch = {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        expected = trained(**batch).logits
        torch.testing.assert_close(with_adapter(**batch).logits, expected)
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_the_load_snippet_of_a_classification_adapter_loads_its_classes(tiny_model_factory, tmp_path, trained_model):
    """Loaded over its base, the adapter got the base's default head of 2 classes named LABEL_0 and
    LABEL_1: a 3-class adapter failed to load ("size mismatch"), and the app's snippet and try-it box
    with it. The adapter now keeps its class names (labels.json), and the snippet loads with them."""
    from core.final_layout import adapter_labels
    from helpers import write_jsonl
    from sft_tui.format.train import load_snippet

    rows = [{"text": f"{w} is {['bad awful', 'so so', 'good great'][i % 3]}", "label": ["neg", "meh", "pos"][i % 3]}
            for i, w in enumerate(["red", "blue", "green", "gold", "pink", "gray"] * 8)]
    config = cls_config(tiny_model_factory("bert"), write_jsonl(tmp_path / "three.jsonl", rows), tmp_path, lora={"r": 4})
    result, _ = run(config)
    assert adapter_labels(result.output_path) == ["meh", "neg", "pos"]
    scope: dict = {}
    exec(load_snippet("classification", str(result.output_path)).replace("AutoModelForSequenceClassification.from",
                                                                         "model = AutoModelForSequenceClassification.from"),
         scope)
    model = scope["model"].eval()
    assert model.config.id2label == {0: "meh", 1: "neg", 2: "pos"}
    batch = {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained_model["model"](**batch).logits)


def test_causal_lm_adapter_and_merged_model_compute_like_the_trained_one(tiny_model_factory, sft_file, tmp_path,
                                                                          trained_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_factory("llama")
    config = lm_config(model_dir, sft_file, tmp_path, lora={"merge_on_export": True}, schedule={"max_steps": 10},
                       eval={"every_steps": 10, "num_samples": 0})
    result, _ = run(config)
    ids = torch.tensor([[1, 5, 8, 13, 21, 34]])
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        untrained = base(ids).logits
        adapter = PeftModel.from_pretrained(base, result.output_path).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.output_path / "merged").eval()(ids).logits
    with torch.no_grad():
        expected = trained_model["model"](ids).logits
    assert not torch.allclose(untrained, expected)
    torch.testing.assert_close(adapter, expected)
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_a_tied_head_trained_in_full_stays_tied_through_training_and_export(tiny_model_factory, sft_file, tmp_path,
                                                                           trained_model):
    """The tiny Llama ties its LM head to the embedding; head-only under LoRA trains that one tensor
    in full. peft once made it two trained copies that drifted apart: now it is one trained tensor,
    as in full fine-tuning, and both exports still compute like the trained model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_factory("llama")
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.tie_word_embeddings
    config = lm_config(model_dir, sft_file, tmp_path, freeze={"preset": "head-only"}, lora={"merge_on_export": True},
                       schedule={"max_steps": 6}, eval={"every_steps": 0, "num_samples": 0})
    result, _ = run(config)
    trained = trained_model["model"]
    inner = trained.get_base_model()
    head, embedding = inner.get_output_embeddings().weight, inner.get_input_embeddings().weight
    assert head.requires_grad and head.data_ptr() == embedding.data_ptr()
    ids = torch.tensor([[1, 5, 8, 13, 21, 34]])
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = trained(ids).logits
        assert not torch.allclose(base(ids).logits, expected)
        torch.testing.assert_close(PeftModel.from_pretrained(base, result.output_path).eval()(ids).logits, expected)
        merged = AutoModelForCausalLM.from_pretrained(result.output_path / "merged").eval()
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_resume_with_lora_equals_an_uninterrupted_run(tiny_model_factory, sft_file, tmp_path):
    """GPT-2 has dropout and LoRA dropout is on, so the RNG state's restoring is checked too."""
    model_dir = tiny_model_factory("gpt2")
    full_cfg = lm_config(model_dir, sft_file, tmp_path, schedule={"max_steps": 10}, eval={"every_steps": 0,
                         "num_samples": 0}, optim={"grad_accum": 2}, output={"run_name": "full"})
    full_result, full = run(full_cfg)
    cut_cfg = full_cfg.model_copy(deep=True)
    cut_cfg.output.run_name = "cut"
    first, part1 = run(cut_cfg, StopAt(4))
    assert first.step == 4 and first.last_checkpoint.name == "step-4"
    saved = load_file(str(first.last_checkpoint / "model.safetensors"))
    assert saved and all(".lora_" in name for name in saved)  # the frozen base is not copied into checkpoints
    resumed, part2 = run(None, resume_dir=first.run_dir)
    assert resumed.step == 10

    got = {**losses(part1), **losses(part2)}
    expected = losses(full)
    assert sorted(got) == list(range(1, 11))
    torch.testing.assert_close(torch.tensor([got[s] for s in range(1, 11)]),
                               torch.tensor([expected[s] for s in range(1, 11)]))
    a = load_file(str(full_result.output_path / "adapter_model.safetensors"))
    b = load_file(str(resumed.output_path / "adapter_model.safetensors"))
    assert set(a) == set(b) and a
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    adapter_config = json.loads((resumed.output_path / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["peft_type"] == "LORA"
    assert not (Path(resumed.output_path) / "merged").exists()


def test_qlora_without_a_gpu_is_a_problem_the_app_lists_before_the_start():
    from core.config import RunConfig
    from core.launch import Gpus
    from sft_tui.session import Session

    session = Session(RunConfig(lora={"enabled": True, "quantize": "4bit"}), gpus=Gpus({}))
    assert session.problems()["lora.quantize"].startswith("needs a CUDA GPU")
    session.update({"lora.quantize": "none"})
    assert "lora.quantize" not in session.problems()


def test_l2sp_pulls_adapters_and_the_new_head_to_zero_and_trained_copies_to_their_start(tiny_model_factory, cls_file,
                                                                                          tmp_path):
    """Issue 13: L2-SP with LoRA. The adapters and the new head's trained copy are new weights
    (beta); a pretrained block that the map trains in full (peft's modules_to_save) is pulled
    towards its start (alpha), so only it has a reference copy."""
    from core.l2sp import L2SP, reference_params

    model, desc = _loaded(tiny_model_factory("bert"), "classification")
    config = cls_config(tiny_model_factory("bert"), cls_file, tmp_path, freeze={"preset": "top-n", "top_n": 1})
    in_full = sum(p.numel() for m in (model.bert.encoder.layer[1], model.bert.pooler) for p in m.parameters())
    wrapped, _, _ = apply_lora(model, desc, config)
    assert reference_params(wrapped) == in_full
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    l2sp = L2SP(wrapped, optimizer, alpha=1.0, beta=1.0)
    _, pretrained, _, new = l2sp.groups[0]
    names = {id(p): n for n, p in wrapped.named_parameters()}
    assert sum(p.numel() for p in pretrained) == in_full
    assert {names[id(p)].split(".")[-2] for p in new} >= {"default"}  # lora_A.default / lora_B.default
    assert any("classifier.modules_to_save" in names[id(p)] for p in new)
    assert all(".lora_" in names[id(p)] or "classifier" in names[id(p)] for p in new)


@pytest.mark.parametrize("enabled,lr,advised", [(True, 5e-5, True), (True, 2e-4, False), (False, 5e-5, False)])
def test_lora_at_a_full_fine_tuning_rate_gets_a_word_at_the_start(tiny_model_factory, cls_file, tmp_path, caplog,
                                                                  enabled, lr, advised):
    """On the MiniLM demo LoRA at the full fine-tuning rate (5e-5) left accuracy where it began and
    5e-4 reached 0.80: the run's log says so, and so does the app's setup (lr_advice)."""
    import logging

    from core.data import prepare_data
    from core.lora import lr_advice
    from core.models import load_tokenizer
    from core.setup import setup_model

    config = cls_config(tiny_model_factory("bert"), cls_file, tmp_path, optim={"lr": lr}, lora={"enabled": enabled})
    assert (lr_advice(config) is not None) == advised
    tokenizer = load_tokenizer(config.model)
    with caplog.at_level(logging.WARNING, logger="core.engine"):
        setup_model(config, tokenizer, prepare_data(config, tokenizer))
    said = [r.getMessage() for r in caplog.records if "low for LoRA" in r.getMessage()]
    assert said == ([f"optim.lr {lr:g} is low for LoRA: adapters usually train at 1e-4 to 5e-4"] if advised else [])
