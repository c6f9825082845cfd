"""The freeze map: an ordered list of rules deciding which parameters train, and at what lr scale.

A rule's `match` is a module path or parameter name (exact), a glob (`*.layer.1[0-1]`, any of
`*?[`), or a regex (`re:...`, full match). It covers a parameter when it matches the parameter's
name or any module path above it, so one rule can name a whole block. The last rule covering a
parameter decides; a parameter no rule covers trains at lr scale 1. Tied parameters (GPT-2's
`lm_head.weight` is `transformer.wte.weight`) are one tensor with several names, so the last rule
covering any of the names decides for all of them: one tensor cannot be both frozen and trained.
Presets are plain rule lists built from the model description, so the screens can show them as
rules and the user can edit them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from core.config import FreezeConfig, FreezeRule
from core.describe import ModelDescription
from core.errors import UserError


class PresetRule(FreezeRule):
    """A rule contributed by freeze.preset. It is none of config.freeze.rules, so messages name it by
    the preset, and a user rule by its place in the config (`freeze.rules.N`)."""


def user_rule_index(rules: list[FreezeRule], index: int) -> int | None:
    """The place of rules[index] in config.freeze.rules (from 0), None for a preset's rule."""
    if isinstance(rules[index], PresetRule):
        return None
    return index - sum(isinstance(rule, PresetRule) for rule in rules[:index])


def rule_name(rules: list[FreezeRule], index: int) -> str:
    """How messages name rules[index]: `freeze.rules.N` (N counts from 0, as in the config's own
    errors) for a user's rule, `freeze.preset` for a preset's."""
    n = user_rule_index(rules, index)
    return "freeze.preset" if n is None else f"freeze.rules.{n}"


def match_problem(pattern: str) -> str | None:
    """Why a rule's `match` cannot be used (a `re:` pattern that does not compile), or None."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as err:
            return f"{pattern!r} is not a valid regular expression: {err}"
    return None


def rule_problems(rules: list[FreezeRule]) -> UserError | None:
    """The rules whose `match` cannot be used, as one UserError with a field per rule
    ({"freeze.rules.0.match": why}), or None. Needs no model: the app checks a config with it
    before any model has loaded, and matching a model raises the same error."""
    fields = {f"{rule_name(rules, i)}.match": problem
              for i, rule in enumerate(rules) if (problem := match_problem(rule.match))}
    if not fields:
        return None
    return UserError("; ".join(f"{name} {problem}" for name, problem in fields.items()),
                     hint="fix the regex after 're:', or use a glob or a module path", fields=fields)


def training_problem(summary: FreezeSummary) -> UserError | None:
    """A map that leaves nothing to train, which apply_freeze_map refuses; None when it trains something."""
    if summary.trainable_params:
        return None
    return UserError("the freeze map leaves no trainable parameters (freeze.preset, then freeze.rules)",
                     hint="choose another freeze.preset, or add a rule with train: true (e.g. for the head)",
                     fields={"freeze": "the map leaves no trainable parameters"})


@dataclass(frozen=True)
class ParamState:
    """What the map decided for one parameter; `rule` is the deciding rule's index, None for none."""

    train: bool
    lr_scale: float
    rule: int | None


@dataclass
class RuleSummary:
    """One rule and the parameters (element count and tensors) it decided as the last match."""

    index: int
    match: str
    train: bool
    lr_scale: float
    params: int
    tensors: int


@dataclass
class FreezeSummary:
    total_params: int
    trainable_params: int
    trainable_share: float
    unmatched_params: int
    """Parameters no rule covers (they train at lr scale 1)."""
    rules: list[RuleSummary]
    warnings: list[str] = field(default_factory=list)
    originals_params: int = 0
    """Under LoRA, the frozen originals of the modules peft trains in full: held in memory beside
    their trained copies, but not part of total_params (see summarize_trained)."""


def preset_rules(preset: str, desc: ModelDescription, top_n: int) -> list[FreezeRule]:
    """The rules of a preset, naming exact module paths from the description."""
    if preset == "all":
        return [PresetRule(match="*", train=True)]
    if preset == "freeze-embeddings":
        return [PresetRule(match="*", train=True)] + [PresetRule(match=p, train=False) for p in desc.embeddings]
    if preset in ("head-only", "top-n"):  # head-only: the head and what only feeds it (the top), top-0
        n = top_n if preset == "top-n" else 0
        trained = (desc.blocks[-n:] if n else []) + desc.top + desc.head
    else:
        raise ValueError(f"unknown freeze preset {preset!r}")
    return [PresetRule(match="*", train=False)] + [PresetRule(match=p, train=True) for p in trained]


def effective_rules(freeze: FreezeConfig, desc: ModelDescription) -> list[FreezeRule]:
    """The preset's rules followed by the user's rules, which therefore win."""
    return preset_rules(freeze.preset, desc, freeze.top_n) + list(freeze.rules)


PEFT_PREFIX = "base_model.model."
_PEFT_SEGMENTS = ("base_layer", "original_module", "modules_to_save", "default")
"""What peft's LoRA wrapping adds to a parameter's name: the PeftModel's prefix, the wrapped layer
(`q_proj.base_layer.weight`), a trained copy (`score.modules_to_save.default.weight`) and its
frozen original, and the adapter's name."""


def base_name(name: str) -> str:
    """The name a parameter of a peft-wrapped model has in the model as loaded, which is what rules
    match: `base_model.model.model.layers.0.q_proj.lora_A.default.weight` is
    `model.layers.0.q_proj.lora_A.weight`, so a rule covering `model.layers.0` covers it."""
    name = name.removeprefix(PEFT_PREFIX)
    return ".".join(part for part in name.split(".") if part not in _PEFT_SEGMENTS)


def matcher(pattern: str) -> Callable[[str], bool]:
    """The test of a rule's `match` (or a LoRA target pattern) against one module path or name."""
    if pattern.startswith("re:"):
        return re.compile(pattern[3:]).fullmatch
    if any(c in pattern for c in "*?["):
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    return pattern.__eq__


def _matcher(rules: list[FreezeRule], index: int) -> Callable[[str], bool]:
    return matcher(rules[index].match)


def _candidates(names: list[str]) -> set[str]:
    """Every name of a parameter and every module path above each name."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def tensors(model) -> list[tuple[list[str], object]]:
    """Each distinct parameter tensor with all of its names, in registration order."""
    by_id: dict[int, tuple[list[str], object]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), ([], param))[0].append(name)
    return list(by_id.values())


def _decide(model, rules: list[FreezeRule]) -> tuple[list[tuple[list[str], object, int | None]], list[bool]]:
    """Per tensor: names, parameter and deciding rule index; and per rule: whether it matched anything."""
    if problem := rule_problems(rules):
        raise problem
    matchers = [_matcher(rules, i) for i in range(len(rules))]
    matched_any = [False] * len(rules)
    decided = []
    for names, param in tensors(model):
        candidates = _candidates([base_name(name) for name in names])
        hits = [i for i, match in enumerate(matchers) if any(match(c) for c in candidates)]
        for i in hits:
            matched_any[i] = True
        decided.append((names, param, hits[-1] if hits else None))
    return decided, matched_any


def _state(rules: list[FreezeRule], index: int | None) -> ParamState:
    if index is None:
        return ParamState(True, 1.0, None)
    return ParamState(rules[index].train, rules[index].lr_scale, index)


def resolve(model, rules: list[FreezeRule]) -> dict[str, ParamState]:
    """The state of every parameter name, tied aliases included (they share one state)."""
    decided, _ = _decide(model, rules)
    return {name: _state(rules, index) for names, _, index in decided for name in names}


def _summarize(rules: list[FreezeRule], decided, matched_any: list[bool]) -> FreezeSummary:
    per_rule = [RuleSummary(i, r.match, r.train, r.lr_scale, 0, 0) for i, r in enumerate(rules)]
    total = trainable = unmatched = 0
    for _, param, index in decided:
        n = param.numel()
        total += n
        trainable += n if _state(rules, index).train else 0
        if index is None:
            unmatched += n
        else:
            per_rule[index].params += n
            per_rule[index].tensors += 1
    warnings = [f"{rule_name(rules, i)} ({r.match!r}) matches no parameter"
                for i, r in enumerate(rules) if not matched_any[i]]
    return FreezeSummary(total, trainable, trainable / total if total else 0.0, unmatched, per_rule, warnings)


def summarize_freeze(model, rules: list[FreezeRule]) -> FreezeSummary:
    """Counts of what the map would do, without changing the model (for the freeze-map screen)."""
    return _summarize(rules, *_decide(model, rules))


def summarize_trained(model, rules: list[FreezeRule]) -> FreezeSummary:
    """The summary of a model whose requires_grad flags are already set (a peft-wrapped one): its
    trainable count is what trains, LoRA adapters included, and the frozen originals of the modules
    peft trains in full (`original_module`) are left out of the total, which is then the base model's
    size plus what LoRA adds (the memory estimate adds them back: originals_params)."""
    decided, matched_any = _decide(model, rules)
    originals, decided = ([item for item in decided if any(".original_module." in name for name in item[0]) == held]
                          for held in (True, False))
    summary = _summarize(rules, decided, matched_any)
    summary.originals_params = sum(param.numel() for _, param, _ in originals)
    summary.trainable_params = sum(param.numel() for _, param, _ in decided if param.requires_grad)
    summary.trainable_share = summary.trainable_params / summary.total_params if summary.total_params else 0.0
    return summary


def apply_freeze_map(model, rules: list[FreezeRule]) -> FreezeSummary:
    """Set requires_grad from the map; a map that trains nothing is an error, not a silent no-op."""
    decided, matched_any = _decide(model, rules)
    summary = _summarize(rules, decided, matched_any)
    if problem := training_problem(summary):
        raise problem
    for _, param, index in decided:
        param.requires_grad_(_state(rules, index).train)
    return summary


def param_groups(model, rules: list[FreezeRule], weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable parameters, split by lr scale and by decay.

    Tensors with fewer than 2 dimensions (biases, norm weights) get no weight decay. Each group
    carries `lr_scale` but no `lr`: the caller sets `group["lr"] = base_lr * group["lr_scale"]`
    before building the optimizer, so that a scheduler scales every group from its own start.
    """
    states = resolve(model, rules)
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale, decay = states[name].lr_scale, param.ndim >= 2
        group = groups.setdefault((scale, decay), {
            "params": [],
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": scale,
            "name": f"x{scale} {'decay' if decay else 'no-decay'}",
        })
        group["params"].append(param)
    return list(groups.values())
