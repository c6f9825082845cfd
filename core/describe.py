"""Describe a model's structure for the freeze map and the screens: its module tree with parameter
counts, and which modules are the transformer blocks, the embeddings, the head and the top.

All of it is found from the module structure alone (the largest list of same-class modules is the
stack of transformer blocks, `nn.Embedding` modules are embeddings, the children beside the base
model are the head), so a new architecture needs no entry in any table. Works the same on a loaded
model and on a skeleton on the meta device. torch is imported inside describe_model only, so the
app can hold a description (and core.freeze can name its type) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModuleNode:
    """One module of the model tree: parameters are counted once even when shared (tied)."""

    path: str
    name: str
    kind: str
    params: int
    trainable: int
    children: list[ModuleNode] = field(default_factory=list)
    tied_with: str | None = None
    """The module that owns all of this module's parameters when they are shared with it (a tied
    lm_head: `model.embed_tokens`); the screens then show the link instead of counting them twice."""


@dataclass
class ModelDescription:
    """What the freeze map and the screens need to know about a model; JSON-friendly via asdict."""

    name_or_path: str
    architecture: str
    model_type: str
    dtype: str
    total_params: int
    trainable_params: int
    max_positions: int | None
    blocks: list[str]
    embeddings: list[str]
    head: list[str]
    top: list[str]
    root: ModuleNode


def max_positions(config) -> int | None:
    """The position limit a transformers config states, or None when it states none."""
    text = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    return None


def _owners(model) -> dict[int, str]:
    """The module path where each parameter first appears: its owner, in the order named_parameters
    (and so parameters() and state_dict) counts it; later appearances are tied copies."""
    owners: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), name.rpartition(".")[0])
    return owners


def _tree(module, path: str, name: str, owners: dict[int, str]) -> tuple[ModuleNode, dict[int, Any]]:
    """The node of `module` and its parameters by id, so shared parameters count once per subtree."""
    params = {id(p): p for p in module.parameters(recurse=False)}
    children = []
    for child_name, child in module.named_children():
        node, below = _tree(child, f"{path}.{child_name}" if path else child_name, child_name, owners)
        children.append(node)
        params.update(below)
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    owned_by = {owners[key] for key in params}
    tied_with = None
    if path and len(owned_by) == 1 and not within(next(iter(owned_by)), [path]):
        tied_with = owned_by.pop()
    return ModuleNode(path, name, type(module).__name__, total, trainable, children, tied_with), params


def _walk(node: ModuleNode):
    yield node
    for child in node.children:
        yield from _walk(child)


def within(path: str, ancestors) -> bool:
    """Whether module or parameter `path` is one of `ancestors` or inside one (dotted paths)."""
    return any(path == a or path.startswith(a + ".") for a in ancestors)


def embedding_parts(blocks: list[str], embeddings: list[str]) -> list[str]:
    """The embeddings with what holds them below the block stack: for each embedding its largest
    ancestor that does not hold the stack. BERT's `bert.embeddings` (the three tables, their
    LayerNorm and dropout), Llama's `model.embed_tokens` alone. Layer-wise lr decay and gradual
    unfreezing treat these as the bottom layer: BERT's embedding LayerNorm is not an embedding
    table, but it trains with them, not with the head."""
    if not blocks:
        return list(embeddings)
    stack, parts = blocks[0].rpartition(".")[0], []
    for path in embeddings:
        names = path.split(".")
        ancestors = [".".join(names[:i]) for i in range(len(names) - 1, 0, -1)]
        root = path
        for ancestor in ancestors:
            if within(stack, [ancestor]):
                break
            root = ancestor
        if not within(root, parts):
            parts = [p for p in parts if not within(p, [root])] + [root]
    return parts


def tied_to_head(description: ModelDescription) -> set[str]:
    """Modules whose parameters a head module shares (a tied LM head's embedding)."""
    return {node.tied_with for node in _walk(description.root)
            if node.tied_with and within(node.path, description.head)}


def _unwrapped(module):
    """The block itself where peft trains it in full (lora with a top-n map): its ModulesToSaveWrapper
    holds the original beside a trained copy, and the stack of blocks is still one stack."""
    return getattr(module, "original_module", module)


def describe_model(model) -> ModelDescription:
    """Module tree with counts, and the blocks, embeddings, head and top modules, found structurally."""
    from torch import nn

    root, _ = _tree(model, "", "", _owners(model))
    nodes = {node.path: node for node in _walk(root)}
    modules = dict(model.named_modules(remove_duplicate=False))

    stacks = [
        (nodes[path].params, path)
        for path, module in modules.items()
        if isinstance(module, nn.ModuleList) and len(module) and len({type(_unwrapped(m)) for m in module}) == 1
    ]
    stack = max(stacks, key=lambda item: item[0])[1] if stacks else None
    blocks = [child.path for child in nodes[stack].children] if stack is not None else []
    embeddings = [
        path for path, module in modules.items() if isinstance(module, nn.Embedding) and not within(path, blocks)
    ]
    # A task model holds its base model as the child named base_model_prefix; a bare base model has no head.
    prefix = model.base_model_prefix
    wrapped = any(child.name == prefix for child in root.children)
    head = [child.path for child in root.children if child.name != prefix and child.params] if wrapped else []
    top = _top_modules(nodes[prefix] if wrapped else root, stack, blocks + embeddings, list(modules))

    config = model.config
    return ModelDescription(
        name_or_path=str(getattr(config, "name_or_path", "") or ""),
        architecture=type(model).__name__,
        model_type=str(getattr(config, "model_type", "") or ""),
        dtype=str(model.dtype).removeprefix("torch."),
        total_params=root.params,
        trainable_params=root.trainable,
        max_positions=max_positions(config),
        blocks=blocks,
        embeddings=embeddings,
        head=head,
        top=top,
        root=root,
    )


def _top_modules(base: ModuleNode, stack: str | None, marked: list[str], order: list[str]) -> list[str]:
    """Modules of the base model that come after the block stack (final norm, pooler): the largest
    subtrees with parameters that hold no block and no embedding, registered after the stack."""
    if stack is None:
        return []
    position = {path: i for i, path in enumerate(order)}
    top: list[str] = []

    def visit(node: ModuleNode) -> None:
        for child in node.children:
            if within(child.path, marked) or not child.params:
                continue
            if any(m.startswith(child.path + ".") for m in marked):
                visit(child)
            elif position[child.path] > position[stack]:
                top.append(child.path)

    visit(base)
    return top
