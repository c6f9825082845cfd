"""The RunConfig: everything a fine-tune needs, as pydantic models that round-trip through YAML.

The screens of the app edit a draft RunConfig, the headless CLI reads one from YAML, and the engine
only ever sees a validated one. Unknown keys are errors (a typo must not silently fall back to a
default), and every validation error names the dotted field path and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path, PureWindowsPath
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

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


MAX_EPOCHS = 10_000
"""Upper bound of schedule.epochs: far beyond any real run, and small enough that a step count stays an int."""


def _invalid(kind: str, message: str, hint: str) -> PydanticCustomError:
    """A validation error whose hint (what to do) travels to UserError.hint through the error's context."""
    return PydanticCustomError(kind, message, {"hint": hint})


class _Section(BaseModel):
    """Base of every section: unknown keys are rejected, assignments are validated, and a float must be
    finite (`.inf` or `.nan` in YAML would otherwise train, or compare as "best", without a word)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


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
    epochs: float = Field(3.0, gt=0.0, le=MAX_EPOCHS)
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


class RunConfig(_Section):
    """A whole fine-tune: what `sft-tui train CONFIG.yaml` runs and the app edits."""

    task: Task = "classification"
    """causal-lm: supervised fine-tuning with the loss on answers only; classification: a new
    sequence-classification head sized from the labels in the data."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
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
            raise _invalid("metric_for_task",
                           f"eval.metric {self.eval.metric!r} is not available for task {self.task!r}; "
                           f"use one of: {', '.join(allowed)}",
                           f"set eval.metric to one of: {', '.join(allowed)}")
        if self.data.packing and self.task != "causal-lm":
            raise _invalid("packing_for_task", "data.packing only applies to task 'causal-lm'; set it to false",
                           "set data.packing: false (packing concatenates causal-LM rows)")
        return self


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: the dotted field path, what was given and what is allowed."""
    return _explain(err, source)[0]


def _explain(err: ValidationError, source: str) -> tuple[str, str]:
    """The message (one line per problem) and the hint (what to do about each) of a validation error."""
    lines, hints = [], []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg, hint = e["msg"].removeprefix("Value error, "), _hint(path, e)
        if e["type"] == "extra_forbidden":
            fields = _section_fields(e["loc"]) if err.title == RunConfig.__name__ else []
            close = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
            section = path.rpartition(".")[0]
            msg = f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"
            hint = (f"rename it to {section + '.' if section else ''}{close[0]}" if close else
                    f"remove it, or use one of the fields of {section or 'the top level'}: {', '.join(fields)}"
                    if fields else "remove it, or check its spelling: `sft-tui init` writes an example")
        elif "input" in e and e["type"] != "missing" and e["loc"]:  # a whole-config check: no dump
            msg = f"{msg} (got {_short(e['input'])})"
        lines.append(f"{path}: {msg}")
        if hint not in hints:
            hints.append(hint)
    return f"invalid {source}:\n  " + "\n  ".join(lines), "; ".join(hints)


def _hint(path: str, e: dict) -> str:
    """What to do about one pydantic error: the validator's own hint, else one made from what is allowed."""
    if hint := (e.get("ctx") or {}).get("hint"):
        return hint
    kind = e["type"]
    if kind == "missing":
        return f"add {path}"
    if kind == "string_type":
        return f"set {path} to text (in YAML, quote a value that would read as a number or true/false)"
    if kind in ("bool_type", "bool_parsing"):
        return f"set {path} to true or false"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"write {path} as a section: its fields as `key: value` lines indented below it"
    expected = e["msg"].removeprefix("Input should be ")
    if expected != e["msg"]:
        if kind != "literal_error":  # "a valid integer, unable to parse ...": the part before the why
            expected = expected.split(", ")[0]
        return f"set {path} to {'a value ' if expected.startswith(('greater', 'less')) else ''}{expected}"
    return f"fix {path}"


def _section_fields(loc: tuple) -> list[str]:
    """The field names of the section that holds the field at `loc`, to suggest the one meant."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list of sections (freeze.rules)
            continue
        field = model.model_fields.get(part)
        sections = [t for t in (field.annotation, *get_args(field.annotation))
                    if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict (from YAML, the CLI or the app) into a RunConfig or raise UserError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(*_explain(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last one silently, so `lr` set twice would lose the first value without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears a second time (first at line {first.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_OPENED = {"a flow sequence": "[...] list", "a flow mapping": "{...} mapping", "a quoted scalar": "quoted text"}
"""PyYAML's names for what a bracket or quote opens, in the words of someone writing a config."""


def _yaml_error(path: Path, text: str, err: yaml.YAMLError) -> UserError:
    """A YAML error at the line to look at: where an unclosed bracket, quote or flow began (PyYAML's
    context mark), else where the parser stopped (its problem mark, e.g. a bad indentation)."""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: no marks, a position
        line = text.count("\n", 0, err.position) + 1
        return UserError(f"YAML syntax error in {path} at line {line}: {err.reason} (#x{err.character:04x})",
                         f"delete that character from line {line}")
    problem = getattr(err, "problem", None) or str(err)
    context, opened, stopped = (getattr(err, name, None) for name in ("context", "context_mark", "problem_mark"))
    if not (context or "").startswith(("while parsing a flow", "while scanning a")):
        opened = None  # e.g. "while parsing a block mapping": the whole file, not the line to fix
    mark = opened or stopped
    if mark is None:
        return UserError(f"YAML syntax error in {path}: {problem}", "fix the YAML; `sft-tui init` writes an example")
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    if opened is not None:
        noun = context.removeprefix("while parsing ").removeprefix("while scanning ")
        at = ("the end of the file" if stopped is None or stopped.index >= len(text)
              else f"line {stopped.line + 1}, column {stopped.column + 1}")
        problem = f"in the {_OPENED.get(noun, noun.partition(' ')[2])} that starts there, {problem} (at {at})"
    if "'\\t'" in problem:
        hint = "indent with spaces: YAML does not allow tabs"
    elif "a second time" in problem:
        hint = "keep one of the two, and delete the other"
    elif "for the tag" in problem:
        hint = f"remove the `!` tag on line {mark.line + 1}: a config holds plain values"
    else:
        hint = f"fix line {mark.line + 1}: indent with spaces, close every bracket and quote, write `key: value`"
    return UserError(f"YAML syntax error in {path} at {where}: {problem}", hint)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config; syntax errors report the line, schema errors the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist",
                        "check the path, or write one with `sft-tui init`") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder", "pass a YAML file (`sft-tui init` writes one)") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}",
                        "check the path and its permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(path, text, err) from None
    if data is None:
        raise UserError(f"config file {path} holds no settings (it is empty or only comments)",
                        "write the settings into it; `sft-tui init` writes an example with every field")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (task, model, data, ...), "
                        f"not a {type(data).__name__}",
                        "write `section:` lines with `key: value` fields below; `sft-tui init` writes an example")
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
                sections = [name for name, value in node.items() if isinstance(value, dict)]
                close = difflib.get_close_matches(part, sections, n=1)
                raise UserError(f"--set {key}: {part!r} is not a config section",
                                (f"did you mean {close[0]}? " if close else "") + f"sections: {', '.join(sections)}")
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
