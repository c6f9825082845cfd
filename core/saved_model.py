"""What a model folder says it was saved as, from its config.json alone: the classes it was saved
from and so the task of its head, read without transformers (the model screen proposes a task with
it before anything loads; core.models loads the model itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ARCHITECTURE_TASKS = (("ForSequenceClassification", "classification"), ("ForCausalLM", "causal-lm"),
                      ("LMHeadModel", "causal-lm"))
"""Suffixes of transformers class names (config.json's `architectures`) and the task of their head:
GPT2LMHeadModel is the older spelling of ...ForCausalLM."""


@dataclass(frozen=True)
class Checkpoint:
    """What a model's config.json says it was saved as, read without transformers."""

    architectures: list[str]
    """The classes it was saved from, e.g. ["LlamaForCausalLM"]; [] for a config that names none."""
    num_labels: int | None
    """The classes of a saved classification head (its id2label), else None."""

    @property
    def task(self) -> str | None:
        """The task its head was made for; None for a bare base model (BertModel) or an unknown head."""
        for architecture in self.architectures:
            for suffix, task in ARCHITECTURE_TASKS:
                if architecture.endswith(suffix):
                    return task
        return None


def read_checkpoint(name_or_path: str) -> Checkpoint | None:
    """The checkpoint a local folder or a hub id in the local cache holds, from its config.json
    alone (a file read: the model screen proposes a task with it before anything loads). None when
    there is no readable config.json there; demos are the caller's to know."""
    if name_or_path.startswith("demo:"):
        return None
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        file = local / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError

        try:
            found = try_to_load_from_cache(name_or_path, "config.json")
        except HFValidationError:
            return None
        if not isinstance(found, str):
            return None
        file = Path(found)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        architectures = [str(name) for name in config.get("architectures") or []]
        labels = config.get("id2label")
    except (OSError, ValueError, AttributeError):
        return None
    task = Checkpoint(architectures, None).task
    return Checkpoint(architectures, len(labels) if task == "classification" and isinstance(labels, dict) else None)
