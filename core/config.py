"""The RunConfig: everything a fine-tune needs, as pydantic models that round-trip through YAML.

The screens of the app edit a draft RunConfig, the headless CLI reads one from YAML, and the engine
only ever sees a validated one. Unknown keys are errors (a typo must not silently fall back to a
default), and every validation error names the dotted field path and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import UserError

Task = Literal["causal-lm", "classification"]
DataFormat = Literal["auto", "text-label", "prompt-completion", "chat", "text"]
Preset = Literal["all", "head-only", "top-n", "freeze-embeddings"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal["linear", "cosine", "constant"]

METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy", "f1"),
    "causal-lm": ("loss", "perplexity"),
}
"""Evaluation metrics each task reports, i.e. the allowed values of eval.metric."""


class _Section(BaseModel):
    """Base of every section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(_Section):
    name_or_path: str = "demo:minilm"
    """A local folder with config.json, a Hugging Face hub id (read from the local cache when
    offline), or a bundled demo model: `demo:minilm` (pretrained all-MiniLM-L6-v2) or `demo:tiny-lm`
    (a tiny Llama-style model built on the fly)."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author."""
    revision: str | None = None
    """Hub branch, tag or commit to load; None takes the default branch."""


class ColumnMap(_Section):
    """Which dataset column plays which role. Empty means: detect it from the column names."""

    text: str | None = None
    """Input text (classification) or the whole training text (plain-text format)."""
    label: str | None = None
    """Class label for classification: strings or integers."""
    prompt: str | None = None
    """Prompt for prompt/completion SFT; its tokens get no loss."""
    completion: str | None = None
    """Answer for prompt/completion SFT; the loss is computed on these tokens."""
    messages: str | None = None
    """List of {role, content} chat turns; the loss is on assistant turns only."""


class DataConfig(_Section):
    train: str = "demo:sentiment"
    """Training data: a .jsonl/.json/.csv/.parquet file, a folder of them, a `datasets` name
    (read from the local cache when offline), or `demo:sentiment` / `demo:instructions`."""
    validation: str | None = None
    """Validation data in the same forms; None carves `val_ratio` off the training data."""
    subset: str | None = None
    """Configuration (subset) name of a `datasets` dataset."""
    train_split: str = "train"
    """Split of a named dataset used for training."""
    validation_split: str | None = None
    """Split of a named dataset used for validation (e.g. `validation` or `test`)."""
    format: DataFormat = "auto"
    """Row format: text-label (classification), prompt-completion, chat, text; auto detects it."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Column mapping; unset roles are detected from the column names."""
    val_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of the training rows held out for validation when no validation data is given."""
    max_length: int = Field(256, ge=8)
    """Tokens per example; longer rows are truncated (and clipped to the model's positions)."""
    max_rows: int | None = Field(None, ge=1)
    """Use at most this many training rows (quick experiments)."""
    group_by_length: bool = True
    """Batch rows of similar length together so less compute is spent on padding."""
    packing: bool = False
    """Causal LM only: concatenate rows into full `max_length` blocks (no padding at all)."""
    chat_template: str | None = None
    """Jinja chat template used when the tokenizer has none (chat format)."""


class FreezeRule(_Section):
    match: str
    """A module path (`bert.encoder.layer.5`), a glob (`*.layer.1[0-1].*`) or a regex (`re:...`).
    It covers the matched modules and every parameter below them."""
    train: bool = True
    """Whether the matched parameters are trained."""
    lr_scale: float = Field(1.0, gt=0.0)
    """Multiplier on the base learning rate for the matched parameters."""


class FreezeConfig(_Section):
    preset: Preset = "all"
    """Starting point: all (train everything), head-only, top-n (top N blocks plus head),
    freeze-embeddings. The rules below are applied after the preset; later rules win."""
    top_n: int = Field(2, ge=0)
    """Number of top transformer blocks that train under the top-n preset."""
    rules: list[FreezeRule] = Field(default_factory=list)
    """Extra ordered rules; later ones win."""


class OptimConfig(_Section):
    lr: float = Field(5e-5, gt=0.0, lt=1.0)
    """Base learning rate of AdamW (multiplied per group by lr_scale)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay; never applied to biases and norm weights."""
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    """AdamW beta1."""
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    """AdamW beta2."""
    eps: float = Field(1e-8, gt=0.0)
    """AdamW epsilon."""
    max_grad_norm: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this; 0 turns clipping off."""
    batch_size: int = Field(16, ge=1)
    """Rows per micro-batch on each device."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step."""


class ScheduleConfig(_Section):
    scheduler: Scheduler = "linear"
    """Learning-rate schedule after warmup (transformers.get_scheduler)."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the total steps spent warming up; ignored when warmup_steps > 0."""
    warmup_steps: int = Field(0, ge=0)
    """Warmup length in optimizer steps."""
    epochs: float = Field(3.0, gt=0.0)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides epochs when set."""

    def total_steps(self, steps_per_epoch: int) -> int:
        """max_steps when set, else the epochs' worth of optimizer steps, rounded up. The engine
        and the app's step preview both count with this."""
        return self.max_steps or math.ceil(self.epochs * steps_per_epoch)

    def warmup_for(self, total_steps: int) -> int:
        """warmup_steps when set, else warmup_ratio of the total steps."""
        return self.warmup_steps or round(self.warmup_ratio * total_steps)


class EvalConfig(_Section):
    every_steps: int = Field(0, ge=0)
    """Evaluate every N optimizer steps; 0 evaluates at the end of each epoch."""
    metric: str = "loss"
    """Metric that picks the best checkpoint and drives early stopping: loss, accuracy, f1
    (classification) or perplexity (causal LM)."""
    patience: int = Field(0, ge=0)
    """Stop after this many evaluations without improvement; 0 turns early stopping off."""
    batch_size: int | None = Field(None, ge=1)
    """Rows per evaluation batch; None uses twice the training batch size."""
    num_samples: int = Field(3, ge=0)
    """Causal LM: greedy sample generations from validation prompts at each evaluation."""
    max_new_tokens: int = Field(32, ge=1)
    """Causal LM: length limit of each sample generation."""


class CheckpointConfig(_Section):
    every_steps: int = Field(0, ge=0)
    """Save a checkpoint every N optimizer steps; 0 saves after each evaluation."""
    keep_last: int = Field(2, ge=1)
    """How many checkpoints to keep; older ones are deleted."""


class OutputConfig(_Section):
    runs_dir: str = "runs"
    """Folder that holds one sub-folder per run."""
    run_name: str | None = None
    """Name of the run folder; None makes one from the time and the model name."""
    save_final: bool = True
    """Write `final/` (save_pretrained of model and tokenizer) at the end of the run."""


class RunConfig(_Section):
    """A whole fine-tune: what `sft-tui train CONFIG.yaml` runs and the app edits."""

    task: Task = "classification"
    """causal-lm: supervised fine-tuning with the loss on answers only; classification: a new
    sequence-classification head sized from the labels in the data."""
    seed: int = 42
    """Seed for initialisation, shuffling, dropout and the validation split."""
    precision: Precision = "auto"
    """auto uses bf16 on GPUs that support it and fp32 elsewhere."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        allowed = METRICS_BY_TASK[self.task]
        if self.eval.metric not in allowed:
            raise ValueError(
                f"eval.metric {self.eval.metric!r} is not available for task {self.task!r}; "
                f"use one of: {', '.join(allowed)}"
            )
        if self.data.packing and self.task != "causal-lm":
            raise ValueError("data.packing only applies to task 'causal-lm'; set it to false")
        return self


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: the dotted field path, what was given and what is allowed."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `sft-tui init` writes an example with every field)"
        elif "input" in e and e["type"] != "missing" and e["loc"]:  # a whole-config check: no dump
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return f"invalid {source}:\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict (from YAML, the CLI or the app) into a RunConfig or raise UserError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source), "fix the fields named above") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config; syntax errors report the line, schema errors the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist", "write one with `sft-tui init`") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"YAML syntax error in {path}{where}: {problem}", "fix the YAML at that line") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of sections (task, model, data, ...)")
    return parse_config(data, source=str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict of a config, every field included."""
    return config.model_dump(mode="json")


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the config as YAML, in field order, so it reads like the example."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` strings (values parsed as YAML scalars) and re-validate."""
    data = config_to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not of the form section.key=value", "e.g. --set optim.lr=3e-5")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise UserError(f"--set {key}: {part!r} is not a config section")
            node = node[part]
        node[parts[-1]] = value
    return parse_config(data, source="config with --set overrides")


def example_config(task: Task) -> RunConfig:
    """The demo config of a task: the pretrained MiniLM on sentiment, or a tiny LM on instructions."""
    if task == "classification":
        return RunConfig(
            task="classification",
            model=ModelConfig(name_or_path="demo:minilm"),
            data=DataConfig(train="demo:sentiment", max_length=64),
            optim=OptimConfig(lr=5e-5, batch_size=16),
            schedule=ScheduleConfig(epochs=1, warmup_ratio=0.1),
            eval=EvalConfig(every_steps=15, metric="accuracy"),
            checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        )
    return RunConfig(
        task="causal-lm",
        model=ModelConfig(name_or_path="demo:tiny-lm"),
        data=DataConfig(train="demo:instructions", max_length=96),
        optim=OptimConfig(lr=3e-3, batch_size=16, weight_decay=0.0),
        schedule=ScheduleConfig(epochs=4, warmup_ratio=0.05, scheduler="cosine"),
        eval=EvalConfig(every_steps=40, metric="loss", num_samples=3, max_new_tokens=24),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
    )


def commented_yaml(config: RunConfig) -> str:
    """YAML of the config with each field's docstring as a comment above it (`sft-tui init`)."""
    out: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if field.description:
                out.extend(f"{pad}# {line.strip()}" for line in field.description.split("\n") if line.strip())
            if isinstance(value, BaseModel):
                out.append(f"{pad}{name}:")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump({name: _plain(value)}, sort_keys=False, default_flow_style=False)
                out.extend(pad + line for line in dumped.rstrip("\n").split("\n"))

    emit(config, 0)
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
