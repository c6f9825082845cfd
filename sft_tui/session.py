"""The draft run the screens edit, and what has been loaded for it.

Plain Python, no widgets: the screens read and change it on the UI thread, workers only return new
values that a screen then stores here. `version` grows on every change so that widgets showing a
summary (the draft bar, the freeze summary) know when to redraw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig, config_to_dict, parse_config


@dataclass
class ModelInfo:
    """A model's structure (on the meta device, no weights) and tokenizer, for one task and label set."""

    description: Any  # core.models.ModelDescription
    skeleton: Any  # the model on the meta device, for freeze-map matching
    tokenizer: Any
    task: str
    labels: list[str] | None
    max_positions: int | None


@dataclass
class Session:
    config: RunConfig
    config_path: Path | None = None
    model: ModelInfo | None = None
    data: Any = None  # core.data.PreparedData of the current data settings
    invalid: dict[str, str] = field(default_factory=dict)
    """Form fields whose typed value does not validate: dotted field -> message. Start stays off."""
    version: int = 0
    _share: tuple | None = field(default=None, repr=False, compare=False)

    def touch(self) -> None:
        self.version += 1

    def update(self, changes: dict[str, Any]) -> None:
        """Apply dotted-path changes ({"optim.lr": 3e-5}) through pydantic; raises UserError if invalid
        and then changes nothing."""
        data = config_to_dict(self.config)
        for dotted, value in changes.items():
            node = data
            *sections, leaf = dotted.split(".")
            for section in sections:
                node = node[section]
            node[leaf] = value
        self.replace_config(parse_config(data))

    def replace_config(self, config: RunConfig, path: Path | None = None) -> None:
        """Take a new config; what was loaded for the old model or data is dropped if they changed.
        A loaded config replaces whatever invalid text the forms held."""
        model_changed = (config.model, config.task) != (self.config.model, self.config.task)
        data_changed = model_changed or config.data != self.config.data
        if path is not None:
            self.invalid.clear()
        self.config, self.config_path = config, path or self.config_path
        if model_changed:
            self.model = None
        if data_changed:
            self.data = None
        self.touch()

    def problems(self) -> list[str]:
        """Why the run cannot start now (empty when it can)."""
        return [f"{name}: {message}" for name, message in self.invalid.items()]

    @property
    def trainable_share(self) -> float | None:
        """Share of trainable parameters under the current freeze map, once the model is known.

        The draft bar asks on every change of the session (every keystroke in a form), and matching
        the rules walks every parameter tensor, so the answer is kept until the model or the freeze
        map changes."""
        if self.model is None:
            return None
        cached = self._share
        if cached is None or cached[0] is not self.model or cached[1] != self.config.freeze:
            self._share = cached = (self.model, self.config.freeze, self._compute_share())
        return cached[2]

    def _compute_share(self) -> float | None:
        from core.errors import UserError
        from core.freeze import effective_rules, summarize_freeze

        rules = effective_rules(self.config.freeze, self.model.description)
        try:
            return summarize_freeze(self.model.skeleton, rules).trainable_share
        except UserError:  # e.g. an invalid regex in a loaded config: the freeze screen explains it
            return None
