"""The bar under the freeze map: trainable parameters, the memory a training step will need, the
frozen-prefix cache the map gives (its speed-up and size, or why it will be off), and the presets.

The memory estimate (core.memory) depends on the freeze map and on the hyperparameter form (batch
size, max_length, gradient checkpointing, precision), so the bar redraws on every change of the
session, not only when the freeze screen shows a new map. It is arithmetic on the model's config and
the map's trainable parameter names: no torch. The estimate counts the data's trained-token share
(a causal LM's logits are only computed where a label is) and the prefix cache's memory, once the
data has loaded; before that it errs high on logits and leaves the cache's size out."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.freeze import effective_rules, resolve
from core.memory import (
    blocks_in_backward,
    estimate_peak,
    format_bytes,
    labelled_share,
    model_shape,
    planned_adapter_activations,
)
from core.prefix_plan import PrefixPlan, blocks_name, plan_prefix_cache
from sft_tui.format.model import training_memory
from sft_tui.format.numbers import format_share

PRESETS = [("a", "all", "all"), ("h", "head-only", "head-only"), ("t", "top-n", "top-{n}"),
           ("e", "freeze-embeddings", "freeze-emb")]
"""(key, preset, short name) in the order the bar lists them."""


class FreezeSummaryBar(Static):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple | None = None  # the last show() arguments
        self._map: tuple | None = None  # (model, (freeze, lora), trainable names, (trained, passed)) of the last map

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

    def _trained(self, model, freeze) -> tuple[list[str], tuple[int, int]]:
        """The trainable names or module paths under the map, and its (trained, passed) blocks,
        kept until the model or the map changes."""
        key = (freeze, self.app.session.config.lora)
        if self._map is None or self._map[0] is not model or self._map[1] != key:
            description, lora = model.description, self.app.session.freeze_preview.lora
            if lora is not None:  # the adapters train inside the layers they target, and the map's full modules
                trainable = lora.targets + lora.modules_to_save
            else:
                states = resolve(model.skeleton, effective_rules(freeze, description))
                trainable = [name for name, state in states.items() if state.train]
            self._map = (model, key, trainable, blocks_in_backward(description.blocks, description.embeddings, trainable))
        return self._map[2], self._map[3]

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
        stats = session.data.stats if session.data is not None else None
        share = labelled_share(stats.tokens_total, stats.loss_tokens, config.compute.labelled_logits_only) if stats else 1.0
        trainable, blocks = self._trained(model, freeze)
        prefix = plan_prefix_cache(model.skeleton, model.description, trainable, config,
                                   tokens=stats.tokens_total if stats else None, length=length, labelled_share=share,
                                   device=device, epochs=config.schedule.epochs)
        args = {"batch": config.optim.batch_size, "length": length, "task": config.task,
                "activation_bytes": 2 if half else 4, "device": device,
                "adapters": self._adapters(model, config.lora), "labelled_share": share,
                "prefix_cache_bytes": prefix.bytes}
        shape, on = model_shape(model.skeleton.config), config.compute.gradient_checkpointing
        estimate, other = (estimate_peak(summary.total_params, summary.trainable_params, shape, blocks,
                                         checkpointing=checkpointing, **args) for checkpointing in (on, not on))
        text = training_memory(estimate, other, on, config.optim.batch_size, length, device)
        return text.append_text(prefix_line(prefix, stats is not None, config.schedule.epochs))


def prefix_line(prefix: PrefixPlan, sized: bool, epochs: float) -> Text:
    """One line on the frozen-prefix cache under the current map: what runs once, the expected
    speed-up and the size; or why it will be off, naming what to change; nothing without a frozen
    prefix. `sized`: whether the data is known (the size is the training rows' tokens)."""
    text = Text()
    if not prefix.blocks:
        return text
    text.append("prefix cache ", "bold")
    if prefix.off:
        return text.append(f"off: {prefix.off}\n", "dim")
    gain = f"~{prefix.speedup.later_epochs:.1f}x faster from epoch 2" if epochs > 1 else "no gain in one epoch"
    size = format_bytes(prefix.bytes) if sized else "size with the data"
    return text.append(f"{blocks_name(prefix.blocks)} run once · {gain} · {size}\n")
