"""The freeze screen's transfer-learning methods: layer-wise lr decay, gradual unfreezing and LP-FT.

They belong to the map: layer-wise lr decay writes ordinary rules (core.lr_decay), and gradual
unfreezing or LP-FT (freeze.unfreezing) stage what the map trains (core.unfreezing), which the tree
marks with each part's start. A mixin of FreezeScreen, kept apart so the screen module holds the
map's editing and this one the methods built on it; it reads the screen's resolved state
(`_model`, `_states`, `_trained`, `_stages`) and edits through its `_apply` and `_set_rules`.
"""

from __future__ import annotations

from core.lr_decay import decayed_modules, default_decay, layerwise_lr_rules
from core.unfreezing import plan_unfreezing
from sft_tui.format.model import lr_spread, unfreezing_text
from sft_tui.screens.dialogs.freeze_methods import DecayDialog, UnfreezeDialog
from sft_tui.widgets.freeze.rules import RuleTable
from sft_tui.widgets.freeze.tree import ModuleTree


class FreezeMethods:
    """Keys d (layer-wise lr decay), u (unfreezing) and p (LP-FT), and what the panes' borders say of them."""

    def action_layer_decay(self) -> None:
        if not self._ready() or not self._states:
            return
        blocks = self._model.description.blocks
        if not blocks:
            self.notify("Layer-wise lr decay needs a stack of blocks, and none was found in this model.",
                        severity="warning")
            return
        embeddings = len(decayed_modules(self._model.description)) > len(blocks)  # not when tied to the head
        offered = self._decay or f"{default_decay(len(blocks)):g}"
        self.app.push_screen(DecayDialog(offered, len(blocks), self._write_decay, embeddings))

    def _write_decay(self, decay: float) -> None:
        """Replace the rules an earlier decay wrote (train rules naming exactly a block or an
        embedding; a frozen one is the user's toggle and stays) with core.lr_decay's, for the blocks
        and embeddings the map trains now in full; a ValueError (a decay out of range, nothing to
        decay) leaves the rules alone and the dialog shows it."""
        description = self._model.description
        written = layerwise_lr_rules(description, decay,
                                     lambda path: path in self._states and self._states[path].train == "train")
        if not written:
            raise ValueError("the map trains no block or embedding in full: nothing to decay "
                             "(train some first, e.g. preset a or t)")
        decayed = set(decayed_modules(description))
        kept = [rule for rule in self._user_rules() if not (rule.train and rule.match in decayed)]
        self._set_rules(kept + written, cursor=len(kept))
        self._decay = f"{decay:g}"

    def action_unfreezing(self) -> None:
        if self._ready():
            self.app.push_screen(UnfreezeDialog(self.session.config.freeze, self._set_unfreezing))

    def _set_unfreezing(self, kind: str, every: str) -> None:
        """Through the session, so pydantic checks `every`; its UserError stays in the dialog."""
        self.session.update({"freeze.unfreezing": kind, "freeze.unfreeze_every": every})
        self.app.changed()

    def action_lp_ft(self) -> None:
        """LP-FT over the user's map: the head and the top train alone for a stage, then the whole map."""
        if not self._ready() or not self._apply({"freeze.unfreezing": "lp-ft"}):
            return
        every = self.session.config.freeze.unfreeze_every
        if not self._schedule("lp-ft").staged:
            self.notify("LP-FT is set, but the map trains only one part: it has nothing to start later "
                        "(train more, e.g. preset a or t).", severity="warning")
        else:
            self.notify(f"LP-FT: the head and the top train alone for {f'{every} steps' if every else '1 epoch'}, "
                        "then the whole map; u changes it.")

    def _schedule(self, kind: str):
        """core.unfreezing's schedule of unfreezing `kind` for what the shown map trains."""
        description = self._model.description
        return plan_unfreezing(kind, self.session.config.freeze.unfreeze_every, list(self._trained.values()),
                               description.blocks, description.embeddings)


    def _show_methods(self) -> None:
        """The methods' state and keys under the panes: the learning rates the trainable parameters
        get (the spread layer-wise decay gives) under the rules, the unfreezing schedule under the tree."""
        freeze = self.session.config.freeze
        root = self._states.get("")
        scales = root.lr_scales if root is not None else frozenset()
        self.query_one(RuleTable).border_subtitle = f"{lr_spread(scales, self.session.config.optim.lr)} · d lr decay"
        self.query_one(ModuleTree).border_subtitle = (
            f"u unfreezing {unfreezing_text(freeze.unfreezing, freeze.unfreeze_every, self._stages)} · p LP-FT")
