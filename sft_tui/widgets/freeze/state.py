"""What the freeze map means for each module of the tree, computed once per change.

`core.freeze.resolve` decides per parameter name; the freeze screen shows modules. Resolving once
and then aggregating bottom-up over the module tree keeps a change to the map at a few
milliseconds, instead of one resolve per tree node. Pure functions, no widgets, no torch import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.describe import within
from core.l2sp import kept_elements

TensorIndex = dict[str, list[tuple[int, int, str]]]
"""Module path -> its own parameters as (tensor identity, element count, parameter name)."""


@dataclass(frozen=True)
class NodeState:
    """The freeze state of every parameter under one module (tied tensors counted once)."""

    params: int
    trainable: int
    lr_scales: frozenset[float]
    """The lr scales of the trainable parameters."""
    rules: frozenset[int | None]
    """Indices of the effective rules that decided these parameters (None: no rule covers them)."""

    @property
    def train(self) -> str:
        """`train`, `frozen` or `partial` (the parameters below disagree); empty without parameters."""
        if not self.params:
            return ""
        if not self.trainable:
            return "frozen"
        return "train" if self.trainable == self.params else "partial"

    @property
    def lr(self) -> str:
        """`lr x0.5` when the trainable parameters below share a scale other than 1, `lr mixed` when
        they differ, else empty."""
        if len(self.lr_scales) > 1:
            return "lr mixed"
        if self.lr_scales and (scale := next(iter(self.lr_scales))) != 1.0:
            return f"lr x{scale:.3g}"
        return ""


def tensor_index(model) -> TensorIndex:
    """The parameters of `model` grouped by the module that owns them, all tied names included."""
    index: TensorIndex = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        module = name.rpartition(".")[0]
        index.setdefault(module, []).append((id(param), param.numel(), name))
    return index


def node_states(root, index: TensorIndex, states: dict) -> dict[str, NodeState]:
    """NodeState of every module path below `root` (a core.models.ModuleNode), from the per-name
    ParamState map of core.freeze.resolve."""
    out: dict[str, NodeState] = {}

    def visit(node) -> dict[int, tuple[int, object]]:
        tensors = {key: (numel, states[name]) for key, numel, name in index.get(node.path, [])}
        for child in node.children:
            tensors.update(visit(child))
        out[node.path] = _aggregate(tensors.values())
        return tensors

    visit(root)
    return out


def _aggregate(tensors: Iterable[tuple[int, object]]) -> NodeState:
    params = trainable = 0
    scales, rules = set(), set()
    for numel, state in tensors:
        params += numel
        rules.add(state.rule)
        if state.train:
            trainable += numel
            scales.add(state.lr_scale)
    return NodeState(params, trainable, frozenset(scales), frozenset(rules))


def trained_tensors(index: TensorIndex, states: dict, lora_targets: list[str] = ()) -> dict[int, list[str]]:
    """Each tensor that trains (by identity) with all its names: what the map trains, and under LoRA
    the layers that carry adapters, which stand for their adapters (an adapter is in its layer's
    block, so it starts training with that block)."""
    trained: dict[int, list[str]] = {}
    for entries in index.values():
        for key, _, name in entries:
            if states[name].train or within(name, lora_targets):
                trained.setdefault(key, []).append(name)
    return trained


def reference_params(index: TensorIndex, states: dict, new: list[str]) -> int:
    """Elements L2-SP would keep a starting copy of (core.l2sp.kept_elements) under the map's
    `states`, on the skeleton: the module paths `new` did not come from pretraining (a
    classification model's head); LoRA's adapters are not in the skeleton and keep no copy either."""
    return kept_elements((entry for entries in index.values() for entry in entries),
                         lambda name: states[name].train, lambda name: within(name, new))


def start_stages(root, index: TensorIndex, trained: dict[int, list[str]], schedule, parts: list[str]) -> dict[str, int]:
    """Module path -> the unfreezing stage (core.unfreezing.UnfreezeSchedule) in which its trained
    tensors start. Said on the parts the schedule stages (`parts`: the blocks, embeddings, head and
    top modules) whose trained tensors start together, and on any other module where that holds and
    not for its parent (an embedding norm, say), unless it holds parts, which say it themselves."""
    stage = {key: schedule.stage_of(names) for key, names in trained.items()}
    holders = {".".join(part.split(".")[:i]) for part in parts for i in range(part.count(".") + 1)}
    below: dict[str, set[int]] = {}

    def collect(node) -> set[int]:
        found = {stage[key] for key, _, _ in index.get(node.path, []) if key in stage}
        for child in node.children:
            found |= collect(child)
        below[node.path] = found
        return found

    out: dict[str, int] = {}

    def choose(node, parent_uniform: bool) -> None:
        uniform = len(below[node.path]) == 1
        if uniform and (node.path in parts or not (parent_uniform or node.path in holders)):
            out[node.path] = next(iter(below[node.path]))
        for child in node.children:
            choose(child, uniform)

    collect(root)
    choose(root, False)
    return out
