"""Step 3, the freeze map: which modules train, from when, and at what learning-rate scale.

The module tree (left) and the rule list (right) are two views of config.freeze: every key edits the
config through session.update, and one refresh per change resolves the map once
(core.freeze.resolve) and aggregates it over the tree, so both views and the summary stay in sync.
The transfer-learning methods built on the map (layer-wise lr decay, gradual unfreezing, LP-FT) are
its mixin, sft_tui.screens.freeze_methods; the tree marks when each part starts training
(core.unfreezing, on the same skeleton the engine's run mirrors).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import ContentSwitcher, DataTable, Static, Tree

from core.config import FreezeRule
from core.describe import embedding_parts
from core.errors import UserError
from core.freeze import effective_rules, preset_rules, resolve, rule_name, summarize_freeze
from core.lora import resolve_targets
from sft_tui.format.model import stage_start
from sft_tui.format.numbers import format_count, format_share
from sft_tui.screens.base import StepScreen
from sft_tui.screens.freeze_methods import FreezeMethods
from sft_tui.screens.dialogs.freeze_rule import RuleDialog
from sft_tui.widgets.freeze.rules import RuleTable
from sft_tui.widgets.freeze.state import node_states, start_stages, tensor_index, trained_tensors
from sft_tui.widgets.freeze.summary import PRESETS, FreezeSummaryBar
from sft_tui.widgets.freeze.tree import ModuleTree
from sft_tui.widgets.spinner import Spinner


class FreezeScreen(FreezeMethods, StepScreen):
    STEP = "freeze"
    CSS_PATH = "freeze.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    BINDINGS = [
        Binding("space", "toggle_freeze", "Train/freeze", id="freeze-toggle"),
        Binding("a", "preset('all')", "Preset: train all", id="freeze-preset-all", show=False),
        Binding("h", "preset('head-only')", "Preset: head + final norm/pooler", id="freeze-preset-head", show=False,
                tooltip="The head and what only feeds it: the modules after the blocks (a final norm, a pooler)"),
        Binding("t", "preset('top-n')", "Preset: top N blocks", id="freeze-preset-top", show=False),
        Binding("e", "preset('freeze-embeddings')", "Preset: freeze embeddings", id="freeze-preset-emb", show=False),
        Binding("p", "lp_ft", "Preset: LP-FT (head first, then map)", id="freeze-preset-lpft", show=False,
                tooltip="Keep the map; the head and the modules after the blocks train alone a stage, then all of it"),
        Binding("d", "layer_decay", "Layer-wise lr decay rules", id="freeze-lr-decay", show=False,
                tooltip="Rules giving each block decay x the lr of the one above, the embeddings the lowest"),
        Binding("u", "unfreezing", "Gradual unfreezing / LP-FT", id="freeze-unfreezing", show=False,
                tooltip="freeze.unfreezing and unfreeze_every: when the head, each block and the embeddings start"),
        Binding("plus", "top_n(1)", "More top blocks", id="freeze-top-more", show=False),
        Binding("minus", "top_n(-1)", "Fewer top blocks", id="freeze-top-fewer", show=False),
        Binding("l", "toggle_lora", "LoRA target", id="freeze-lora-toggle"),
        Binding("A", "lora_preset('attention')", "LoRA on attention projections", id="freeze-lora-attention",
                show=False),
        Binding("L", "lora_preset('all-linear')", "LoRA on all linear layers", id="freeze-lora-linear", show=False),
        Binding("n", "add_rule", "New rule", id="freeze-rule-add"),
        Binding("r", "edit_rule", "Edit rule", id="freeze-rule-edit"),
        Binding("x,delete", "delete_rule", "Delete rule", id="freeze-rule-delete"),
        Binding("left_square_bracket,ctrl+up", "move_rule(-1)", "Move rule up", id="freeze-rule-up",
                show=False),
        Binding("right_square_bracket,ctrl+down", "move_rule(1)", "Move rule down", id="freeze-rule-down",
                show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._model = None  # the session.model the tree shows
        self._tensors: dict = {}
        self._shown = None  # the (FreezeConfig, LoraConfig) the views show
        self._lora_targets: list[str] = []  # layers with adapters under the shown config
        self._states: dict = {}  # module path -> NodeState under the shown map
        self._preset_shares: dict[tuple[str, int], float] = {}
        self._trained: dict[int, list[str]] = {}  # tensor identity -> names, of what trains under the shown map
        self._stages = 1  # unfreezing stages of the shown map under its freeze.unfreezing
        self._decay: str | None = None  # the decay last written, offered again (None: the model's default)

    def compose_body(self) -> ComposeResult:
        with ContentSwitcher(initial="freeze-loading", id="freeze-body"):
            yield Spinner("reading the model's structure (step 1 shows how far it got)", id="freeze-loading")
            yield Static("", id="freeze-failed")
            with Vertical(id="freeze-editor"):
                with Horizontal(id="freeze-panes"):
                    yield ModuleTree(id="freeze-tree")
                    yield RuleTable(id="freeze-rules")
                yield FreezeSummaryBar(id="freeze-summary")

    def on_mount(self) -> None:
        self.query_one("#freeze-tree").border_title = "modules · space train/freeze · → open · l LoRA target"
        self.query_one("#freeze-rules").border_title = "rules · later ones win"
        self.watch(self.app, "model_state", self._model_state_changed)
        self.watch(self.app, "session_version", self._session_changed)

    def on_screen_resume(self) -> None:
        self._ensure_model()

    def _ensure_model(self) -> None:
        """Load the model structure when nothing has loaded it (or a config change dropped it)."""
        if self.session.model is None and self.app.model_state in ("none", "ready"):
            self.app.load_model()

    # ---- what is shown ------------------------------------------------------------------------
    def _model_state_changed(self, state: str) -> None:
        switcher = self.query_one(ContentSwitcher)
        if state == "failed":
            error = self.session.load_errors.get("model")
            message, hint = (error.message, error.hint) if error else ("the model could not be loaded", "")
            text = Text.assemble(("Cannot show the freeze map\n\n", "bold"), (message, "red"))
            if hint:
                text.append(f"\n\nhint: {hint}", "dim")
            text.append("\n\nFix the model on step 1.", "dim")
            self.query_one("#freeze-failed", Static).update(text)
            switcher.current = "freeze-failed"
        elif state == "ready" and self.session.model is not None:
            self._session_changed()
        else:
            switcher.current = "freeze-loading"
        self.query_one("#freeze-loading", Spinner).spinning = switcher.current == "freeze-loading"

    def _session_changed(self, _version: int | None = None) -> None:
        """Redraw when the model or the freeze map changed; other edits of the session cost nothing."""
        model = self.session.model
        if model is None or self.app.model_state != "ready":
            return
        self.query_one(ContentSwitcher).current = "freeze-editor"
        if model is not self._model:
            self._show_model(model)
        elif (self.session.config.freeze, self.session.config.lora) == self._shown:
            self._show_methods()  # the base lr may have changed
            return
        self._refresh()

    def _show_model(self, model) -> None:
        self._model, self._shown, self._preset_shares = model, None, {}
        self._tensors = tensor_index(model.skeleton)
        tree = self.query_one(ModuleTree)
        tree.show_model(model.description.root, model.description.blocks)
        tree.focus()

    def _refresh(self) -> None:
        """Resolve the map once, then relabel the tree and redraw the rule list and the summary. With
        LoRA on, the map is the one under LoRA (core.lora.lora_rules), and the summary counts the
        adapters that peft puts on a copy of the skeleton (Session.freeze_preview, which the draft
        bar reads too)."""
        config, skeleton = self.session.config, self._model.skeleton
        freeze = config.freeze
        self._shown = (freeze, config.lora)
        preview = self.session.freeze_preview
        rules, summary, error = preview.rules, preview.summary, preview.error
        self._lora_targets = preview.lora.targets if preview.lora is not None else []
        try:
            states = resolve(skeleton, rules)
        except UserError as err:  # an invalid regex from a loaded config
            summary, error = None, err
        description = self._model.description
        self._states = node_states(description.root, self._tensors, states) if summary else {}
        self._trained = trained_tensors(self._tensors, states, self._lora_targets) if summary else {}
        schedule = self._schedule(freeze.unfreezing)
        self._stages = len(schedule.stages)
        # the parts the schedule stages: BERT's whole `bert.embeddings` is the bottom one (core.unfreezing)
        parts = (description.blocks + embedding_parts(description.blocks, description.embeddings)
                 + description.head + description.top)
        starts = {}
        if schedule.staged:
            stages = start_stages(description.root, self._tensors, self._trained, schedule, parts)
            starts = {path: stage_start(stage, freeze.unfreeze_every) for path, stage in stages.items()}
        self.query_one(ModuleTree).relabel(self._states, self._lora_targets, starts)
        self._show_methods()
        self.query_one(RuleTable).show_rules(rules, [rule.params for rule in summary.rules] if summary else None,
                                             self._deciding())
        shares = {preset: self._preset_share(preset) for _, preset, _ in PRESETS}
        self.query_one(FreezeSummaryBar).show(summary, error, freeze, shares)

    def _deciding(self) -> frozenset:
        node = self.query_one(ModuleTree).cursor_node
        state = self._states.get(node.data.path) if node is not None and node.data is not None else None
        return state.rules if state is not None else frozenset()

    def on_tree_node_highlighted(self, _event: Tree.NodeHighlighted) -> None:
        if self._model is not None:
            self.query_one(RuleTable).mark(self._deciding())

    def _preset_share(self, preset: str) -> float:
        """The trainable share a preset alone would give (what pressing its key does)."""
        top_n = self.session.config.freeze.top_n
        key = (preset, top_n if preset == "top-n" else 0)
        if key not in self._preset_shares:
            rules = preset_rules(preset, self._model.description, top_n)
            self._preset_shares[key] = summarize_freeze(self._model.skeleton, rules).trainable_share
        return self._preset_shares[key]

    # ---- changing the map ----------------------------------------------------------------------
    def _apply(self, changes: dict) -> bool:
        try:
            self.session.update(changes)
        except UserError as err:
            self.notify(err.message, title="Not applied", severity="error")
            return False
        self.app.changed()
        return True

    def _user_rules(self) -> list[FreezeRule]:
        return list(self.session.config.freeze.rules)

    def _set_rules(self, rules: list[FreezeRule], cursor: int | None = None) -> None:
        """Store the user's rules; `cursor` is the user rule to select in the list afterwards."""
        if self._apply({"freeze.rules": [rule.model_dump() for rule in rules]}) and cursor is not None:
            table = self.query_one(RuleTable)
            table.move_cursor(row=table.preset_count + cursor)

    def _ready(self) -> bool:
        return self._model is not None and self.query_one(ContentSwitcher).current == "freeze-editor"

    def action_preset(self, preset: str) -> None:
        """Set the preset, also while the model still loads: a preset is a config value, so a key
        pressed during the first visit's spinner (the model loading) is kept, not dropped, and the
        map shows it once the model is there."""
        self._apply({"freeze.preset": preset, "freeze.rules": []})

    def action_top_n(self, step: int) -> None:
        if self._ready():
            top_n = self.session.config.freeze.top_n + step
            if 0 <= top_n <= len(self._model.description.blocks):
                self._apply({"freeze.top_n": top_n})

    def action_toggle_freeze(self) -> None:
        """Flip the selected module: a rule for it at the end, or the last rule flipped or dropped
        when it already names this module, so toggling back and forth adds nothing."""
        node = self.query_one(ModuleTree).cursor_node
        if not self._ready() or node is None or node.data is None or not self._states:
            return
        module = node.data
        train = self._states[module.path].train != "train"
        match = module.path or "*"
        rules = self._user_rules()
        if rules and rules[-1].match == match:
            last = rules.pop()
            if self._train_state(rules, module.path) != ("train" if train else "frozen"):
                rules.append(last.model_copy(update={"train": train}))
        else:
            rules.append(FreezeRule(match=match, train=train))
        self._set_rules(rules)

    def _train_state(self, user_rules: list[FreezeRule], path: str) -> str:
        """The state of module `path` if the user's rules were `user_rules`."""
        freeze = self.session.config.freeze.model_copy(update={"rules": user_rules})
        states = resolve(self._model.skeleton, effective_rules(freeze, self._model.description))
        return node_states(self._model.description.root, self._tensors, states)[path].train

    def _selected_rule(self) -> int | None:
        """The user-rule index under the list's cursor; None (with a note) on a preset row."""
        table = self.query_one(RuleTable)
        index = table.cursor_row - table.preset_count
        if table.row_count == 0 or index < 0:
            self.notify("Preset rules change only with the preset (a, h, t, e); add your own rule with n.",
                        severity="warning")
            return None
        return index

    def _check(self, rules: list[FreezeRule], position: int):
        """For the rule dialog: what the rule would decide at `position` of the user's rules (an
        invalid regex raises core.freeze's UserError, which the dialog shows under the field)."""

        def check(rule: FreezeRule) -> str:
            trial = rules[:position] + [rule] + rules[position + 1:]
            freeze = self.session.config.freeze.model_copy(update={"rules": trial})
            effective = effective_rules(freeze, self._model.description)
            summary = summarize_freeze(self._model.skeleton, effective)
            decided = summary.rules[len(effective) - len(trial) + position]
            if not decided.tensors:
                return "decides no parameter (nothing matches, or later rules win)"
            return (f"decides {decided.tensors} tensors, {format_count(decided.params)} parameters; "
                    f"trainable then {format_share(summary.trainable_share)}")

        return check

    def action_toggle_lora(self) -> None:
        """Give the selected module's layers adapters, or take them away when all have them: the
        targets become explicit layer paths then, so one module leaves a preset's list. Turns LoRA on,
        and off again (with the default targets) when the last adapter is taken away: a second `l`
        undoes the first."""
        node = self.query_one(ModuleTree).cursor_node
        if not self._ready() or node is None or node.data is None:
            return
        lora, path = self.session.config.lora, node.data.path
        if not self._targets_under(path):
            self.notify(f"{path or 'the model'} has no linear or embedding layer to put an adapter on.",
                        severity="warning")
            return
        try:
            current = resolve_targets(self._model.skeleton, self._model.description, lora.targets)
        except UserError:
            current = []  # a target matching nothing: start again from this module
        below = [p for p in current if path == "" or p == path or p.startswith(path + ".")]
        if lora.enabled and below and set(below) == set(self._targets_under(path)):
            targets = [p for p in current if p not in below]
            if not targets:  # the last target taken away: LoRA off, as it was before an `l` turned it on
                self._apply({"lora.enabled": False, "lora.targets": type(lora)().targets})
                self.notify("LoRA is off: no layer has an adapter now.")
                return
        else:
            targets = (current if lora.enabled else []) + [path or "*"]
        self._apply({"lora.enabled": True, "lora.targets": targets})

    def _targets_under(self, path: str) -> list[str]:
        """The layers at or below `path` that can take an adapter."""
        try:
            return resolve_targets(self._model.skeleton, self._model.description, [path or "*"])
        except UserError:
            return []

    def action_lora_preset(self, preset: str) -> None:
        if self._ready():
            self._apply({"lora.enabled": True, "lora.targets": [preset]})

    def action_add_rule(self) -> None:
        if not self._ready():
            return
        node = self.query_one(ModuleTree).cursor_node
        match = node.data.path if node is not None and node.data is not None and node.data.path else "*"
        rules = self._user_rules()

        def added(rule: FreezeRule | None) -> None:
            if rule is not None:
                self._set_rules(rules + [rule], cursor=len(rules))

        self.app.push_screen(RuleDialog("New rule", FreezeRule(match=match), self._check(rules, len(rules))),
                             added)

    def action_edit_rule(self) -> None:
        if not self._ready() or (index := self._selected_rule()) is None:
            return
        rules = self._user_rules()

        def edited(rule: FreezeRule | None) -> None:
            if rule is not None:
                self._set_rules(rules[:index] + [rule] + rules[index + 1:], cursor=index)

        self.app.push_screen(RuleDialog(f"Edit {rule_name(rules, index)}", rules[index], self._check(rules, index)),
                             edited)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_edit_rule()

    def action_delete_rule(self) -> None:
        if self._ready() and (index := self._selected_rule()) is not None:
            rules = self._user_rules()
            del rules[index]
            self._set_rules(rules, cursor=min(index, len(rules) - 1) if rules else None)

    def action_move_rule(self, step: int) -> None:
        if not self._ready() or (index := self._selected_rule()) is None:
            return
        rules = self._user_rules()
        target = index + step
        if 0 <= target < len(rules):
            rules[index], rules[target] = rules[target], rules[index]
            self._set_rules(rules, cursor=target)
