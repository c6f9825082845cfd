"""The bar under the freeze map: trainable parameters, the memory a training step will need, the
frozen-prefix cache the map gives (its speed-up and size, or why it will be off), and the presets.

The memory estimate (core.memory) depends on the freeze map and on the hyperparameter form (batch
size, max_length, gradient checkpointing, precision), so the bar redraws on every change of the
session, not only when the freeze screen shows a new map. It is arithmetic on the model's config and
the map's trainable parameter names: no torch. The estimate counts the data's trained-token share
(a causal LM's logits are only computed where a label is) and the prefix cache's memory, once the
data has loaded; before that it errs high on logits and leaves the cache's size out. Under L2-SP
(optim.l2sp_alpha above 0) it counts the starting copy of the trained pretrained weights. Once the
data is known, input-embedding rows that no training row uses carry no gradient or optimizer state
where core.vocab_plan says the run will leave them out."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.cls_only import first_token_top
from core.config import RunConfig
from core.freeze import resolve
from core.launch import run_gpus
from core.memory import (MemoryEstimate, blocks_in_backward, estimate_peak, format_bytes, fsdp_shards, labelled_share,
                         model_shape)
from core.memory_fit import Overflow, overflow
from core.prefix_plan import PrefixPlan, blocks_name, plan_prefix_cache
from core.vocab_plan import VocabPlan, plan_compact_vocab
from sft_tui.format.model import training_memory
from sft_tui.format.numbers import format_share
from sft_tui.widgets.freeze.state import reference_params, tensor_index

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
        self._map: tuple | None = None  # (model, (freeze, lora), trainable, blocks, reference) of the last map

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
        model = self.app.session.model
        head = head_only_name(model.description.top) if model is not None else "head-only"
        for key, preset, short in PRESETS:
            text.append("  ")
            text.append(f"{key} {short.format(n=freeze.top_n, head=head)} {format_share(preset_shares[preset])}",
                        "reverse" if preset == freeze.preset else "")
        for warning in summary.warnings if summary else []:
            text.append(f"\n⚠ {warning}", "yellow")
        self.update(text)

    def _trained(self, model, freeze) -> tuple[list[str], tuple[int, int], int, str | None]:
        """The trainable names or module paths under the map, its (trained, passed) blocks, the
        parameters L2-SP would keep a starting copy of, and how the last block counts at the first
        token (core.cls_only.first_token_top), kept until the model or the map changes."""
        session = self.app.session
        key = (freeze, session.config.lora)
        if self._map is None or self._map[0] is not model or self._map[1] != key:
            description, preview = model.description, session.freeze_preview
            states = resolve(model.skeleton, preview.rules)
            if preview.lora is not None:  # the adapters train inside the layers they target, and the map's full modules
                trainable = preview.lora.targets + preview.lora.modules_to_save
            else:
                trainable = [name for name, state in states.items() if state.train]
            # A classification head starts random (load_model counts it new); a causal LM's is pretrained.
            new = description.head if model.task == "classification" else []
            blocks = blocks_in_backward(description.blocks, description.embeddings, trainable)
            self._map = (model, key, trainable, blocks, reference_params(tensor_index(model.skeleton), states, new),
                         first_token_top(model.skeleton, description.blocks, trainable))
        return self._map[2:]

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
        trainable, blocks, reference, top = self._trained(model, freeze)
        prefix = plan_prefix_cache(model.skeleton, model.description, trainable, config,
                                   tokens=stats.tokens_total if stats else None, length=length, labelled_share=share,
                                   device=device, epochs=config.schedule.epochs)
        args = {"batch": config.optim.batch_size, "length": length, "task": config.task,
                "activation_bytes": 2 if half else 4, "device": device,
                "adapters": session.freeze_preview.adapters, "labelled_share": share,
                "prefix_cache_bytes": prefix.bytes,
                "quantized": config.lora.quantized,
                "first_token_top": top if config.compute.last_block_cls_only else None,
                "shards": fsdp_shards(config.compute, device)}
        shape, on = model_shape(model.skeleton.config), config.compute.gradient_checkpointing
        held = summary.total_params + summary.originals_params  # peft keeps the originals of what trains in full
        stepped, reference = summary.trainable_params, reference if config.optim.l2sp_alpha else 0
        vocab = (plan_compact_vocab(config, model.skeleton, len(session.data.token_ids), config.compute.nproc,
                                    trainable=trainable, announce=False) if session.data is not None else None)
        if vocab is not None:  # once the data is known, the rows it leaves out (core.vocab_plan)
            held, stepped, reference = vocab.counted(held, stepped, reference)
        estimate, other = (estimate_peak(held, stepped, shape, blocks, checkpointing=checkpointing,
                                         reference_params=reference, **args) for checkpointing in (on, not on))
        text = training_memory(estimate, other, on, config.optim.batch_size, length, device)
        gpus = run_gpus(config, session.gpus) if device == "cuda" else []
        text.append_text(overflow_line(overflow(estimate.total, config.compute.nproc, gpus), estimate, config))
        text.append_text(prefix_line(prefix, stats is not None, config.schedule.epochs))
        return text.append_text(vocab_line(vocab))


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
