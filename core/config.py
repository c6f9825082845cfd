"""The RunConfig: everything a fine-tune needs, as pydantic models that round-trip through YAML.

The screens of the app edit a draft RunConfig, the headless CLI reads one from YAML, and the engine
only ever sees a validated one. Unknown keys are errors (a typo must not silently fall back to a
default), and every validation error names the dotted field path and what is allowed. The sections
live in core.config_sections; this module is where the rest of the code gets them, with the whole
config and the functions that read, write and override it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from core.config_errors import validation_error
from core.config_sections import (
    DEMO_MINILM,
    DEMO_MODELS,
    DEMO_TINY_LM,
    METRICS_BY_TASK,
    TASKS,
    CheckpointConfig,
    ColumnMap,
    DataConfig,
    DataFormat,
    EvalConfig,
    FreezeConfig,
    FreezeRule,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    Precision,
    ScheduleConfig,
    Task,
    _invalid,
    _Section,
    is_folder_name,
)
from core.config_compute import ComputeConfig
from core.config_yaml import read_config_file
from core.errors import UserError

__all__ = [  # the sections, re-exported: other modules import the config from here
    "DEMO_MINILM", "DEMO_MODELS", "DEMO_TINY_LM", "METRICS_BY_TASK", "TASKS", "CheckpointConfig", "ColumnMap",
    "ComputeConfig", "DataConfig", "DataFormat", "EvalConfig", "FreezeConfig", "FreezeRule", "LoraConfig",
    "ModelConfig", "OptimConfig", "OutputConfig", "Precision", "ScheduleConfig", "Task", "is_folder_name",
    "RunConfig", "parse_config", "load_config", "config_to_dict", "save_config", "apply_overrides", "set_dotted",
    "precision_problem", "example_config",
]


class RunConfig(_Section):
    """A whole fine-tune: what `sft-tui train CONFIG.yaml` runs and the app edits."""

    task: Task = "classification"
    """causal-lm: supervised fine-tuning with the loss on answers only; classification: a new
    sequence-classification head sized from the labels in the data."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed for initialisation, shuffling, dropout and the validation split."""
    precision: Precision = "auto"
    """auto uses bf16 on GPUs that support it and fp32 elsewhere. On a CPU with AMX (Intel Xeon 4th
    generation and newer) bf16 trained MiniLM 1.3x faster at the same eval loss (BENCHMARKS.md)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        allowed = METRICS_BY_TASK[self.task]
        if self.eval.metric not in allowed:
            raise _invalid("metric_for_task",
                           f"eval.metric {self.eval.metric!r} is not available for task {self.task!r}; "
                           f"use one of: {', '.join(allowed)}",
                           f"set eval.metric to one of: {', '.join(allowed)}", field="eval.metric")
        if self.data.packing and self.task != "causal-lm":
            raise _invalid("packing_for_task", "data.packing only applies to task 'causal-lm'; set it to false",
                           "set data.packing: false (packing concatenates causal-LM rows)", field="data.packing")
        if self.freeze.unfreezing != "none" and self.compute.nproc > 1:
            raise _invalid("unfreezing_processes",
                           f"freeze.unfreezing {self.freeze.unfreezing!r} changes what trains during the run, which "
                           "DDP and FSDP fix when they start; it trains on one process",
                           "set freeze.unfreezing: none, or compute.nproc: 1", field="freeze.unfreezing")
        return self


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict (from YAML, the CLI or the app) into a RunConfig or raise UserError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, source, RunConfig) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config; syntax errors report the line, schema errors the field."""
    path = Path(path)
    return parse_config(read_config_file(path), source=str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict of a config, every field included."""
    return config.model_dump(mode="json")


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the config as YAML, in field order, so it reads like the example. Whole or not at all
    (core.atomic.replace_text): a crash while ctrl+s overwrote a user's config left it empty. A
    symbolic link (a config kept in a dotfiles repository) is written through, not replaced."""
    from core.atomic import replace_text

    replace_text(Path(path).resolve(), yaml.safe_dump(config_to_dict(config), sort_keys=False), durable=True)


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
        try:
            set_dotted(data, key, value)
        except UserError as err:
            raise UserError(f"--set {err.message}", err.hint) from None
    return parse_config(data, source="config with --set overrides")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the field `dotted` ("optim.lr") of a config dict (config_to_dict's form) to `value`.

    The one way a config is changed by field name: the CLI's --set and the app's forms both set
    fields here and then validate the whole dict with parse_config. Raises UserError when a part
    before the last is not a section, suggesting the section meant."""
    node = data
    *sections, leaf = dotted.split(".")
    for part in sections:
        if not isinstance(node.get(part), dict):
            names = [name for name, child in node.items() if isinstance(child, dict)]
            close = difflib.get_close_matches(part, names, n=1)
            raise UserError(f"{dotted}: {part!r} is not a config section",
                            (f"did you mean {close[0]}? " if close else "") + f"sections: {', '.join(names)}")
        node = node[part]
    node[leaf] = value


def precision_problem(precision: str, cuda_available: bool, bf16_gpus: bool = True) -> UserError | None:
    """Why `precision` cannot train on this machine, or None. fp16 mixed precision needs a CUDA GPU
    (accelerate refuses it on a CPU); bf16 needs GPUs that compute in it (compute capability 8.0,
    Ampere, or newer: `bf16_gpus`) when the run trains on GPUs, and runs on any CPU; auto and fp32 run
    anywhere. The engine raises it before loading anything, and the app lists it among the problems
    that keep Start off."""
    if precision == "fp16" and not cuda_available:
        return UserError("precision fp16 needs a CUDA GPU", "use precision: bf16 or fp32 on this machine",
                         {"precision": "fp16 needs a CUDA GPU"})
    if precision == "bf16" and cuda_available and not bf16_gpus:
        return UserError("precision bf16 needs a GPU of compute capability 8.0 (Ampere) or newer",
                         "use precision: fp16 (with loss scaling) or fp32 on these GPUs",
                         {"precision": "bf16 is not supported by the GPUs of this run"})
    return None


def example_config(task: Task) -> RunConfig:
    """The demo config of a task: the pretrained MiniLM on sentiment, or a tiny LM on instructions."""
    if task == "classification":
        return RunConfig(
            task="classification",
            model=ModelConfig(name_or_path=DEMO_MINILM),
            data=DataConfig(train="demo:sentiment", max_length=64),
            optim=OptimConfig(lr=5e-5, batch_size=16),
            schedule=ScheduleConfig(epochs=1, warmup_ratio=0.1),
            eval=EvalConfig(every_steps=15, metric="accuracy"),
            checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        )
    return RunConfig(
        task="causal-lm",
        model=ModelConfig(name_or_path=DEMO_TINY_LM),
        data=DataConfig(train="demo:instructions", max_length=96),
        optim=OptimConfig(lr=3e-3, batch_size=16, weight_decay=0.0),
        schedule=ScheduleConfig(epochs=4, warmup_ratio=0.05, scheduler="cosine"),
        eval=EvalConfig(every_steps=40, metric="loss", num_samples=3, max_new_tokens=24),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
    )
