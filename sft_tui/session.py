"""The draft run the screens edit, what has been loaded for it, and what keeps it from starting.

Plain Python, no widgets: the screens read and change it on the UI thread, workers only return new
values that a screen then stores here. `version` grows on every change so that widgets showing a
summary (the draft bar, the freeze summary) know when to redraw. `problems()` is the one list of
what would make the engine fail at once: the draft bar, step 5 and its Start key all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from core.config import RunConfig, config_to_dict, parse_config, set_dotted
from core.errors import UserError
from core.freeze import FreezeSummary, effective_rules, rule_problems, summarize_freeze, training_problem
from core.launch import Gpus, launch_problems, launch_warnings, local_gpus, run_gpus
from core.lora import preview as lora_preview
from core.lora import quantize_problem
from core.memory import NO_ADAPTERS, Adapters, format_bytes
from core.runs import RunPaths, occupied_problem, run_root
from sft_tui.draft_memory import DraftMemory, draft_memory, draft_overflow, trained_map


def untrusted(config: RunConfig, source: str) -> tuple[RunConfig, str | None]:
    """`config`, read from `source` (a file, a run folder), with model.trust_remote_code off, and
    what to tell the user when the file had it on: the box on step 1, ticked by the user, is the
    approval a file cannot give (core.trust), and the app loads a model as soon as a config opens."""
    if not config.model.trust_remote_code:
        return config, None
    model = config.model.model_copy(update={"trust_remote_code": False})
    return config.model_copy(update={"model": model}), (
        f"{source} asks to run the Python code that {model.name_or_path} ships (model.trust_remote_code): "
        "it is off until you tick 'trust remote code' on step 1, once you have read that code")


@dataclass
class ModelInfo:
    """A model's structure (on the meta device, no weights) and tokenizer, for one task and label set."""

    description: Any  # core.models.ModelDescription
    skeleton: Any  # the model on the meta device, for freeze-map matching
    tokenizer: Any
    task: str
    labels: list[str] | None
    max_positions: int | None


@dataclass(frozen=True)
class FreezePreview:
    """What the draft's freeze map does to the model: under LoRA, the map under LoRA with peft's
    adapters counted (core.lora.preview wraps a copy of the meta skeleton), else the map itself."""

    rules: list
    summary: FreezeSummary | None
    """None when a rule or a LoRA target cannot be used (`error` says why)."""
    error: UserError | None = None
    lora: Any = None
    """core.lora.LoraPlan (targets, modules_to_save) under LoRA, else None."""
    adapters: Adapters = NO_ADAPTERS
    """The sizes of the adapters peft adds, which the memory estimate counts (core.memory)."""


@dataclass(frozen=True)
class LoadError:
    """Why the model or the data did not load, for the settings they were loaded with."""

    message: str
    hint: str
    source: tuple
    """What the load read (see `_load_source`): the error stands until those settings change."""


BATCHING_ONLY = {"group_by_length"}
"""data fields that only decide which rows share a batch, in the engine: the prepared rows do not
depend on them, so a change keeps them loaded (step 4 edits group_by_length)."""


def _load_source(kind: str, config: RunConfig) -> tuple:
    """The settings a model or data load depends on (the data is tokenized with the model's tokenizer)."""
    model = (config.model, config.task)
    return model if kind == "model" else (*model, config.data.model_copy(update=dict.fromkeys(BATCHING_ONLY)))


@dataclass
class Session:
    config: RunConfig
    config_path: Path | None = None
    model: ModelInfo | None = None
    data: Any = None  # core.data.PreparedData of the current data settings
    invalid: dict[str, str] = field(default_factory=dict)
    """Form fields whose typed value does not validate: dotted field -> message. Start stays off."""
    load_errors: dict[str, LoadError] = field(default_factory=dict)
    """The failed "model" or "data" load of the current settings: shown in place by the screens, and
    a problem that keeps Start off until a load succeeds or the settings change."""
    cuda: bool | None = None
    """Whether torch sees a CUDA GPU; None until the app's warm-up has imported torch."""
    gpus: Gpus = field(default_factory=local_gpus)
    """The GPUs the run may use (read through NVML, without torch), for the device checks."""
    in_process: bool = False
    """Runs train in a thread of the app (`--in-process`): one process, on the app's own devices."""
    version: int = 0
    kept: RunConfig | None = None
    """The draft as last opened, saved, loaded or started: what quitting would not lose."""
    _share: tuple | None = field(default=None, repr=False, compare=False)
    _trained: tuple | None = field(default=None, repr=False, compare=False)
    _memory: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kept = self.config

    def touch(self) -> None:
        self.version += 1

    def keep(self) -> None:
        """The draft is kept somewhere now (a YAML file, a run folder): quitting loses nothing."""
        self.kept = self.config

    @property
    def unsaved(self) -> bool:
        """Edits since the draft was last kept, valid or not: steps 1-4's work that quitting would lose."""
        return self.config != self.kept or bool(self.invalid)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply dotted-path changes ({"optim.lr": 3e-5}) through pydantic; raises UserError if invalid
        (its `fields` say which field is wrong and why) and then changes nothing."""
        self.replace_config(self._with(changes))

    def check(self, dotted: str, value: Any) -> tuple[Any, str | None]:
        """What the config would make of `value` at field `dotted` ("data.max_length"), without
        changing the draft: the validated value and None, or None and why it is not valid (the words
        a config file with that value would get)."""
        try:
            return reduce(getattr, dotted.split("."), self._with({dotted: value})), None
        except UserError as err:
            return None, field_problem(err, dotted)

    def _with(self, changes: dict[str, Any]) -> RunConfig:
        data = config_to_dict(self.config)
        for dotted, value in changes.items():
            set_dotted(data, dotted, value)
        return parse_config(data)

    def replace_config(self, config: RunConfig, path: Path | None = None) -> None:
        """Take a new config; what was loaded for the old model or data is dropped if they changed.
        A loaded config replaces whatever invalid text the forms held."""
        model_changed = _load_source("model", config) != _load_source("model", self.config)
        data_changed = _load_source("data", config) != _load_source("data", self.config)
        if path is not None:
            self.invalid.clear()
        self.config, self.config_path = config, path or self.config_path
        if path is not None:
            self.keep()
        if model_changed:
            self.model = None
        if data_changed:
            self.data = None
        self.load_errors = {kind: error for kind, error in self.load_errors.items()
                            if error.source == _load_source(kind, config)}
        self.touch()

    def is_current(self, kind: str, config: RunConfig) -> bool:
        """Whether a `kind` load of `config` is about the current draft (its settings have not
        changed since the load started)."""
        return _load_source(kind, config) == _load_source(kind, self.config)

    def load_failed(self, kind: str, config: RunConfig, message: str, hint: str) -> bool:
        """Keep the error of a `kind` load of `config`; False (nothing kept) when the settings have
        changed since that load started: the error is not about the current draft."""
        if not self.is_current(kind, config):
            return False
        self.load_errors[kind] = LoadError(message, hint, _load_source(kind, config))
        return True

    def load_succeeded(self, kind: str) -> None:
        self.load_errors.pop(kind, None)

    def problems(self) -> dict[str, str]:
        """Why the engine would fail at once if the run started now, as {where: what} (empty when it
        can start): fields that do not validate, a model or data that did not load, a freeze map that
        cannot be applied, devices, processes, a precision or QLoRA this machine lacks."""
        problems = dict(self.invalid)
        for kind, error in self.load_errors.items():  # with its hint, as step 2 shows it: step 5 is where Start is
            problems[kind] = f"did not load: {error.message}" + (f"; {error.hint}" if error.hint else "")
        if error := rule_problems(list(self.config.freeze.rules)):
            problems.update(error.fields)
        if (preview := self.freeze_preview) is not None:
            error = training_problem(preview.summary) if preview.summary is not None else preview.error
            for where, what in error.fields.items() if error is not None else ():
                problems.setdefault(where, f"{what}; {error.hint}")
        for error in [*launch_problems(self.config, self.gpus, self.in_process), quantize_problem(self.config.lora, bool(self.gpus.indices))]:
            if error is not None:
                (where, what), = error.fields.items()
                problems[where] = f"{what}; {error.hint}"
        if (occupied := self._occupied_run_folder()) is not None:
            problems["output.run_name"] = occupied
        return problems

    def _occupied_run_folder(self) -> str | None:
        """Why output.run_name cannot be a new run: its folder already holds one (the check Start
        makes, core.runs.occupied_problem). A draft taken from a run (`sft-tui attach`, a run's
        config.yaml) names that run, and step 5 said "ready to start" before Start was refused.
        Cheap enough for every keystroke: nothing without a run_name, else a stat of final/ and of
        the checkpoints' manifests (keep_last of them)."""
        output = self.config.output
        if not output.run_name:
            return None
        try:
            error = occupied_problem(RunPaths(run_root(output.runs_dir, output.run_name)))
        except (UserError, OSError):  # not a folder name (the field says so), or unreadable: Start's to say
            return None
        if error is None:
            return None
        return (f"{error.message}; set another output.run_name on step 4 (empty: a fresh name from the time), "
                "or resume that run with R")

    def launch_warnings(self) -> list[str]:
        """What the run's processes would do other than the config asks (FSDP on the CPU, of a model
        too small to shard; more CPU processes than cores), and a peak memory more than their device
        holds: said before Start, as the dry run says them."""
        summary = self.freeze_summary
        warnings = launch_warnings(self.config, not run_gpus(self.config, self.gpus),
                                   lambda: summary.total_params if summary is not None else None)
        if (memory := self.memory) is not None and (over := draft_overflow(self, memory)) is not None:
            warnings.append(f"estimated peak memory {format_bytes(memory.estimate.total)}: more than {over.where} "
                            f"({format_bytes(over.total)}), see step 3")
        return warnings

    @property
    def memory(self) -> DraftMemory | None:
        """The draft's memory estimate (sft_tui.draft_memory), once its model is known and its freeze
        map valid. Steps 3 and 5 ask on every change of the session (10 ms for an 80-block model),
        so it is kept until the draft, its model or its data change, and what the map trains (its
        rules matched against every tensor) as long as the freeze preview it comes from."""
        preview = self.freeze_preview
        if preview is None or preview.summary is None:
            return None
        if self._trained is None or self._trained[0] is not preview:
            self._trained = (preview, trained_map(self))
        trained, cached = self._trained[1], self._memory
        if cached is None or cached[0] is not trained or cached[1] is not self.data or \
                (cached[2], cached[3]) != (self.config, self.cuda):
            self._memory = cached = (trained, self.data, self.config, self.cuda, draft_memory(self, trained))
        return cached[4]

    @property
    def trainable_share(self) -> float | None:
        """Share of trainable parameters under the current freeze map, once the model is known."""
        summary = self.freeze_summary
        return summary.trainable_share if summary is not None else None

    @property
    def freeze_summary(self) -> FreezeSummary | None:
        """What the current freeze map (with LoRA's adapters when enabled) does to the model, once
        the model is known and while every rule and LoRA target can be used."""
        preview = self.freeze_preview
        return preview.summary if preview is not None else None

    @property
    def freeze_preview(self) -> FreezePreview | None:
        """The freeze map's effect on the model, once the model is known.

        The draft bar asks on every change of the session (every keystroke in a form), and matching
        the rules walks every parameter tensor (under LoRA peft wraps a copy of the skeleton too), so
        the answer is kept until the model, the freeze map or the LoRA settings change."""
        if self.model is None:
            return None
        key = (self.config.freeze, self.config.lora)
        cached = self._share
        if cached is None or cached[0] is not self.model or cached[1] != key:
            self._share = cached = (self.model, key, self._preview_freeze())
        return cached[2]

    def _preview_freeze(self) -> FreezePreview:
        config, description = self.config, self.model.description
        rules = effective_rules(config.freeze, description)
        try:
            if config.lora.enabled:
                summary, plan, adapters = lora_preview(self.model.skeleton, description, config)
                return FreezePreview(plan.rules, summary, lora=plan, adapters=adapters)
            return FreezePreview(rules, summarize_freeze(self.model.skeleton, rules))
        except UserError as err:  # an invalid regex in a loaded config, a LoRA target matching nothing
            return FreezePreview(rules, None, err)


def field_problem(error: UserError, dotted: str) -> str:
    """What a config error says about field `dotted`: its own problem, else every problem by field,
    else the whole message."""
    if dotted in error.fields:
        return error.fields[dotted]
    return "\n".join(f"{name}: {problem}" for name, problem in error.fields.items()) or error.message
