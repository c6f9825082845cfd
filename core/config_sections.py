"""The sections of a RunConfig (core.config): one pydantic model per part of a fine-tune, with the
names, choices and limits its fields allow.

Every section rejects unknown keys (a typo must not silently fall back to a default) and validates
assignments, so the app's form and `--set` overrides get the same checks as a YAML file.
"""

from __future__ import annotations

import difflib
from pathlib import PureWindowsPath
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from core.unshown import holds_controls

Task = Literal["causal-lm", "classification"]
TASKS: tuple[str, ...] = get_args(Task)
"""The task names, for command-line choices and the app's task picker."""
DataFormat = Literal["auto", "text-label", "prompt-completion", "chat", "text"]
Preset = Literal["all", "head-only", "top-n", "freeze-embeddings"]
Unfreezing = Literal["none", "gradual", "lp-ft"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal["linear", "cosine", "constant"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")
"""The allowed values of output.report_to; core.trackers builds one sink per name."""

METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy", "f1"),
    "causal-lm": ("loss", "perplexity"),
}
"""Evaluation metrics each task reports, i.e. the allowed values of eval.metric."""


DEMO_MINILM = "demo:minilm"
DEMO_TINY_LM = "demo:tiny-lm"
DEMO_MODELS: dict[str, Task] = {DEMO_MINILM: "classification", DEMO_TINY_LM: "causal-lm"}
"""The bundled demo models (core.models resolves them) and the task each one is made for."""

MAX_EPOCHS = 10_000
"""Upper bound of schedule.epochs: far beyond any real run, and small enough that a step count stays an int."""


_YES_NO = TypeAdapter(bool)
"""Reads true/false, yes/no, on/off as YAML and pydantic do."""


def _invalid(kind: str, message: str, hint: str, field: str | None = None) -> PydanticCustomError:
    """A validation error whose hint (what to do) travels to UserError.hint through the error's context,
    and, for a check of the whole config, the dotted field it is about (to UserError.fields)."""
    return PydanticCustomError(kind, message, {"hint": hint} if field is None else {"hint": hint, "field": field})


class _Section(BaseModel):
    """Base of every section: unknown keys are rejected, assignments are validated, and a float must be
    finite (`.inf` or `.nan` in YAML would otherwise train, or compare as "best", without a word)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """No path, name or pattern holds a terminal control character or a direction mark: none is
        ever meant, and a config may come from anyone, to be shown where text is edited as it is
        (the app's input boxes) or printed."""
        if holds_controls(value):
            raise PydanticCustomError("control_characters", "holds a control character (an escape sequence?)",
                                      {"hint": "write it without control characters"})
        return value


class ModelConfig(_Section):
    name_or_path: str = DEMO_MINILM
    """A local folder with config.json, a Hugging Face hub id (read from the local cache when
    offline), or a bundled demo model: `demo:minilm` (pretrained all-MiniLM-L6-v2) or `demo:tiny-lm`
    (a tiny Llama-style model built on the fly)."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author; true in a file counts
    only with `sft-tui train --trust-remote-code` or the box ticked in the app (SECURITY.md)."""
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

    @field_validator("text", "label", "prompt", "completion", "messages")
    @classmethod
    def _one_role_per_column(cls, column: str | None, info: ValidationInfo) -> str | None:
        """No two roles name the same column: text and label in one column trained a classifier that
        reads its own label (100% accuracy, nothing learnt), a prompt that is its completion teaches
        copying. Roles of different formats are never read together, but a column cannot sensibly be
        both either, and one rule is clearer than a table of pairs. Checked against the roles
        validated before this one (on assignment: all the others), so the later role is the one marked."""
        if column is None:
            return column
        for other, name in info.data.items():
            if name == column and other != info.field_name:
                raise _invalid("shared_column",
                               f"data.columns.{other} and data.columns.{info.field_name} both name column {column!r}: "
                               "each role needs a column of its own",
                               f"point data.columns.{info.field_name} at another column, or clear the role the data's "
                               "format does not read (empty: detected from the column names)")
        return column


class DataConfig(_Section):
    train: str = "demo:sentiment"
    """Training data: a .jsonl/.json/.csv/.tsv/.parquet file, a folder of them, a `datasets` name
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
    group_by_length: Literal["auto"] | bool = "auto"
    """Batch rows of similar length together so less compute is spent on padding. It changes which
    rows share a step: on short-text classification it cost 1-2% of eval loss against random
    batches. auto: random batches (Trainer's default order) for a classifier whose blocks skip the
    padding themselves (compute.unpadded_encoder: BERT-family encoders), where grouping would buy
    a third more speed at that cost; grouped for everything else (core.unpadded.groups_by_length)."""
    packing: bool = False
    """Causal LM only: pack whole rows into blocks of up to `max_length` tokens, each row attending
    only to itself (its own position ids), so batches carry little padding (core.packing)."""
    chat_template: str | None = None
    """Jinja chat template used when the tokenizer has none (chat format)."""

    @field_validator("group_by_length", mode="before")
    @classmethod
    def _auto_or_yes_no(cls, value: Any) -> Any:
        """One message for a value that is neither: pydantic would give one per part of the union."""
        try:
            return value if value == "auto" else _YES_NO.validate_python(value)
        except ValueError:
            raise _invalid("auto_or_bool", "Input should be auto, true or false",
                           "set data.group_by_length to auto, true or false") from None


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
    """Starting point: all (train everything), head-only (the head and what only feeds it: the
    final norm, a pooler), top-n (top N blocks plus those), freeze-embeddings. The rules below are
    applied after the preset; later rules win."""
    top_n: int = Field(2, ge=0)
    """Number of top transformer blocks that train under the top-n preset."""
    rules: list[FreezeRule] = Field(default_factory=list)
    """Extra ordered rules; later ones win."""
    unfreezing: Unfreezing = "none"
    """When what the map trains starts training (core.unfreezing): none (all of it from the first
    step); gradual (ULMFiT: the head and the modules above the blocks first, then one more block from
    the top every `unfreeze_every` steps, the embeddings last); lp-ft (linear probing, then fine-tuning:
    the head and the modules above the blocks for `unfreeze_every` steps, then the whole map)."""
    unfreeze_every: int = Field(0, ge=0)
    """Optimizer steps between two unfreezing stages; 0: one epoch."""


class OptimConfig(_Section):
    lr: float = Field(5e-5, gt=0.0, lt=1.0)
    """Base learning rate of AdamW (multiplied per group by lr_scale)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay; never applied to biases and norm weights. Not applied under L2-SP,
    which replaces it."""
    l2sp_alpha: float = Field(0.0, ge=0.0)
    """L2-SP (Li et al., 2018): each optimizer step moves every trained pretrained weight towards its
    starting value by lr x alpha x (weight - start), decoupled from Adam's moments as weight decay
    is. 0 turns it off. Keeps a reference copy of those weights (counted in the memory estimate)."""
    l2sp_beta: float = Field(0.0, ge=0.0)
    """L2-SP's pull towards zero for new weights (a new task head, LoRA adapters): lr x beta x
    weight per step; biases and norm weights are left alone, as weight decay leaves them."""
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
    epochs: float = Field(3.0, gt=0.0, le=MAX_EPOCHS)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides epochs when set."""


class EvalConfig(_Section):
    every_steps: int = Field(0, ge=0)
    """Evaluate every N optimizer steps; 0 evaluates at the end of each epoch."""
    metric: str = "loss"
    """Metric that picks the best checkpoint and drives early stopping: loss, accuracy, f1
    (classification) or perplexity (causal LM)."""
    before_training: bool = True
    """Evaluate once before the first step (step 0), so the results show every metric before -> after;
    a classification model's new head is untrained then, and the results say so."""
    patience: int = Field(0, ge=0)
    """Stop after this many evaluations without improvement; 0 turns early stopping off. With it on,
    final/ holds the best evaluated model (its checkpoint is kept), as Trainer's early stopping loads it.
    Only the planned evaluations count: one asked for while the run trains (evaluate now) only shows."""
    batch_size: int | None = Field(None, ge=1)
    """Rows per evaluation batch; None: the training micro-batch times up to 4 (classification) or 2
    (causal LM), as memory without autograd allows (core.evaluate.default_batch_size)."""
    num_samples: int = Field(3, ge=0)
    """Causal LM: greedy sample generations from validation prompts at each evaluation."""
    max_new_tokens: int = Field(32, ge=1)
    """Causal LM: length limit of each sample generation."""


class CheckpointConfig(_Section):
    every_steps: int = Field(0, ge=0)
    """Save a checkpoint every N optimizer steps; 0 saves after each evaluation."""
    every_minutes: float = Field(30, ge=0)
    """Also save once this many minutes have passed since the last checkpoint (0: never), so that a
    crash loses at most that much: a one-epoch run otherwise saves none before its final model."""
    keep_last: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep; older ones are deleted, but the best (eval.metric).
    From 2 up, a disk that holds this many (not one more) is enough: the oldest then goes before a
    new one is written."""


LoraQuantize = Literal["none", "4bit"]


class LoraConfig(_Section):
    """LoRA through peft: small trained adapters beside frozen base weights, instead of (or with)
    the freeze map's full training. Targets, presets and how it combines with the freeze map: core.lora."""

    enabled: bool = False
    """Train LoRA adapters; the base model stays frozen except what the freeze map trains beyond
    its catch-all rule (a new classification head, a top-n preset's blocks), which trains in full."""
    r: int = Field(16, ge=1, le=4096)
    """Rank of each adapter: its parameters grow linearly with it."""
    alpha: float = Field(32.0, gt=0.0)
    """Scale of the adapter's update: alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter's input (peft's default, 0). Any dropout draws a mask over every
    adapted layer's input and keeps a masked copy for backward: at 0.05 LoRA ran 1.3-1.5x slower
    than full fine-tuning on CPU (BENCHMARKS.md, LoRA)."""
    targets: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1)
    """Modules that get adapters: the presets `attention` (the attention blocks' projections) and
    `all-linear` (every linear layer but the output head), or module patterns as in freeze rules (a
    path, a glob, `re:...`) that cover the linear and embedding layers at and below them."""
    use_dora: bool = False
    """DoRA: adapt the weights' direction and magnitude apart (needs a peft that has it)."""
    use_rslora: bool = False
    """rsLoRA: scale by alpha / sqrt(r), which keeps high ranks stable (needs a peft that has it)."""
    quantize: LoraQuantize = "none"
    """QLoRA: `4bit` loads the frozen base in 4-bit NF4 through bitsandbytes; needs a CUDA GPU and
    bitsandbytes installed."""
    merge_on_export: bool = False
    """Also write `final/merged/`: the adapters merged into the base weights, a model that loads
    with AutoModel* without peft. `final/` itself always holds the adapter and the tokenizer."""

    @property
    def quantized(self) -> bool:
        """QLoRA: LoRA on, over a frozen base loaded in 4 bits."""
        return self.enabled and self.quantize != "none"

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_text(cls, targets: Any) -> Any:
        """Targets typed as one line (the app's form, `--set lora.targets=attention`): a YAML list
        (`[attention, '*.mlp']`, as the form shows the value), else comma-separated names."""
        if not isinstance(targets, str):
            return targets
        if targets.lstrip().startswith("["):
            try:
                return yaml.safe_load(targets)
            except yaml.YAMLError:
                return targets  # pydantic's own list error
        return [part.strip() for part in targets.split(",") if part.strip()]


def is_folder_name(name: str) -> bool:
    """One plain folder name: not empty or dots, no separator, NUL or drive. Checked by the config
    and again by core.runs, which creates and deletes folders by this name."""
    return name.strip(" .") != "" and not any(c in name for c in "/\\\0") and not PureWindowsPath(name).drive


class OutputConfig(_Section):
    runs_dir: str = "runs"
    """Folder that holds one sub-folder per run."""
    run_name: str | None = None
    """Name of the run folder; None makes one from the time and the model name."""
    save_final: bool = True
    """Write `final/` (save_pretrained of model and tokenizer) at the end of the run."""
    report_to: list[str] = Field(default_factory=list)
    """Trackers that get a copy of the metrics besides events.jsonl: tensorboard (event files in
    <run>/tensorboard/, for `tensorboard --logdir runs`) and wandb (offline unless WANDB_MODE is set)."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, names: Any) -> Any:
        """A single name is a list of one (`report_to: tensorboard`); an unknown name is an error that
        lists the trackers, not a run that silently logs nowhere."""
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list):
            return names  # pydantic's own list error
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), TRACKERS, n=1)
            raise _invalid("unknown_tracker", f"{unknown[0]!r} is not a tracker; use any of: "
                           f"{', '.join(TRACKERS)}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                           f"set output.report_to to a list of: {', '.join(TRACKERS)}, e.g. [tensorboard]")
        return list(dict.fromkeys(names))

    @field_validator("run_name")
    @classmethod
    def _one_folder_name(cls, name: str | None) -> str | None:
        """The run folder is runs_dir/run_name: a path here (`..`, `/abs`, `a/b`) would put the run, and
        overwrite files, outside runs_dir."""
        if name is None:
            return name
        if not is_folder_name(name):
            raise _invalid("run_name", "must be a single folder name, not a path or dots",
                           "set output.run_name to a plain folder name such as my-run (no /, \\, . or ..)")
        return name
