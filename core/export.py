"""The run's deliverable: `final/`, a save_pretrained folder that loads with the Auto classes and
`transformers.pipeline` like any model from the Hub."""

from __future__ import annotations

from pathlib import Path

from core.atomic import atomic_folder


def save_final(model, tokenizer, out_dir: Path) -> Path:
    """Save model and tokenizer into `out_dir` through atomic_folder, so a crash mid-save leaves no
    half-written `final/` for a user or `pipeline` to load. The generation config takes the
    tokenizer's pad token, so generating from the saved model pads as training did."""
    generation = getattr(model, "generation_config", None)
    if generation is not None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
