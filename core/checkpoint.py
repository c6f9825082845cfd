"""Atomic checkpoints and exact resume, with nothing in a run folder able to execute code.

A checkpoint holds everything the next step depends on: the weights (safetensors), optimizer and
scheduler state, every RNG, and the data position (epoch and step within it), then a manifest of
file sizes written last (core.manifest). It is written through `core.atomic.atomic_folder`, so a
crash mid-write leaves the previous checkpoint as the newest complete one.

Run folders travel between machines and users, so loading one must never run code: weights and
RNG states are safetensors, the training state is JSON, and the optimizer and scheduler states are
read with `torch.load(weights_only=True)`, which refuses any pickle that names a Python callable.
A checkpoint that fails any of this is reported by file and the previous one is tried.

A model that FSDP shards across processes is saved and loaded through core.full_state: its full
weights and optimizer state are gathered onto rank 0, which writes the same files one process
writes, and a resume scatters what rank 0 reads back into the shards. Every process therefore calls
save_checkpoint and load_checkpoint at the same point of a run.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from core.atomic import atomic_folder
from core.disk import DISK_FAULTS, remedy, write_errno
from core.errors import UserError
from core.full_state import STATE, agree, by_name, gather, is_sharded, is_writer, scatter
from core.manifest import PREFIX, checkpoint_problem, list_checkpoints, step_of, write_manifest
from core.runs import RunPaths, how_to_go_on

log = logging.getLogger("core.engine")

STATE_FILE = "state.json"


@dataclass
class TrainState:
    """Where a run stands between optimizer steps, exactly as a checkpoint's state.json holds it:
    with the weights, optimizer, scheduler and RNG states, this is all a resume needs to continue as
    if never stopped. The field names are the JSON keys, so renaming one breaks resuming older runs."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Epoch of the last step taken."""
    step_in_epoch: int = 0
    """Steps taken in that epoch: a resume skips that many steps of its batch plan."""
    epoch_progress: float = 0.0
    """Epochs done, fractions included, as the events report it."""
    tokens_seen: int = 0
    best: float | None = None
    """The best value of eval.metric so far; None before the first evaluation."""
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    before_metrics: dict[str, float] = field(default_factory=dict)
    """The evaluation before the first step (eval.before_training), kept for the end's before -> after."""
    before_untrained_head: bool = False
    """That evaluation measured a new, untrained task head, which the end's before -> after says."""
    bad_evals: int = 0
    """Evaluations in a row without a better eval.metric, for early stopping."""
    elapsed_s: float = 0.0
    """Training time up to the checkpoint, pauses left out: the clock continues from it on resume."""
    micro_batch_size: int = 0
    """Rows per micro-batch after out-of-memory halvings (core.engine); 0 until the first, which
    means optim.batch_size. A resume keeps it, so it does not run out of memory again."""


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every RNG as tensors plus JSON metadata: a safetensors file, never a pickle."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    meta = {"python": json.dumps([version, list(internal), gauss])}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
        meta["numpy"] = json.dumps([kind, int(pos), int(has_gauss), float(cached)])
    except ImportError:
        pass
    return tensors, meta


def _set_rng_state(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in tensors:
        import numpy as np

        kind, pos, has_gauss, cached = json.loads(meta["numpy"])
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _needed_mb(weights: dict[str, torch.Tensor], moments: dict[Any, dict[str, Any]]) -> int:
    """About what one checkpoint takes: the weights plus the optimizer's state tensors."""
    size = sum(t.numel() * t.element_size() for t in weights.values())
    size += sum(t.numel() * t.element_size() for s in moments.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return max(1, size >> 20)


def _is_adapter_run(model: torch.nn.Module) -> bool:
    """A peft-wrapped model (lora.enabled): its frozen base is the base model's, unchanged."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


class _Gathered:
    """Weights gathered from shards, as safetensors' save_model reads a model (its state_dict), so
    that they are written as the unsharded model is: the same names, tied duplicates dropped alike."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.weights = weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)  # save_model deletes the duplicates from what it gets


def _save_weights(model: torch.nn.Module, path: Path, gathered: dict[str, torch.Tensor] | None) -> None:
    """The model's weights (`gathered`: those of a sharded model); of a LoRA run only what trains
    (adapters, modules_to_save), since the frozen base reloads from the model itself: a 7B base
    would make each checkpoint 14 GB."""
    if not _is_adapter_run(model):
        save_model(model if gathered is None else _Gathered(gathered), str(path))
        return
    trained = {name: (p.detach() if gathered is None else gathered[name]).contiguous()
               for name, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(path), metadata={"format": "pt", "trained_only": "1"})


def _check_adapters(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA checkpoint's tensors, which must name every trained parameter and only parameters of
    this model (one from another target set or rank fails here, not later)."""
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trained:
        odd = sorted(set(tensors) ^ trained)
        raise ValueError(f"its adapters do not fit this model's LoRA settings ({len(odd)} tensors differ, "
                         f"e.g. {odd[0]})")
    return tensors


def _load_weights(model: torch.nn.Module, path: Path, device: str) -> None:
    """Load what _save_weights wrote into a model that is not sharded."""
    if not _is_adapter_run(model):
        load_model(model, str(path), device=device)
        return
    model.load_state_dict(_check_adapters(model, load_file(str(path), device=device)), strict=False)


def _read(folder: Path, name: str, load: Callable[[Path], Any]) -> Any:
    """`load(folder / name)`; any failure to parse the file is the same news, that the file is bad:
    a UserError naming it."""
    try:
        return load(folder / name)
    except Exception as err:  # noqa: BLE001 - any failure to parse a file is the same news
        reason = "it holds Python objects, which sft-tui never unpickles" \
            if "weights_only" in str(err) else f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        raise UserError(f"{folder / name} cannot be loaded ({reason})") from None


_COUNTS = ("step", "epoch", "step_in_epoch", "epoch_progress", "tokens_seen", "best_step", "bad_evals",
          "elapsed_s", "micro_batch_size")
"""TrainState's fields that count something, so are never below zero (best_step: when not None)."""


def _train_state(path: Path) -> TrainState:
    """A checkpoint's state.json, each field of its type and possible: a run folder may come from
    anyone, and a `"step": "20"` failed the resumed run far from the file (in the progress bar)
    instead of making this checkpoint unusable, so that the resume takes the one before it.
    Raises ValueError naming the first wrong field."""
    try:
        state = TypeAdapter(TrainState).validate_json(path.read_bytes(), strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(" ".join([*map(str, first["loc"]), first["msg"].lower()])) from None
    for name in _COUNTS:
        value = getattr(state, name)
        if value is not None and not value >= 0:  # NaN too
            raise ValueError(f"{name} is {value}")
    if state.step != step_of(path.parent) or state.step_in_epoch > state.step:
        raise ValueError(f"step {state.step} with step_in_epoch {state.step_in_epoch} cannot be {path.parent.name}")
    return state


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def _load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Rank 0 reads the full weights and optimizer state (None: the weights alone) and every process
    takes its shards of them. A file rank 0 cannot read fails the checkpoint on every process alike,
    so all of them go on to the one before it together."""
    weights, optim_state, problem = {}, {}, None
    adapters = _is_adapter_run(model)
    if is_writer():
        try:
            weights = _read(path, "model.safetensors",
                            lambda p: _check_adapters(model, load_file(str(p))) if adapters else load_file(str(p)))
            if optimizer is not None:
                optim_state = _read(path, "optimizer.pt", lambda p: by_name(_torch_load(p), model, optimizer))
        except UserError as err:
            problem = err.message
    if problem := agree(problem):
        raise UserError(problem)
    scatter(model, weights, optimizer, optim_state, strict=not adapters)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """The weights of checkpoint `path` alone, into the model that trains (the best checkpoint's,
    for final/). Every process calls it."""
    if is_sharded(model):
        _load_sharded(path, model, None)
    else:
        device = str(next(model.parameters()).device)
        _read(path, "model.safetensors", lambda p: _load_weights(model, p, device))


def save_checkpoint(
    checkpoints_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    keep_last: int,
) -> Path:
    """Write `checkpoints_dir/step-N` (N: state.step) atomically, then delete all but the newest
    `keep_last` and the best one (state.best_step); return that folder.

    Every process of a run calls it at the same step: a sharded model's state is gathered onto
    rank 0 (a collective), and rank 0 alone writes. A full disk or a file-size limit becomes a
    UserError that says how much room a checkpoint needs; the previous checkpoints stay as they were."""
    step = state.step
    final = checkpoints_dir / f"{PREFIX}{step}"
    weights, optim_state = gather(model, optimizer, _is_adapter_run(model)) if is_sharded(model) else (None, None)
    if not is_writer():
        return final
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _make_room(final, keep_last, state.best_step)
    try:
        with atomic_folder(final) as tmp:
            _save_weights(model, tmp / "model.safetensors", weights)
            torch.save(optimizer.state_dict() if optim_state is None else optim_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            tensors, meta = _rng_state()
            save_file(tensors, str(tmp / "rng.safetensors"), metadata=meta)
            (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1), encoding="utf-8")
            write_manifest(tmp, step)
    except Exception as err:
        needed = _needed_mb(weights or model.state_dict(), optim_state[STATE] if optim_state else optimizer.state)
        code = write_errno(err)
        if code is None and shutil.disk_usage(checkpoints_dir).free < needed << 20:
            code = errno.ENOSPC  # torch.save's zip writer says "unexpected pos" or "file write failed", no errno
        if code not in DISK_FAULTS:
            raise
        kept = list_checkpoints(checkpoints_dir)
        raise UserError(
            f"cannot write checkpoint {final}: {DISK_FAULTS[code]} (a checkpoint needs about {needed:,} MB, and "
            f"the run needs room for at least {max(keep_last, 2)} of them)",
            f"{remedy(code)} under {checkpoints_dir}, then {how_to_go_on(RunPaths(checkpoints_dir.parent), bool(kept))}"
            + (f"; the last complete checkpoint is {kept[-1].name}" if kept else ""),
        ) from None
    for old in list_checkpoints(checkpoints_dir)[:-keep_last]:
        if step_of(old) != state.best_step:  # eval.metric picks it: the one checkpoint worth more than the newest
            shutil.rmtree(old, ignore_errors=True)
    return final


def _make_room(new: Path, keep_last: int, best_step: int | None) -> None:
    """Remove the checkpoints that the save of `new` removes once it is complete, before it is written, when
    the disk lacks room for one more beside them: the run then needs room for keep_last checkpoints
    rather than keep_last + 1, so a disk that holds what the config keeps finishes the run in place.
    With keep_last 1 the one to go is the newest, and it stays until its successor is complete: a
    failed write must leave a checkpoint to resume from. A checkpoint takes what the newest took."""
    kept = list_checkpoints(new.parent)
    if keep_last < 2 or len(kept) < keep_last:
        return
    size = sum(f.stat().st_size for f in kept[-1].iterdir() if f.is_file())
    if shutil.disk_usage(new.parent).free > size + size // 20:  # 5%: a file system's own blocks
        return
    for old in kept[:-(keep_last - 1)]:
        if step_of(old) != best_step:
            log.warning("the disk has no room for %s beside the %d checkpoints kept: %s, which it replaces, is "
                        "removed before it is written rather than after", new.name, len(kept), old.name)
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG in place; return the saved training state.
    Every process of a run calls it (a sharded model's shards are scattered from rank 0).

    Raises UserError naming the first file that is incomplete, corrupt or not safely loadable."""
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(problem)
    state = _read(path, STATE_FILE, _train_state)
    if is_sharded(model):
        _load_sharded(path, model, optimizer)
    else:
        device = str(next(model.parameters()).device)
        _read(path, "model.safetensors", lambda p: _load_weights(model, p, device))
        optimizer.load_state_dict(_read(path, "optimizer.pt", _torch_load))
    scheduler.load_state_dict(_read(path, "scheduler.pt", _torch_load))
    _read(path, "rng.safetensors", _set_rng_state)
    return state


def load_latest(checkpoints_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                warn: Callable[[str], None]) -> tuple[Path, TrainState]:
    """Load the newest checkpoint that loads, newest first; each one skipped is reported through
    `warn` with the file that broke it. Raises UserError when none loads."""
    candidates = sorted((p for p in checkpoints_dir.iterdir() if p.is_dir() and step_of(p) is not None),
                        key=step_of, reverse=True) if checkpoints_dir.is_dir() else []
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, model, optimizer, scheduler)
        except UserError as err:
            problems.append(err.message)
            warn(f"checkpoint {path.name} is unusable: {err.message}; trying the one before it")
    raise UserError(
        f"{checkpoints_dir.parent} has no checkpoint to resume from"
        + (": " + "; ".join(problems) if problems else ""),
        how_to_go_on(RunPaths(checkpoints_dir.parent), resumable=False),
    )
