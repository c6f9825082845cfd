"""The run's deliverable: `final/`, a save_pretrained folder that loads with the Auto classes and
`transformers.pipeline` like any model from the Hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_final(model, tokenizer, out_dir: Path) -> Path:
    """Save model and tokenizer atomically (temporary folder, then rename) into `out_dir`."""
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    generation = getattr(model, "generation_config", None)
    if generation is not None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
