"""What the freeze map means for each module of the tree, computed once per change.

`core.freeze.resolve` decides per parameter name; the freeze screen shows modules. Resolving once
and then aggregating bottom-up over the module tree keeps a change to the map at a few
milliseconds, instead of one resolve per tree node. Pure functions, no widgets, no torch import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
            return f"lr x{scale:g}"
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

