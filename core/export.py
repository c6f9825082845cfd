"""The run's deliverable: `final/`, a save_pretrained folder that loads with the Auto classes and
`transformers.pipeline` like any model from the Hub; for a LoRA run, the adapter (which loads with
`PeftModel.from_pretrained` over the base) and, with lora.merge_on_export, `final/merged/`: the
adapters merged into the base weights, a plain model that loads without peft.

Every process of a run calls save_final: a model that FSDP shards is gathered onto rank 0 first
(core.full_state), which alone writes."""

from __future__ import annotations

import logging
from pathlib import Path

from core.atomic import atomic_folder
from core.final_layout import MERGED, write_labels
from core.full_state import gather, is_sharded, is_writer


def save_final(model, tokenizer, out_dir: Path, merge: bool | None = None) -> Path:
    """Save model and tokenizer into `out_dir` through atomic_folder, so a crash mid-save leaves no
    half-written `final/` for a user or `pipeline` to load. The generation config takes the
    tokenizer's pad token, so generating from the saved model pads as training did.

    A peft model saves its adapter; `merge` True also writes the merged model into `merged/`, and
    None takes lora.merge_on_export from the run's config.yaml beside `out_dir` (the engine passes
    none). Merging happens in place, after the adapter is saved: the run is over, and a copy of the
    model would double the memory at the very end of it. A model that FSDP shards holds its base
    weights spread over the processes, so rank 0 merges the saved adapter into a fresh copy of the
    base on the CPU (`_merge_saved`) instead."""
    from peft import PeftModel

    is_peft = isinstance(model, PeftModel)
    sharded = is_sharded(model)
    weights = gather(model, trained_only=is_peft)[0] if sharded else None
    if not is_writer():
        return out_dir
    generation = getattr(model, "generation_config", None)
    if generation is not None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    if is_peft and merge is None:
        merge = _merge_requested(out_dir)
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if is_peft:
            write_labels(tmp, model.get_base_model())
        if is_peft and merge:
            merged = _merge_saved(model, tmp) if sharded else model.merge_and_unload()
            merged.save_pretrained(tmp / MERGED)
            tokenizer.save_pretrained(tmp / MERGED)
    return out_dir


def _merge_saved(model, adapter_dir: Path):
    """The merged model of a sharded peft `model` whose adapter was just saved in `adapter_dir`: its
    base loaded again on the CPU, with the run's own config (a classification head sized from the
    labels), the adapter and any fully trained module (modules_to_save) put on it by peft, merged."""
    import copy

    import torch
    from peft import PeftModel

    base = model.get_base_model()
    source = model.peft_config[model.active_adapter].base_model_name_or_path
    logging.getLogger("core.export").info(
        "lora.merge_on_export: merging the adapter into a copy of %s on the CPU (FSDP spreads the run's own)", source)
    fresh = type(base).from_pretrained(source, config=copy.deepcopy(base.config), dtype=torch.float32,
                                       ignore_mismatched_sizes=True, use_kernels=False)  # as core.models loads
    return PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload()


def _merge_requested(out_dir: Path) -> bool:
    """lora.merge_on_export of the run whose `final/` is `out_dir` (False without a config there)."""
    from core.config import load_config

    config_file = out_dir.parent / "config.yaml"
    return config_file.is_file() and load_config(config_file).lora.merge_on_export
