"""The freeze map's transfer-learning methods that take a value: layer-wise learning-rate decay (it
writes rules) and gradual unfreezing or LP-FT (freeze.unfreezing and freeze.unfreeze_every).

Each dialog hands its values to `perform`, the freeze screen's change of the draft, and stays open
with the message under the fields when that refuses them (core's check of the decay, pydantic's of
the config), so a value is fixed in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.events import Mount
from textual.widgets import Input, Label, Select, Static

from core.config import FreezeConfig
from core.errors import UserError
from sft_tui.screens.dialogs.form import FormDialog


class DecayDialog(FormDialog[float]):
    """Asks for the decay of layer-wise lr decay; answers it once `perform(decay)` has written the rules."""

    def __init__(self, decay: str, blocks: int, perform: Callable[[float], object], embeddings: bool = True) -> None:
        super().__init__()
        self.decay, self.blocks, self.perform, self.embeddings = decay, blocks, perform, embeddings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Layer-wise learning-rate decay", classes="dialog-title")
            yield Static(f"The top block trains at the base lr, each of the {self.blocks} blocks below at decay "
                         "times the one above, the embeddings lowest. Writes one rule per trained block and "
                         "embedding (replacing earlier ones), which you can edit.", classes="dialog-text")
            yield Input(self.decay, placeholder="decay in (0, 1], e.g. 0.8", id="decay-input")
            yield Static(self._effect(self.decay), id="decay-effect", classes="dialog-text")
            yield from self.compose_error_and_buttons("Write rules")

    def _effect(self, text: str) -> str:
        """What the typed decay does to the bottom of the model: on a 30-block model 0.8 leaves block
        0 at x0.0015 of the base lr, which a user should see before writing the rules."""
        try:
            decay = float(text)
        except ValueError:
            return ""
        if not 0 < decay <= 1 or not self.blocks:
            return ""
        bottom = f"embeddings x{decay ** self.blocks:.3g}" if self.embeddings else "the embedding is the tied head: x1"
        return f"block 0 x{decay ** (self.blocks - 1):.3g} of the base lr · {bottom}"

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#decay-effect", Static).update(self._effect(event.value.strip()))

    def act(self) -> None:
        text = self.query_one(Input).value.strip()
        try:
            decay = float(text)
        except ValueError:
            self.show_error(f"layer-wise lr decay must be a number in (0, 1], e.g. 0.8, not {text!r}")
            return
        try:
            self.perform(decay)
        except ValueError as err:  # core.lr_decay's range check
            self.show_error(str(err))
        else:
            self.dismiss(decay)


class UnfreezeDialog(FormDialog[bool]):
    """freeze.unfreezing and freeze.unfreeze_every; answers True once `perform(kind, every)` took
    them (`every` is the typed text: pydantic parses and checks it)."""

    DEFAULT_CSS = """
    UnfreezeDialog .unfreeze-fields { height: auto; }
    UnfreezeDialog .unfreeze-fields Label { margin: 1 1 0 0; }
    UnfreezeDialog #unfreeze-kind { width: 16; margin-top: 1; }
    UnfreezeDialog #unfreeze-every { width: 12; }
    """

    def __init__(self, freeze: FreezeConfig, perform: Callable[[str, str], object]) -> None:
        super().__init__()
        self.freeze, self.perform = freeze, perform

    def compose(self) -> ComposeResult:
        fields = FreezeConfig.model_fields
        with Vertical(classes="dialog"):
            yield Label("Gradual unfreezing / LP-FT", classes="dialog-title")
            yield Static("gradual: the head and the modules above the blocks first, then one more block from "
                         "the top per stage, the embeddings last. lp-ft: the head and those for one stage, "
                         "then the whole map. A stage is `every` optimizer steps, 0: one epoch.",
                         classes="dialog-text")
            with Horizontal(classes="unfreeze-fields"):
                yield Label("unfreezing")
                yield Select([(kind, kind) for kind in get_args(fields["unfreezing"].annotation)],
                             value=self.freeze.unfreezing,
                             allow_blank=False, compact=True, id="unfreeze-kind",
                             tooltip=fields["unfreezing"].description)
                yield Label("every")
                yield Input(str(self.freeze.unfreeze_every), id="unfreeze-every",
                            tooltip=fields["unfreeze_every"].description)
                yield Label("steps")
            yield from self.compose_error_and_buttons("Apply")

    def on_mount(self, event: Mount) -> None:
        event.prevent_default()  # FormDialog's handler would focus the Input: the kind comes first
        self.query_one(Select).focus()

    def act(self) -> None:
        try:
            self.perform(self.query_one(Select).value, self.query_one(Input).value.strip())
        except UserError as err:
            self.show_error(err)
        else:
            self.dismiss(True)
