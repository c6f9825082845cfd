"""The model's module tree, each node labelled with its size and its state under the freeze map."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from sft_tui.format.numbers import format_count, format_share
from sft_tui.widgets.freeze.state import NodeState

STATE_STYLES = {"train": "green", "frozen": "dim", "partial": "yellow"}


class ModuleTree(Tree):
    """Modules without parameters (dropout, activations) are left out: no rule can change them.

    Space is taken from Tree's expand/collapse (enter still does that) for the freeze toggle, the
    screen's action, because toggling is what this tree is for. Right opens a module and left closes
    it (or goes to its parent), as in a file manager: nothing but an undocumented enter did.
    """

    BINDINGS = [
        Binding("space", "screen.toggle_freeze", "Train/freeze", id="freeze-tree-toggle"),
        Binding("right", "open_module", "Open module", id="freeze-tree-open", show=False),
        Binding("left", "close_module", "Close module / to parent", id="freeze-tree-close", show=False),
    ]

    def action_open_module(self) -> None:
        """Open the module under the cursor and bring its first children into view: at 80x24 the tree
        shows 7 rows, and a module opened on the last of them seemed not to open at all."""
        node = self.cursor_node
        if node is not None and node.allow_expand:
            node.expand()
            if node.children:
                self.call_after_refresh(self.scroll_to_node, node.children[min(2, len(node.children) - 1)],
                                        animate=False)

    def action_close_module(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.children:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)

    def __init__(self, **kwargs) -> None:
        super().__init__("model", **kwargs)
        self._module_nodes: list[TreeNode] = []

    def show_model(self, root, blocks: list[str]) -> None:
        """Rebuild from a core.models.ModuleNode tree: the way down to the blocks is expanded, the
        blocks themselves stay collapsed. The cursor stays on the module it was on, if the new model
        has it (a reload for new labels changes only the head)."""
        selected = self.cursor_node.data.path if self.cursor_node is not None and self.cursor_node.data else ""
        opened = {""} | {prefix for block in blocks[:1] for prefix in _ancestors(block)}
        self.reset(root.kind, root)
        self._module_nodes = [self.root]
        self._add_children(self.root, root, opened)
        self.root.expand()
        self.select_path(selected)

    def select_path(self, path: str) -> None:
        """Put the cursor on the module at `path` (opening the modules above it), else on the root."""
        node = next((node for node in self._module_nodes if node.data.path == path), self.root)
        parent = node.parent
        while parent is not None:
            parent.expand()
            parent = parent.parent
        # Lines are laid out again on the next refresh; only then does the node know its line.
        self.call_after_refresh(self._put_cursor, node)

    def _put_cursor(self, node: TreeNode) -> None:
        self.move_cursor(node)
        # Tree announces a highlight only when the cursor line changes; after a rebuild the line is
        # often the same, and the screen must still mark the rule deciding this (new) node.
        self.post_message(Tree.NodeHighlighted(node))

    def _add_children(self, parent: TreeNode, module, opened: set[str]) -> None:
        for child in module.children:
            if not child.params:
                continue
            if any(grandchild.params for grandchild in child.children):
                node = parent.add(child.name, child, expand=child.path in opened)
                self._add_children(node, child, opened)
            else:
                node = parent.add_leaf(child.name, child)
            self._module_nodes.append(node)

    def relabel(self, states: dict[str, NodeState], lora_targets: list[str] = (),
                starts: dict[str, str] | None = None) -> None:
        """New labels from the states of the current freeze map (no state shown where it is missing,
        e.g. while a rule is invalid); modules with LoRA adapters at or below them are marked, and
        under freeze.unfreezing `starts` says when a module starts training (`from step 200`)."""
        adapted = {prefix for target in lora_targets for prefix in [*_ancestors(target), target]} | (
            {""} if lora_targets else set())
        starts = starts or {}
        for node in self._module_nodes:
            path = node.data.path
            node.set_label(module_label(node.data, states.get(path), path in adapted, starts.get(path)))


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_label(module, state: NodeState | None, lora: bool = False, start: str | None = None) -> Text:
    """`0 train lr x0.5 from epoch 3 1.8M BertLayer`: the state right after the name, so that a
    narrow terminal cuts the class name, not the state; the root shows its class as its name.
    `lora`: LoRA adapters sit on this module or below it (`+lora` after the state). `start`: when
    gradual unfreezing or LP-FT starts training it."""
    text = Text(module.name or module.kind, "bold")
    if state is not None and state.train:
        text.append(f" {state.train}", STATE_STYLES[state.train])
        if state.train == "partial":
            text.append(f" {format_share(state.trainable / state.params)}", "yellow")
        if state.lr:
            text.append(f" {state.lr}", "magenta")
    if start:
        text.append(f" {start}", "cyan")
    if lora:
        text.append(" +lora", "bold cyan")
    if module.tied_with:
        # Shared parameters are counted once, under the module that owns them.
        text.append(f" tied with {module.tied_with}", "italic")
    else:
        text.append(f" {format_count(module.params)}")
    if module.path:
        text.append(f" {module.kind}", "dim cyan")
    return text
