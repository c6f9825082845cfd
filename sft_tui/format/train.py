"""Plain text of the train screen and the headless progress: the load snippet, the draft summary, the
ETA and a smoothed throughput. Pure code, so the wording is tested without a UI."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

from rich.console import RenderableType
from rich.text import Text

from core.config import RunConfig
from core.events import StepMetrics
from core.final_layout import LABELS_FILE
from core.lora import lr_advice
from core.plan import checkpoint_clock, when_checkpointed, when_evaluated
from sft_tui.format.numbers import format_duration, format_metric, format_metrics, format_share
from sft_tui.format.paths import TailPath

LOADERS = {
    "classification": ("AutoModelForSequenceClassification", "AutoModelForSequenceClassification.from_pretrained({})"),
    "causal-lm": ("pipeline", 'pipeline("text-generation", model={})'),
}
"""Per task: what to import from transformers, and the call that loads the exported folder (a string
literal goes in the braces)."""


def load_snippet(task: str, path: str) -> str:
    """Lines of Python that load the exported model, to copy into a notebook; the last one loads it.
    A classification adapter is loaded over its base with the class names it keeps (core.export)."""
    name, call = LOADERS.get(task, LOADERS["causal-lm"])
    literal = json.dumps(path)  # quoted as Python reads it: the path comes from events.jsonl, and a
    # crafted one put lines of its own in the copied snippet
    if task == "classification" and (Path(path) / LABELS_FILE).is_file():
        labels = json.dumps(f"{path}/{LABELS_FILE}")
        return (f"import json\nfrom transformers import {name}\n"
                f"{name}.from_pretrained({literal}, id2label=dict(enumerate(json.load(open({labels})))))")
    return f"from transformers import {name}\n{call.format(literal)}"


def untrained_head_note(task: str) -> str:
    """What the evaluation before training measured when the model's task head was new: its scores
    are those of random weights, not of what the pretrained model knows."""
    head = "classification head" if task == "classification" else "task head"
    return f"the new {head} is untrained"


def best_weights_note(finished) -> str:
    """After the final model's path, when it holds an earlier step's weights (the best evaluation's,
    under early stopping): which step, so the metrics beside it are not read as the last step's."""
    if finished.output_step is None or finished.output_step == finished.step:
        return ""
    return f" (the weights of step {finished.output_step}, the best evaluation)"


def before_after(before: dict[str, float], after: dict[str, float], task: str,
                 untrained_head: bool = False) -> list[tuple[str, list[str]]]:
    """(label, parts) lines comparing the evaluation before training (`before`, empty without one:
    then nothing) with the saved model's (`after`: RunFinished.output_metrics): a part per metric of
    either (`loss 0.6951 -> 0.6404`), then a line when the saved model's loss is higher than the one
    it started from had (a continued run, too high a learning rate: final/ is worse than its start),
    unless that start was an untrained head. The headless summary joins the parts on one line; the
    results panel, 80 columns at the smallest, puts each on a line of its own rather than cut one in two."""
    if not before:
        return []
    if after:
        names = [*after, *(n for n in before if n not in after)]
        lines = [("before -> after", [f"{n} {_shown(before, n)} -> {_shown(after, n)}" for n in names])]
    else:  # stopped before its first evaluation after step 0
        lines = [("before training", [format_metrics({n: v}) for n, v in before.items()])]
    if untrained_head:
        lines.append(("before", [untrained_head_note(task)]))
    elif after.get("loss", -math.inf) > before.get("loss", math.inf):  # a head it started with: its loss counts
        lines.append(("worse", ["eval loss above the model's before training",
                                "a lower optim.lr or fewer epochs may keep what it knew"]))
    return lines


def _shown(metrics: dict[str, float], name: str) -> str:
    return format_metric(metrics[name], name) if name in metrics else "-"


def draft_summary(config: RunConfig, trainable_share: float | None,
                  launch_warnings: list[str]) -> list[tuple[str, RenderableType]]:
    """(label, value) rows describing what Start would train, with a word where LoRA's learning rate
    looks too low (core.lora.lr_advice) and under compute each of `launch_warnings` (Session's). Paths
    lose their start, not their file name, where the row would not fit its line."""
    optim, schedule, evals = config.optim, config.schedule, config.eval
    length = f"{schedule.max_steps} steps" if schedule.max_steps else f"{schedule.epochs:g} epoch(s)"
    warmup = (f"warmup {schedule.warmup_steps} steps" if schedule.warmup_steps
              else f"warmup {100 * schedule.warmup_ratio:g}%")
    share = (f"{format_share(trainable_share)} of parameters" if trainable_share is not None
             else "known once the model is loaded")
    rules = f" + {len(config.freeze.rules)} rule(s)" if config.freeze.rules else ""
    patience = f" · early stop after {evals.patience} evaluations without progress" if evals.patience else ""
    before = "before training, then " if evals.before_training else ""
    return [
        ("model", TailPath(config.model.name_or_path, f"  ({config.task})")),
        ("data", TailPath(config.data.train, f" · format {config.data.format} · max length {config.data.max_length}")),
        ("trainable", f"{share} · freeze preset {config.freeze.preset}{rules}"),
        *([("LoRA", lora_summary(config.lora))] if config.lora.enabled else []),
        *([("", Text(f"! {advice}", "yellow"))] if (advice := lr_advice(config)) else []),
        ("optimizer", f"AdamW lr {optim.lr:g} · batch {optim.batch_size} x {optim.grad_accum} · "
                      f"{regulariser(config)} · clip {optim.max_grad_norm:g}"),
        ("schedule", f"{length} · {schedule.scheduler} · {warmup}"),
        ("evaluate", f"{before}{when_evaluated(config)} · metric {evals.metric}{patience}"),
        ("checkpoint", f"{when_checkpointed(config)}{checkpoint_clock(config)} · keep {config.checkpoint.keep_last}"),
        ("compute", compute_summary(config)),
        *(("", Text(f"! {warning}", "yellow")) for warning in launch_warnings),
        ("output", TailPath(f"{config.output.runs_dir}/{config.output.run_name or '<time>-<model>'}",
                            f" · seed {config.seed}")),
    ]


def lora_summary(lora) -> str:
    """The adapters Start would train: rank, scale, targets and the variants on, so that a run
    that trains adapters says so before it starts (the trainable share alone does not)."""
    parts = [f"r {lora.r} · alpha {lora.alpha:g} · {', '.join(lora.targets)}"]
    parts += [f"dropout {lora.dropout:g}"] if lora.dropout else []
    parts += [name for name, on in (("DoRA", lora.use_dora), ("rsLoRA", lora.use_rslora)) if on]
    parts += ["4-bit base (QLoRA)"] if lora.quantize == "4bit" else []
    parts += ["merged export too"] if lora.merge_on_export else []
    return " · ".join(parts)


def compute_summary(config: RunConfig) -> str:
    """Where and how the run computes: precision, devices, processes, gradient checkpointing."""
    compute = config.compute
    processes = f" · {compute.nproc} processes ({compute.distributed})" if compute.nproc > 1 else ""
    checkpointing = " · gradient checkpointing" if compute.gradient_checkpointing else ""
    return f"precision {config.precision} · devices {compute.devices}{processes}{checkpointing}"


def uses_l2sp(config: RunConfig) -> bool:
    """Whether the run regularises with L2-SP, which replaces weight decay (core.l2sp.L2SP.for_run)."""
    return config.optim.l2sp_alpha > 0 or config.optim.l2sp_beta > 0


def regulariser(config: RunConfig) -> str:
    """What pulls the weights: weight decay (towards zero), or L2-SP, which replaces it (core.l2sp)."""
    optim = config.optim
    if uses_l2sp(config):
        return f"L2-SP alpha {optim.l2sp_alpha:g} beta {optim.l2sp_beta:g} (replaces weight decay)"
    return f"weight decay {optim.weight_decay:g}"


RATE_SPAN_S = 10.0
"""Training time over which the shown throughput is averaged."""


class SmoothedRate:
    """Tokens/s and samples/s over the last RATE_SPAN_S seconds of training, from the engine's step
    reports. A report's rates cover only the few steps since the previous one, and swung between 3
    and 814 samples/s from one to the next on a real run; each is weighted here by the training time
    it covers (its elapsed_s after the previous report's), so a report of a few short steps moves the
    shown rate little. The raw rates stay in the events (events.jsonl)."""

    def __init__(self, span_s: float = RATE_SPAN_S) -> None:
        self.span_s = span_s
        self._reports: deque[tuple[float, float, float, float]] = deque()
        """(elapsed_s, seconds covered, tokens/s, samples/s) of the reports within the span."""

    def reset(self) -> None:
        self._reports.clear()

    def add(self, e: StepMetrics) -> None:
        covered = e.elapsed_s - self._reports[-1][0] if self._reports else 0.0
        if covered < 0:  # a run started over (a resume): its clock is not the one before
            self._reports.clear()
            covered = 0.0
        self._reports.append((e.elapsed_s, covered, e.tokens_per_s, e.samples_per_s))
        while len(self._reports) > 1 and self._reports[1][0] <= e.elapsed_s - self.span_s:
            self._reports.popleft()

    def _mean(self, index: int) -> float | None:
        if not self._reports:
            return None
        weight = sum(r[1] for r in self._reports)
        if weight <= 0:
            return self._reports[-1][index]
        return sum(r[1] * r[index] for r in self._reports) / weight

    @property
    def tokens_per_s(self) -> float | None:
        return self._mean(2)

    @property
    def samples_per_s(self) -> float | None:
        return self._mean(3)


def format_eta(e: StepMetrics) -> str:
    """The ETA of a step report; `~` marks one that holds a guess for work not timed yet (the first
    evaluation, its generations, a save: core.eta)."""
    return ("~" if e.eta_estimated and e.eta_s is not None else "") + format_duration(e.eta_s)
