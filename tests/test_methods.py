"""Issue 13's fine-tuning methods in the engine: evaluation before training, L2-SP, layer-wise lr
decay rules, gradual unfreezing and LP-FT (exact on resume), head-only with what only feeds the head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.config import FreezeConfig, parse_config
from core.describe import describe_model, tied_to_head
from core.engine import train
from core.events import EvalResult, ListSink, LogMessage, RunFinished, StepMetrics
from core.freeze import apply_freeze_map, effective_rules, param_groups, resolve
from core.l2sp import L2SP, NEW_WEIGHTS_ATTR, reference_params
from core.lr_decay import FLOOR, default_decay, layerwise_lr_rules
from core.memory import estimate_model
from core.unfreezing import ABOVE_BLOCKS, EMBEDDINGS, REST, plan_unfreezing
from helpers import StopAt, tiny_lm_config

# ---- L2-SP ----------------------------------------------------------------------------------------


class _Net(nn.Module):
    """A pretrained body (weight and bias) and a new head, as load_model marks a new task head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        setattr(self, NEW_WEIGHTS_ATTR, frozenset({"head.weight", "head.bias"}))


def test_l2sp_step_is_the_hand_computed_pull_beside_adamw():
    """w <- w - lr*alpha*(w - w0) for pretrained tensors, w <- w - lr*beta*w for new 2-d ones (not
    the head's bias), before AdamW's own update, which it leaves as it is (decoupled)."""
    torch.manual_seed(0)
    net = _Net()
    start = {name: p.detach().clone() for name, p in net.named_parameters()}
    groups = [{"params": [net.body.weight, net.body.bias, net.head.weight, net.head.bias], "lr": 0.1,
               "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.1)  # plain SGD: its update is lr * grad, easy to take apart
    l2sp = L2SP(net, optimizer, alpha=0.5, beta=0.25)
    with torch.no_grad():  # move away from the start, as earlier steps would have
        for p in net.parameters():
            p.add_(0.3)
    moved = {name: p.detach().clone() for name, p in net.named_parameters()}
    net.head(net.body(torch.randn(3, 4))).sum().backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    l2sp.apply()
    optimizer.step()
    lr, alpha, beta = 0.1, 0.5, 0.25
    for name in ("body.weight", "body.bias"):
        expected = moved[name] - lr * alpha * (moved[name] - start[name]) - lr * grads[name]
        torch.testing.assert_close(dict(net.named_parameters())[name], expected)
    torch.testing.assert_close(net.head.weight, moved["head.weight"] * (1 - lr * beta) - lr * grads["head.weight"])
    torch.testing.assert_close(net.head.bias, moved["head.bias"] - lr * grads["head.bias"])  # a bias: no pull


def test_l2sp_leaves_weights_without_a_gradient_alone():
    """A tensor frozen until a later unfreezing stage has no gradient: L2-SP does not move it, as AdamW does not."""
    net = _Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    l2sp = L2SP(net, optimizer, alpha=0.5, beta=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in net.parameters()]
    l2sp.apply()
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)


def test_l2sp_reference_counts_trained_pretrained_weights_only():
    net = _Net()
    net.body.bias.requires_grad_(False)
    assert reference_params(net) == 16  # body.weight; the frozen bias and the new head keep no copy


# ---- the engine -----------------------------------------------------------------------------------


def _lm(model_dir, data, tmp_path, name, **sections):
    config = tiny_lm_config(model_dir, data, tmp_path / "runs", **sections)
    config["output"]["run_name"] = name
    return parse_config(config)


def _run(config, control=None, **kw):
    sink = ListSink()
    result = train(config, [sink], control, report_interval_s=0, **kw)
    return result, sink


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_l2sp_in_a_run_keeps_weights_nearer_their_start(tiny_model_factory, sft_file, tmp_path):
    """The same run with a strong pull ends nearer the pretrained weights; weight decay is replaced."""
    from safetensors.torch import load_file

    model_dir = tiny_model_factory("llama")
    start = load_file(str(model_dir / "model.safetensors"))
    common = {"schedule": {"max_steps": 12, "warmup_steps": 0}, "eval": {"every_steps": 100, "num_samples": 0,
                                                                        "before_training": False}}
    plain, _ = _run(_lm(model_dir, sft_file, tmp_path, "plain", **common))
    pulled, sink = _run(_lm(model_dir, sft_file, tmp_path, "l2sp", optim={"lr": 3e-3, "batch_size": 8,
                                                                          "weight_decay": 0.1, "l2sp_alpha": 50.0},
                            **common))

    def distance(run_dir):
        final = _weights(run_dir)
        return sum(float((final[k].float() - start[k].float()).norm()) for k in start if k in final)

    assert distance(pulled.run_dir) < 0.8 * distance(plain.run_dir)
    assert any("L2-SP" in e.message and "replaces weight decay" in e.message for e in sink.of_type(LogMessage))


def test_evaluation_before_training_is_reported_and_can_be_skipped(tiny_model_factory, sft_file, tmp_path):
    model_dir = tiny_model_factory("llama")
    _, on = _run(_lm(model_dir, sft_file, tmp_path, "on", schedule={"max_steps": 4}, eval={"every_steps": 2,
                                                                                           "num_samples": 1}))
    first = on.of_type(EvalResult)[0]
    assert first.step == 0 and first.before_training and not first.is_best
    assert on.events.index(first) < on.events.index(on.of_type(StepMetrics)[0])  # before the first step
    assert on.of_type(RunFinished)[0].before_metrics == first.metrics
    _, off = _run(_lm(model_dir, sft_file, tmp_path, "off", schedule={"max_steps": 4},
                      eval={"every_steps": 2, "num_samples": 0, "before_training": False}))
    assert [e.step for e in off.of_type(EvalResult)] == [2, 4]
    assert off.of_type(RunFinished)[0].before_metrics == {}


def test_a_resumed_run_still_says_its_new_head_was_untrained_before_training(tiny_model_factory, cls_file, tmp_path):
    """The step-0 evaluation ran in the first process; the resumed one ends with its metrics and the
    note that they measured a random head (the checkpoint's state keeps both)."""
    fields = tiny_lm_config(tiny_model_factory("bert"), cls_file, tmp_path / "runs", schedule={"max_steps": 6},
                            eval={"every_steps": 3, "num_samples": 0, "metric": "accuracy"},
                            checkpoint={"every_steps": 3, "keep_last": 2})
    fields.update(task="classification")
    fields["output"]["run_name"] = "cls"
    config = parse_config(fields)
    first, sink = _run(config, StopAt(3))
    before = sink.of_type(EvalResult)[0]
    assert before.before_training and before.untrained_head
    _, resumed = _run(config, resume_dir=first.run_dir)
    assert not any(e.before_training for e in resumed.of_type(EvalResult))  # not evaluated again
    finished = resumed.of_type(RunFinished)[-1]
    assert finished.step == 6 and finished.before_metrics == before.metrics and finished.before_untrained_head


@pytest.mark.parametrize("kind", ["gradual", "lp-ft"])
def test_unfreezing_resumed_mid_schedule_equals_an_uninterrupted_run(tiny_model_factory, sft_file, tmp_path, kind):
    """Stages start every 3 steps; a run stopped at step 5 (mid-schedule) and resumed ends with the
    same losses and weights as one that never stopped; blocks not yet started do not move."""
    model_dir = tiny_model_factory("llama")
    sections = {"schedule": {"max_steps": 14, "warmup_steps": 0}, "freeze": {"unfreezing": kind, "unfreeze_every": 3},
                "eval": {"every_steps": 100, "num_samples": 0, "before_training": False},
                "checkpoint": {"every_steps": 5, "keep_last": 2}}
    whole, whole_sink = _run(_lm(model_dir, sft_file, tmp_path, "whole", **sections))
    cut, _ = _run(_lm(model_dir, sft_file, tmp_path, "cut", **sections), StopAt(5))
    assert cut.reason == "stopped" and cut.step == 5
    resumed, resumed_sink = _run(None, resume_dir=cut.run_dir)
    assert resumed.step == 14
    losses = {e.step: e.loss for e in whole_sink.of_type(StepMetrics)}
    later = {e.step: e.loss for e in resumed_sink.of_type(StepMetrics)}
    torch.testing.assert_close([losses[s] for s in later], list(later.values()))
    final, again = _weights(whole.run_dir), _weights(resumed.run_dir)
    for key in final:
        torch.testing.assert_close(again[key], final[key])
    stages = [e.message for e in whole_sink.of_type(LogMessage) if e.message.startswith("unfreezing stage")]
    assert stages[0].startswith("unfreezing stage 1 of") and "from step 0" in stages[0]
    assert any("from step 3" in message for message in stages)


def test_unfreezing_stages_lora_adapters_under_a_top_n_map(tiny_model_factory, sft_file, tmp_path):
    """LoRA with top-1 wraps block 1 in peft's ModulesToSaveWrapper, which once hid the stack of
    blocks: gradual unfreezing then had one stage and was skipped without a word. Now the top, then
    block 1 (trained in full), then block 0's adapters."""
    model_dir = tiny_model_factory("llama")
    _, sink = _run(_lm(model_dir, sft_file, tmp_path, "staged", schedule={"max_steps": 7},
                       freeze={"preset": "top-n", "top_n": 1, "unfreezing": "gradual", "unfreeze_every": 3},
                       lora={"enabled": True}, eval={"every_steps": 100, "num_samples": 0}))
    stages = [e.message for e in sink.of_type(LogMessage) if e.message.startswith("unfreezing stage")]
    assert stages == ["unfreezing stage 1 of 3 from step 0: now training the head and the top modules",
                      "unfreezing stage 2 of 3 from step 3: now training model.layers.1",
                      "unfreezing stage 3 of 3 from step 6: now training model.layers.0"]


def test_a_stage_not_started_yet_keeps_its_weights(tiny_model_factory, sft_file, tmp_path):
    """Gradual unfreezing of a 2-block model every 100 steps: in 6 steps only the head and the final
    norm train; the blocks and the embeddings (the head is untied here) stay as loaded."""
    from safetensors.torch import load_file

    model_dir = tiny_model_factory("llama")
    start = load_file(str(model_dir / "model.safetensors"))
    result, _ = _run(_lm(model_dir, sft_file, tmp_path, "slow", schedule={"max_steps": 6},
                         freeze={"unfreezing": "gradual", "unfreeze_every": 100},
                         eval={"every_steps": 100, "num_samples": 0}))
    final = _weights(result.run_dir)
    moved = {key for key in start if key in final and not torch.equal(final[key], start[key])}
    assert moved and all(not key.startswith("model.layers.") for key in moved)
    assert "model.norm.weight" in moved


def test_unfreezing_needs_one_process():
    with pytest.raises(Exception, match="freeze.unfreezing"):
        parse_config({"freeze": {"unfreezing": "gradual"}, "compute": {"nproc": 2, "devices": "cpu"}})


# ---- the schedule, layer-wise lr decay and head-only -------------------------------------------------

BLOCKS = ["m.layers.0", "m.layers.1", "m.layers.2"]
EMBED = ["m.embed"]


def test_gradual_stages_go_from_the_head_down_and_skip_what_the_map_freezes():
    trainable = [["head.weight"], ["m.norm.weight"], ["m.layers.2.q.weight"], ["m.layers.0.q.weight"], ["m.embed.weight"]]
    schedule = plan_unfreezing("gradual", 4, trainable, BLOCKS, EMBED)
    assert schedule.stages == (ABOVE_BLOCKS, "m.layers.2", "m.layers.0", EMBEDDINGS)  # layers.1 is frozen: no stage
    assert [schedule.stage_at(step) for step in (0, 3, 4, 11, 12, 99)] == [0, 0, 1, 2, 3, 3]
    assert schedule.stage_of(["m.layers.0.q.weight"]) == 2 and schedule.start_step(2) == 8
    assert schedule.stage_of(["m.embed.weight", "head.weight"]) == 0  # a tied head trains with the head


def test_lp_ft_is_the_head_then_the_whole_map():
    trainable = [["head.weight"], ["m.layers.1.q.weight"], ["m.embed.weight"]]
    schedule = plan_unfreezing("lp-ft", 10, trainable, BLOCKS, EMBED)
    assert schedule.stages == (ABOVE_BLOCKS, REST)
    assert [schedule.stage_of(names) for names in trainable] == [0, 1, 1]
    assert not plan_unfreezing("lp-ft", 10, [["head.weight"]], BLOCKS, EMBED).staged  # head-only: nothing later


def test_a_tied_embedding_makes_no_stage_of_its_own():
    """GPT-2 and small Llamas tie the LM head to the embedding: one tensor, which starts with the head."""
    schedule = plan_unfreezing("gradual", 2, [["lm_head.weight", "m.embed.weight"], ["m.layers.2.q.weight"]],
                               BLOCKS, EMBED)
    assert schedule.stages == (ABOVE_BLOCKS, "m.layers.2")


def _description(blocks, embeddings, head=(), tied=None):
    from core.describe import ModelDescription, ModuleNode

    nodes = [ModuleNode(path, path, "Linear", 1, 1, tied_with=tied if path in head else None) for path in head]
    return ModelDescription("m", "M", "m", "float32", 1, 1, None, blocks, embeddings, list(head), [],
                            ModuleNode("", "", "M", 1, 1, nodes))


def test_layerwise_lr_rules_decay_from_the_top_block_down_to_the_embeddings():
    rules = layerwise_lr_rules(_description(BLOCKS, EMBED), 0.5, trains=lambda path: path != "m.layers.1")
    assert [(r.match, r.train, r.lr_scale) for r in rules] == [
        ("m.layers.0", True, 0.25), ("m.layers.2", True, 1.0), ("m.embed", True, 0.125)]
    with pytest.raises(ValueError):
        layerwise_lr_rules(_description(BLOCKS, EMBED), 1.5, trains=lambda path: True)


@pytest.mark.parametrize("blocks", [1, 6, 12, 24, 30, 80])
def test_the_default_decay_is_0_8_unless_it_would_all_but_freeze_the_embeddings(blocks):
    decay = default_decay(blocks)
    assert decay >= 0.8 and decay ** blocks >= FLOOR  # the embeddings keep at least x0.1 of the base lr
    assert decay == 0.8 or (decay - 0.01) ** blocks < FLOOR  # and no more decay than that takes
    assert (default_decay(6), default_decay(30)) == (0.8, 0.93)


def test_layerwise_decay_covers_berts_embedding_norm_and_spares_a_tied_head():
    """BERT's embedding LayerNorm sits beside the tables in bert.embeddings: the rule names that
    module, so the norm decays (and unfreezes) with the embeddings. GPT-2's wte is its LM head:
    no rule lowers the head's learning rate."""
    bert = _description(["bert.encoder.layer.0", "bert.encoder.layer.1"],
                        ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings"])
    rules = layerwise_lr_rules(bert, 0.5, trains=lambda path: True)
    assert ("bert.embeddings", 0.25) in [(r.match, r.lr_scale) for r in rules]
    schedule = plan_unfreezing("gradual", 1, [["bert.embeddings.LayerNorm.weight"], ["classifier.weight"]],
                               bert.blocks, bert.embeddings)
    assert schedule.stages == (ABOVE_BLOCKS, EMBEDDINGS)
    gpt2 = _description(["transformer.h.0"], ["transformer.wte", "transformer.wpe"], head=["lm_head"],
                        tied="transformer.wte")
    assert [r.match for r in layerwise_lr_rules(gpt2, 0.5, trains=lambda path: True)] == ["transformer.h.0",
                                                                                          "transformer.wpe"]


def test_layerwise_rules_become_optimizer_groups(tiny_model_factory):
    from core.models import load_model
    from core.config import ModelConfig

    model = load_model(ModelConfig(name_or_path=str(tiny_model_factory("llama"))), "causal-lm")
    desc = describe_model(model)
    rules = effective_rules(FreezeConfig(rules=layerwise_lr_rules(desc, 0.5, trains=lambda path: True)), desc)
    apply_freeze_map(model, rules)
    states = resolve(model, rules)
    n, tied = len(desc.blocks), "model.embed_tokens" in tied_to_head(desc)
    assert states[f"{desc.blocks[-1]}.self_attn.q_proj.weight"].lr_scale == 1.0
    assert states[f"{desc.blocks[0]}.self_attn.q_proj.weight"].lr_scale == 0.5 ** (n - 1)
    assert states["model.embed_tokens.weight"].lr_scale == (1.0 if tied else 0.5**n)  # a tied one is the head
    assert states["model.norm.weight"].lr_scale == 1.0
    scales = sorted({group["lr_scale"] for group in param_groups(model, rules, 0.0)})
    assert scales == sorted({0.5**k for k in range(n + (0 if tied else 1))})


def test_head_only_trains_the_pooler_of_a_real_bert(tmp_path, monkeypatch):
    """On all-MiniLM-L6-v2 the pooler feeds only the classifier: head-only trains both, and the
    estimate counts L2-SP's copy of the pooler (pretrained) but not of the new classifier."""
    from core.config import ModelConfig
    from core.models import load_model

    model = load_model(ModelConfig(name_or_path="demo:minilm"), "classification", ["a", "b"], dtype=torch.float32)
    apply_freeze_map(model, effective_rules(FreezeConfig(preset="head-only"), describe_model(model)))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    plain = estimate_model(model, batch=4, length=16, task="classification", checkpointing=False)
    with_copy = estimate_model(model, batch=4, length=16, task="classification", checkpointing=False, l2sp=True)
    assert with_copy.total - plain.total == with_copy.reference == 4 * (384 * 384 + 384)


@pytest.mark.parametrize(("arch", "task"), [("llama", "causal-lm"), ("bert", "classification")])
@pytest.mark.parametrize("preset", ["all", "top-n", "head-only"])
def test_the_freeze_screen_counts_l2sps_copy_as_the_engine_keeps_it(tiny_model_factory, arch, task, preset):
    """The freeze screen counts L2-SP's copy on the skeleton, by the map's decisions and the head a
    classification model replaces; the engine on the loaded model, by requires_grad and the weights
    the checkpoint lacked. Both through core.l2sp.kept_elements, so they agree: on a tied Llama
    (head = embedding, pretrained) and on BERT with a new classifier."""
    from core.config import ModelConfig
    from core.models import load_model
    from sft_tui.widgets.freeze.state import reference_params as screen_count, tensor_index

    model = load_model(ModelConfig(name_or_path=str(tiny_model_factory(arch))), task, ["a", "b"], dtype=torch.float32)
    desc = describe_model(model)
    rules = effective_rules(FreezeConfig(preset=preset, top_n=1), desc)
    states = resolve(model, rules)
    apply_freeze_map(model, rules)
    engine = reference_params(model)
    assert engine == screen_count(tensor_index(model), states, desc.head if task == "classification" else [])
    trained = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}  # tied: once
    new = sum(n for name, n in trained.items() if task == "classification" and name.startswith(tuple(desc.head)))
    assert engine == sum(trained.values()) - new > 0


def test_a_stage_joining_keeps_the_optimizer_state_of_those_already_training():
    """AdamW over the whole map from the start: a tensor not started has no gradient, so no state;
    when its stage starts, the head's moments and step count go on where they were."""
    from core.unfreezing import Unfreezer

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = nn.Module()
            self.m.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            for layer in self.m.layers:
                x = layer(x)
            return self.head(x)

    model = Tiny()
    names = [[name] for name, _ in model.named_parameters()]
    unfreezer = Unfreezer(plan_unfreezing("gradual", 2, names, ["m.layers.0", "m.layers.1"], []), model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in range(4):
        unfreezer.enter(step)
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1:
            assert set(optimizer.state) == {model.head.weight, model.head.bias}
            head_moment = optimizer.state[model.head.weight]["exp_avg"].clone()
    assert int(optimizer.state[model.head.weight]["step"]) == 4  # kept through the stage change at step 2
    assert int(optimizer.state[model.m.layers[1].weight]["step"]) == 2  # started at step 2
    assert model.m.layers[0].weight not in optimizer.state  # its stage starts at step 4
    assert not torch.equal(optimizer.state[model.head.weight]["exp_avg"], head_moment)
