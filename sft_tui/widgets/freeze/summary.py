"""The bar under the freeze map: trainable parameters, the memory a training step will need, and
the presets.

The memory estimate (core.memory) depends on the freeze map and on the hyperparameter form (batch
size, max_length, gradient checkpointing, precision), so the bar redraws on every change of the
session, not only when the freeze screen shows a new map. It is arithmetic on the model's config and
the map's trainable parameter names: no torch."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.freeze import effective_rules, resolve
from core.memory import blocks_in_backward, estimate_peak, model_shape, planned_adapter_activations
from sft_tui.format.model import training_memory
from sft_tui.format.numbers import format_share

PRESETS = [("a", "all", "all"), ("h", "head-only", "head-only"), ("t", "top-n", "top-{n}"),
           ("e", "freeze-embeddings", "freeze-emb")]
"""(key, preset, short name) in the order the bar lists them."""


class FreezeSummaryBar(Static):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple | None = None  # the last show() arguments
        self._blocks: tuple | None = None  # (model, freeze, (trained, passed)) of the last map

    def on_mount(self) -> None:
        self.watch(self.app, "session_version", self._session_changed, init=False)

    def _session_changed(self, _version: int) -> None:
        if self._shown is not None:
            self.show(*self._shown)

    def show(self, summary, error, freeze, preset_shares: dict[str, float]) -> None:
        """`summary`: core.freeze.FreezeSummary, or None with the UserError that prevented it;
        `preset_shares`: the trainable share each preset alone gives, i.e. what pressing its key does."""
        self._shown = (summary, error, freeze, preset_shares)
        text = Text()
        if summary is None:
            text.append(f"{error.message}\n", "bold red")
            text.append(f"hint: {error.hint}\n" if error.hint else "", "dim")
        else:
            text.append("Trainable ", "bold")
            text.append(f"{summary.trainable_params:,}", "green")
            text.append(f" of {summary.total_params:,} ({format_share(summary.trainable_share)})  ·  ")
            text.append_text(self._memory(summary, freeze))
        text.append("Presets", "bold")
        for key, preset, short in PRESETS:
            text.append("  ")
            text.append(f"{key} {short.format(n=freeze.top_n)} {format_share(preset_shares[preset])}",
                        "reverse" if preset == freeze.preset else "")
        for warning in summary.warnings if summary else []:
            text.append(f"\n⚠ {warning}", "yellow")
        self.update(text)

    def _backward_blocks(self, model, freeze) -> tuple[int, int]:
        """(trained, passed) blocks under the map, kept until the model or the map changes."""
        key = (freeze, self.app.session.config.lora)
        if self._blocks is None or self._blocks[0] is not model or self._blocks[1] != key:
            description, lora = model.description, self.app.session.freeze_preview.lora
            if lora is not None:  # the adapters train inside the layers they target, and the map's full modules
                trainable = lora.targets + lora.modules_to_save
            else:
                states = resolve(model.skeleton, effective_rules(freeze, description))
                trainable = [name for name, state in states.items() if state.train]
            self._blocks = (model, key, blocks_in_backward(description.blocks, description.embeddings, trainable))
        return self._blocks[2]

    def _adapters(self, model, lora) -> int:
        """Elements per token the LoRA adapters keep beyond their blocks' own (0 without LoRA)."""
        plan = self.app.session.freeze_preview.lora
        return planned_adapter_activations(model.skeleton, plan.targets, lora.r, lora.dropout) if plan else 0

    def _memory(self, summary, freeze) -> Text:
        session = self.app.session
        model, config = session.model, session.config
        if model is None:
            return Text()
        device = "cuda" if session.cuda and config.compute.devices != "cpu" else "cpu"
        half = config.precision in ("bf16", "fp16") or (config.precision == "auto" and device == "cuda")
        length = min(config.data.max_length, model.max_positions or config.data.max_length)
        args = {"batch": config.optim.batch_size, "length": length, "task": config.task,
                    "activation_bytes": 2 if half else 4, "device": device,
                    "adapters": self._adapters(model, config.lora)}
        shape, blocks = model_shape(model.skeleton.config), self._backward_blocks(model, freeze)
        on = config.compute.gradient_checkpointing
        estimate, other = (estimate_peak(summary.total_params, summary.trainable_params, shape, blocks,
                                         checkpointing=checkpointing, **args) for checkpointing in (on, not on))
        return training_memory(estimate, other, on, config.optim.batch_size, length, device)
