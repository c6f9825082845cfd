"""The bar under the freeze map: trainable parameters, the memory they need, and the presets."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.memory import estimate_training_memory, format_bytes
from sft_tui.format.numbers import format_share

PRESETS = [("a", "all", "all"), ("h", "head-only", "head-only"), ("t", "top-n", "top-{n}"),
           ("e", "freeze-embeddings", "freeze-emb")]
"""(key, preset, short name) in the order the bar lists them."""


class FreezeSummaryBar(Static):
    def show(self, summary, error, freeze, preset_shares: dict[str, float]) -> None:
        """`summary`: core.freeze.FreezeSummary, or None with the UserError that prevented it;
        `preset_shares`: the trainable share each preset alone gives, i.e. what pressing its key does."""
        text = Text()
        if summary is None:
            text.append(f"{error.message}\n", "bold red")
            text.append(f"hint: {error.hint}\n" if error.hint else "", "dim")
        else:
            memory = estimate_training_memory(summary.total_params, summary.trainable_params)
            text.append("Trainable ", "bold")
            text.append(f"{summary.trainable_params:,}", "green")
            text.append(f" of {summary.total_params:,} ({format_share(summary.trainable_share)})  ·  ")
            text.append("memory ", "bold")
            text.append(f"{format_bytes(memory['total'])} + activations\n")
            text.append(f"  weights {format_bytes(memory['weights'])} · gradients {format_bytes(memory['gradients'])}"
                        f" · AdamW state {format_bytes(memory['optimizer'])}\n", "dim")
        text.append("Presets", "bold")
        for key, preset, short in PRESETS:
            text.append("  ")
            text.append(f"{key} {short.format(n=freeze.top_n)} {format_share(preset_shares[preset])}",
                        "reverse" if preset == freeze.preset else "")
        for warning in summary.warnings if summary else []:
            text.append(f"\n⚠ {warning}", "yellow")
        self.update(text)
