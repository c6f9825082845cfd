"""What a run's final/ folder holds besides a save_pretrained model, named here without torch so
that the app reads it before any model is loaded (core.export writes it).

A LoRA run's final/ is the adapter; `merged/` in it, with lora.merge_on_export, the plain model.
A classification adapter keeps its class names beside it (labels.json), in class-id order: an
adapter folder holds no model config, and must not hold one (transformers would load the folder as
a whole model), so loaded over its base it got a head of the base's default size (2) with the names
LABEL_0, LABEL_1. These names give the head its size and the predictions their names.
"""

from __future__ import annotations

import json
from pathlib import Path

MERGED = "merged"
LABELS_FILE = "labels.json"
ADAPTER_CONFIG = "adapter_config.json"
"""What peft's save_pretrained writes beside an adapter: a final/ that holds one is a LoRA run's."""


def write_labels(folder: Path, model) -> None:
    """Write `model`'s class names into `folder` when it is a sequence classifier."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        id2label = model.config.id2label
        (folder / LABELS_FILE).write_text(json.dumps([id2label[i] for i in range(len(id2label))]), encoding="utf-8")


def adapter_labels(folder: str | Path) -> list[str] | None:
    """The class names a classification adapter folder keeps; None for any other folder."""
    path = Path(folder) / LABELS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
