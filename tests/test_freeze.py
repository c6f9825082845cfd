"""core.freeze (rules, presets, optimizer groups) and the memory estimate the freeze screen shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from core.config import FreezeConfig, FreezeRule, ModelConfig
from core.describe import describe_model
from core.errors import UserError
from core.freeze import (
    ParamState,
    PresetRule,
    apply_freeze_map,
    effective_rules,
    match_problem,
    param_groups,
    preset_rules,
    resolve,
    rule_name,
    rule_problems,
    summarize_freeze,
    training_problem,
    user_rule_index,
)
from core.device_usage import gpu_stats, process_memory
from core.memory import estimate_training_memory, format_bytes
from core.models import load_model

CASES = [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("qwen2", "causal-lm"), ("mistral", "causal-lm"),
         ("gpt2", "classification"), ("bert", "classification"), ("roberta", "classification"),
         ("distilbert", "classification")]


def R(match: str, train: bool = True, lr_scale: float = 1.0) -> FreezeRule:
    return FreezeRule(match=match, train=train, lr_scale=lr_scale)


def _load(tiny_model_dir, arch: str, task: str):
    labels = ["a", "b"] if task == "classification" else None
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir(arch))), task, labels)


@pytest.fixture
def gpt2(tiny_model_dir):
    return _load(tiny_model_dir, "gpt2", "causal-lm")


@pytest.fixture
def bert(tiny_model_dir):
    return _load(tiny_model_dir, "bert", "classification")


class Stack(nn.Module):
    """Twelve layers, so that `layers.1` and `layers.10` can be told apart."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(12))


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _names_under(model, paths: list[str]) -> set[str]:
    """Parameter names (tied aliases resolved to the first name) of tensors with any name under `paths`."""
    ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False)
           if any(n == q or n.startswith(q + ".") for q in paths)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ---- matching -------------------------------------------------------------------------------------


def test_no_rules_train_everything_at_scale_one(gpt2):
    states = resolve(gpt2, [])
    assert {s.train for s in states.values()} == {True}
    assert {s.lr_scale for s in states.values()} == {1.0}
    assert {s.rule for s in states.values()} == {None}


def test_later_rules_win(gpt2):
    states = resolve(gpt2, [R("*", False), R("transformer.h.1"), R("transformer.h.1.mlp", False, 2.0)])
    assert states["transformer.h.0.attn.c_attn.weight"].train is False
    assert states["transformer.h.1.attn.c_attn.weight"] == states["transformer.h.1.ln_1.bias"]
    assert states["transformer.h.1.attn.c_attn.weight"].rule == 1
    assert states["transformer.h.1.mlp.c_fc.weight"].train is False
    assert states["transformer.h.1.mlp.c_fc.weight"].rule == 2


def test_exact_path_covers_a_module_and_nothing_that_only_shares_a_prefix():
    states = resolve(Stack(), [R("*", False), R("layers.1")])
    assert states["layers.1.weight"].train and states["layers.1.bias"].train
    assert not states["layers.10.weight"].train
    assert not states["layers.11.bias"].train


def test_exact_parameter_name():
    states = resolve(Stack(), [R("layers.3.bias", False)])
    assert not states["layers.3.bias"].train
    assert states["layers.3.weight"].train


def test_glob_matches_modules_and_parameter_names():
    states = resolve(Stack(), [R("*", False), R("*.1[0-1]"), R("*.bias", lr_scale=0.5)])
    assert states["layers.10.weight"].train and states["layers.11.weight"].train
    assert not states["layers.1.weight"].train
    assert states["layers.0.bias"] == states["layers.10.bias"]
    assert states["layers.0.bias"].lr_scale == 0.5


def test_regex_is_a_full_match_on_names_or_module_paths():
    states = resolve(Stack(), [R("*", False), R(r"re:layers\.[2-4]"), R(r"re:layers\.(5|6)\.w.*", lr_scale=3.0)])
    assert all(states[f"layers.{i}.bias"].train for i in (2, 3, 4))
    assert states["layers.5.weight"].lr_scale == 3.0
    assert not states["layers.5.bias"].train  # `w.*` does not cover the bias
    assert not states["layers.7.weight"].train


def test_invalid_regex_names_the_rule():
    with pytest.raises(UserError, match=r"freeze.rules.1.match 're:\(unclosed' is not a valid regular expression"):
        resolve(Stack(), [R("*"), R("re:(unclosed")])


def test_rule_checks_need_no_model_and_name_every_bad_rule_by_field():
    """The app lists these problems before any model has loaded, with the same words resolve uses."""
    assert match_problem("re:[a-z]+") is None and match_problem("*.bias") is None
    assert match_problem("re:(").startswith("'re:(' is not a valid regular expression")
    error = rule_problems([R("*"), R("re:("), R("ok"), R("re:[")])
    assert set(error.fields) == {"freeze.rules.1.match", "freeze.rules.3.match"}
    assert error.fields["freeze.rules.1.match"] == match_problem("re:(")
    assert error.message.startswith("freeze.rules.1.match 're:(' is not a valid") and "re:" in error.hint
    assert rule_problems([R("*"), R("re:layers")]) is None


def test_training_problem_is_the_one_apply_freeze_map_raises(bert):
    assert training_problem(summarize_freeze(bert, [R("*")])) is None
    problem = training_problem(summarize_freeze(bert, [R("*", False)]))
    assert problem.fields == {"freeze": "the map leaves no trainable parameters"}
    with pytest.raises(UserError) as raised:
        apply_freeze_map(bert, [R("*", False)])
    assert (raised.value.message, raised.value.hint) == (problem.message, problem.hint)


def test_user_rules_are_numbered_apart_from_the_preset():
    rules = [PresetRule(match="*", train=False), PresetRule(match="head"), R("a"), R("b")]
    assert [user_rule_index(rules, i) for i in range(4)] == [None, None, 0, 1]
    assert [rule_name(rules, i) for i in range(4)] == ["freeze.preset", "freeze.preset", "freeze.rules.0",
                                                      "freeze.rules.1"]


def test_rules_are_named_by_their_place_in_the_config_not_in_the_preset_plus_rules_list(bert):
    """Defect: messages numbered the preset's rules and the user's together, so with the head-only
    preset (2 rules) the user's first rule was "freeze rule 2" while the config's own errors call it
    freeze.rules.0. Both now say freeze.rules.N, counted in the YAML's list."""
    config = FreezeConfig(preset="head-only", rules=[R("classifier"), R("re:(unclosed")])
    with pytest.raises(UserError, match=r"^freeze.rules.1.match 're:\(unclosed' is not a valid"):
        summarize_freeze(bert, effective_rules(config, describe_model(bert)))
    config = FreezeConfig(preset="head-only", rules=[R("classifier"), R("bert.no_such_module")])
    summary = summarize_freeze(bert, effective_rules(config, describe_model(bert)))
    assert summary.warnings == ["freeze.rules.1 ('bert.no_such_module') matches no parameter"]


def test_tied_weights_follow_the_last_rule_matching_any_name(gpt2):
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    frozen = resolve(gpt2, [R("*"), R("transformer.wte", False)])
    assert frozen["lm_head.weight"] == frozen["transformer.wte.weight"]
    assert not frozen["lm_head.weight"].train
    trained = resolve(gpt2, [R("*", False), R("transformer.wte", False), R("lm_head", lr_scale=0.1)])
    assert trained["transformer.wte.weight"] == trained["lm_head.weight"] == ParamState(True, 0.1, 2)


# ---- summary and application ----------------------------------------------------------------------


def test_summary_counts_add_up_and_warn_about_rules_that_match_nothing(bert):
    rules = [R("*", False), R("bert.encoder.layer.1"), R("classifier", lr_scale=5.0), R("bert.no_such_module")]
    summary = apply_freeze_map(bert, rules)
    total = sum(p.numel() for p in bert.parameters())
    assert summary.total_params == total
    assert summary.trainable_params == sum(p.numel() for p in bert.parameters() if p.requires_grad)
    assert summary.trainable_share == pytest.approx(summary.trainable_params / total)
    assert sum(r.params for r in summary.rules) + summary.unmatched_params == total
    assert summary.unmatched_params == 0
    by_index = {r.index: r for r in summary.rules}
    assert by_index[1].params == sum(p.numel() for p in bert.bert.encoder.layer[1].parameters())
    assert by_index[2].tensors == 2 and by_index[2].lr_scale == 5.0
    assert by_index[3].params == 0
    assert summary.warnings == ["freeze.rules.3 ('bert.no_such_module') matches no parameter"]
    assert _trainable(bert) == _names_under(bert, ["bert.encoder.layer.1", "classifier"])


def test_summarize_does_not_touch_the_model(bert):
    summary = summarize_freeze(bert, [R("*", False)])
    assert summary.trainable_params == 0
    assert all(p.requires_grad for p in bert.parameters())


def test_a_map_that_trains_nothing_is_an_error_and_changes_nothing(bert):
    with pytest.raises(UserError, match=r"the freeze map leaves no trainable parameters \(freeze.preset, then"):
        apply_freeze_map(bert, [R("*"), R("*", False)])
    assert all(p.requires_grad for p in bert.parameters())


# ---- presets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "task"), CASES)
def test_presets_train_what_they_say(tiny_model_dir, arch, task):
    model = _load(tiny_model_dir, arch, task)
    desc = describe_model(model)
    everything = {name for name, _ in model.named_parameters()}

    def trained(preset: str, top_n: int = 1) -> set[str]:
        apply_freeze_map(model, preset_rules(preset, desc, top_n))
        return _trainable(model)

    assert trained("all") == everything
    assert trained("head-only") == _names_under(model, desc.top + desc.head)  # and what only feeds it: top-0
    assert trained("top-n", 1) == _names_under(model, desc.blocks[-1:] + desc.top + desc.head)
    assert trained("top-n", 0) == _names_under(model, desc.top + desc.head)
    assert trained("top-n", 99) == _names_under(model, desc.blocks + desc.top + desc.head)
    assert trained("freeze-embeddings") == everything - _names_under(model, desc.embeddings)
    summary = apply_freeze_map(model, preset_rules("top-n", desc, 1))
    assert summary.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.trainable_params < summary.total_params


def test_top_n_on_a_real_model_counts(bert):
    desc = describe_model(bert)
    summary = apply_freeze_map(bert, preset_rules("top-n", desc, 1))
    expected = sum(p.numel() for module in (bert.bert.encoder.layer[1], bert.bert.pooler, bert.classifier)
                   for p in module.parameters())
    assert summary.trainable_params == expected
    assert not bert.bert.embeddings.word_embeddings.weight.requires_grad
    assert not bert.bert.encoder.layer[0].attention.self.query.weight.requires_grad


def test_effective_rules_put_user_rules_after_the_preset(bert):
    desc = describe_model(bert)
    user = [R("bert.encoder.layer.0", lr_scale=0.5)]
    rules = effective_rules(FreezeConfig(preset="head-only", rules=user), desc)
    assert rules == [PresetRule(match="*", train=False), PresetRule(match="bert.pooler"), PresetRule(match="classifier"),
                     *user]


def test_tied_head_only_on_a_causal_lm_trains_the_shared_embedding(gpt2):
    """One tensor cannot be both: head-only names lm_head, so the tied input embedding trains too."""
    apply_freeze_map(gpt2, preset_rules("head-only", describe_model(gpt2), 0))
    assert gpt2.transformer.wte.weight.requires_grad
    assert not gpt2.transformer.wpe.weight.requires_grad


# ---- optimizer groups -----------------------------------------------------------------------------


def test_param_groups_skip_frozen_and_never_decay_biases_or_norms(bert):
    rules = [R("*"), R("bert.embeddings", False), R("bert.encoder.layer.0", lr_scale=0.5)]
    apply_freeze_map(bert, rules)
    groups = param_groups(bert, rules, weight_decay=0.01)
    names = {id(p): n for n, p in bert.named_parameters()}
    assert {g["name"] for g in groups} == {"x1.0 decay", "x1.0 no-decay", "x0.5 decay", "x0.5 no-decay"}
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(_trainable(bert))
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            assert p.requires_grad and not name.startswith("bert.embeddings")
            assert group["lr_scale"] == (0.5 if name.startswith("bert.encoder.layer.0.") else 1.0)
            if "bias" in name or "LayerNorm" in name:
                assert group["weight_decay"] == 0.0, name
        assert group["weight_decay"] == (0.01 if group["name"].endswith(" decay") else 0.0)
    for group in groups:  # what the engine does: lr = base lr x lr_scale
        group["lr"] = 1e-3 * group["lr_scale"]
    torch.optim.AdamW(groups, lr=1e-3)


def test_param_groups_count_a_tied_tensor_once(gpt2):
    rules = [R("*")]
    apply_freeze_map(gpt2, rules)
    grouped = [p for g in param_groups(gpt2, rules, 0.1) for p in g["params"]]
    assert len(grouped) == len(list(gpt2.parameters()))


# ---- memory ---------------------------------------------------------------------------------------


def test_memory_estimate_of_a_freeze_summary(bert):
    summary = apply_freeze_map(bert, preset_rules("head-only", describe_model(bert), 0))
    fp32 = estimate_training_memory(summary.total_params, summary.trainable_params)
    assert fp32 == {
        "weights": 4 * summary.total_params,
        "gradients": 4 * summary.trainable_params,
        "optimizer": 8 * summary.trainable_params,
        "total": 4 * summary.total_params + 12 * summary.trainable_params,
    }
    bf16 = estimate_training_memory(1000, 100, param_bytes=2)
    assert bf16 == {"weights": 2000, "gradients": 200, "optimizer": 1200, "total": 3400}  # + fp32 master copy


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 1.2 * 2**30, 139 * 2**30)] == [
        "0 B", "1023 B", "1.5 KB", "1.2 GB", "139.0 GB"]


def test_process_and_gpu_memory_never_import_torch():
    code = ("import sys; from core.device_usage import process_memory, gpu_stats; "
            "m = process_memory(); g = gpu_stats(); assert m['rss_bytes'] > 0 and isinstance(g, list); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert process_memory()["rss_bytes"] > 0
    for gpu in gpu_stats():
        assert 0 < gpu["memory_total"] and 0 <= gpu["memory_used"] <= gpu["memory_total"]
