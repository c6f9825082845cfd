"""The bar under the freeze map: trainable parameters, the memory a training step will need
(sft_tui.draft_memory, redrawn on every change of the session: it depends on the form too), whether
that fits the run's device, the frozen-prefix cache the map gives (its speed-up and size, or why it
will be off), and the presets."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.config import RunConfig
from core.memory import MemoryEstimate, format_bytes
from core.memory_fit import Overflow
from core.prefix_plan import PrefixPlan, blocks_name
from core.vocab_plan import VocabPlan
from sft_tui.draft_memory import draft_overflow
from sft_tui.format.model import training_memory
from sft_tui.format.numbers import format_share

PRESETS = [("a", "all", "all"), ("h", "head-only", "{head}"), ("t", "top-n", "top-{n}"),
           ("e", "freeze-embeddings", "freeze-emb")]
"""(key, preset, short name) in the order the bar lists them."""


def head_only_name(top: list[str]) -> str:
    """head-only's name in the presets line says what it trains: the head and what only feeds it
    (core.describe's top: `head+pooler`, `head+norm`), `head+top` when their names are long."""
    name = "+".join(["head", *(path.rpartition(".")[2] for path in top)])
    return name if len(name) <= 14 else "head+top"


class FreezeSummaryBar(Static):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple | None = None  # the last show() arguments

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
            text.append_text(self._memory())
        text.append("Presets", "bold")
        model = self.app.session.model
        head = head_only_name(model.description.top) if model is not None else "head-only"
        for key, preset, short in PRESETS:
            text.append("  ")
            text.append(f"{key} {short.format(n=freeze.top_n, head=head)} {format_share(preset_shares[preset])}",
                        "reverse" if preset == freeze.preset else "")
        for warning in summary.warnings if summary else []:
            text.append(f"\n⚠ {warning}", "yellow")
        self.update(text)

    def _memory(self) -> Text:
        session = self.app.session
        memory, config = session.memory, session.config
        if memory is None:
            return Text()
        text = training_memory(memory.estimate, memory.other, config.compute.gradient_checkpointing,
                               config.optim.batch_size, memory.length, memory.device)
        text.append_text(overflow_line(draft_overflow(session, memory), memory.estimate, config))
        text.append_text(prefix_line(memory.prefix, session.data is not None, config.schedule.epochs))
        return text.append_text(vocab_line(memory.vocab))


def overflow_line(over: Overflow | None, estimate: MemoryEstimate, config: RunConfig) -> Text:
    """A line where the estimate is more than the run's device holds (core.memory_fit): the run would
    end at its first step, out of memory. It names what the draft has not tried yet, or that the
    weights alone are too many. One line, or at 80x24 the presets below it are cut (the dry run gives
    the whole advice)."""
    text = Text()
    if over is None:
        return text
    untried = [*([] if config.lora.enabled else ["LoRA"]),
               *([] if config.compute.gradient_checkpointing else ["gradient checkpointing"])]
    if estimate.weights * over.need > over.total * estimate.total:  # the weights of every process that shares it
        advice = "the weights alone are more"
    else:
        advice = f"try {' or '.join(untried)}" if untried else "try shorter rows or a smaller batch"
    return text.append(f"! more than {over.where} ({format_bytes(over.total)}): {advice}\n", "bold yellow")


def vocab_line(vocab: VocabPlan | None) -> Text:
    """One line where only the embedding rows the data uses train (core.vocab_plan): it says why the
    gradients and AdamW state are smaller than the trainable count suggests. Never beside the prefix
    cache's line: that one needs the embedding frozen, this one trained."""
    text = Text()
    if vocab is not None:
        text.append("vocabulary ", "bold")
        text.append(f"{vocab.used:,} of {vocab.rows:,} embedding rows train: those the data uses\n")
    return text


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
