"""Plain text of the train screen: the load snippet and the draft summary. Pure functions, so the
screen's wording is tested without a UI."""

from __future__ import annotations

from core.config import RunConfig
from core.plan import when_checkpointed, when_evaluated
from sft_tui.format.numbers import format_share

LOADERS = {
    "classification": ("AutoModelForSequenceClassification",
                       'AutoModelForSequenceClassification.from_pretrained("{}")'),
    "causal-lm": ("pipeline", 'pipeline("text-generation", model="{}")'),
}
"""Per task: what to import from transformers, and the call that loads the exported folder."""


def load_snippet(task: str, path: str) -> str:
    """Two lines of Python that load the exported model, to copy into a notebook."""
    name, call = LOADERS.get(task, LOADERS["causal-lm"])
    return f"from transformers import {name}\n{call.format(path)}"


def draft_summary(config: RunConfig, trainable_share: float | None) -> list[tuple[str, str]]:
    """(label, value) rows describing what Start would train."""
    optim, schedule, evals = config.optim, config.schedule, config.eval
    length = f"{schedule.max_steps} steps" if schedule.max_steps else f"{schedule.epochs:g} epoch(s)"
    warmup = (f"warmup {schedule.warmup_steps} steps" if schedule.warmup_steps
              else f"warmup {100 * schedule.warmup_ratio:g}%")
    share = (f"{format_share(trainable_share)} of parameters" if trainable_share is not None
             else "known once the model is loaded")
    rules = f" + {len(config.freeze.rules)} rule(s)" if config.freeze.rules else ""
    patience = f" · early stop after {evals.patience} evaluations without progress" if evals.patience else ""
    return [
        ("model", f"{config.model.name_or_path}  ({config.task})"),
        ("data", f"{config.data.train} · format {config.data.format} · max length {config.data.max_length}"),
        ("trainable", f"{share} · freeze preset {config.freeze.preset}{rules}"),
        ("optimizer", f"AdamW lr {optim.lr:g} · batch {optim.batch_size} x {optim.grad_accum} · "
                      f"weight decay {optim.weight_decay:g} · clip {optim.max_grad_norm:g}"),
        ("schedule", f"{length} · {schedule.scheduler} · {warmup}"),
        ("evaluate", f"{when_evaluated(config)} · metric {evals.metric}{patience}"),
        ("checkpoint", f"{when_checkpointed(config)} · keep {config.checkpoint.keep_last}"),
        ("output", f"{config.output.runs_dir}/{config.output.run_name or '<time>-<model>'} · precision "
                   f"{config.precision} · seed {config.seed}"),
    ]

