"""The class names a classification adapter keeps beside it (labels.json), in class-id order.

An adapter folder holds no model config, and must not hold one: transformers would load the folder
as a whole model. Loaded over its base, the adapter got a head of the base's default size (2) with
the names LABEL_0, LABEL_1; these names give the head its size and the predictions their names.
No torch here: the app's load snippet reads them before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

LABELS_FILE = "labels.json"


def write_labels(folder: Path, model) -> None:
    """Write `model`'s class names into `folder` when it is a sequence classifier."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        id2label = model.config.id2label
        (folder / LABELS_FILE).write_text(json.dumps([id2label[i] for i in range(len(id2label))]), encoding="utf-8")


def adapter_labels(folder: str | Path) -> list[str] | None:
    """The class names a classification adapter folder keeps; None for any other folder."""
    path = Path(folder) / LABELS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
