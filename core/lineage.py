"""Configs derived from a past run: a continuation that trains its finished weights further, and a
variant that starts again from its settings.

A continued run is a new run folder whose `model.name_or_path` is the parent's `final/`: that path
is the whole record of the lineage (core.run_info reads a run's parent back from it), so nothing
else needs to remember it, and the new run loads the finished weights like any local model.
Torch-free: the runs screen calls this on the UI thread.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.config import RunConfig, config_to_dict, load_config, parse_config, set_dotted
from core.errors import UserError
from core.final_layout import ADAPTER_CONFIG, MERGED
from core.run_info import RunInfo
from core.runs import CONTINUED, RunPaths

_CONTINUED_SUFFIX = re.compile(rf"{CONTINUED}\d*$")


def continue_problem(info: RunInfo) -> UserError | None:
    """Why the run cannot be continued (only a finished run with a final model can), or None."""
    where = f"run {info.name}"
    if info.live:
        return UserError(f"{where} is {info.state} now", "wait for it to finish, or attach to it to follow it")
    if info.state != "finished":
        return UserError(f"{where} did not finish ({info.state} at step {info.step})",
                         "resume it from its last checkpoint instead" if info.resumable
                         else "load its config to start it again")
    if not info.paths.final.is_dir():
        return UserError(f"{where} saved no final model: {info.paths.final} does not exist "
                         "(it ran with output.save_final false)",
                         "load its config, set output.save_final true and train it again")
    if final_model(info.paths) is None:
        return UserError(f"{where} saved a LoRA adapter, which a run cannot start from, and no merged model",
                         "load its config, set lora.merge_on_export true and train it again: its final/merged/ "
                         "can be continued")
    return None


def final_model(paths: RunPaths) -> Path | None:
    """The model folder a continuation starts from: final/, or for a LoRA run (final/ holds only the
    adapter) the merged model in final/merged/ (lora.merge_on_export), None without one."""
    if not (paths.final / ADAPTER_CONFIG).is_file():
        return paths.final
    merged = paths.final / MERGED
    return merged if (merged / "config.json").is_file() else None


def unique_run_name(runs_dir: str | Path, base: str) -> str:
    """`base` if no folder of that name is in `runs_dir`, else `base2`, `base3`, ..."""
    folder, name, n = Path(runs_dir), base, 1
    while (folder / name).exists():
        n += 1
        name = f"{base}{n}"
    return name


def continued_config(run_dir: str | Path, *, epochs: float | None = None, max_steps: int | None = None,
                     lr: float | None = None) -> RunConfig:
    """The config of a new run that trains the finished model of the run in `run_dir` for `epochs`
    more epochs or `max_steps` more steps (one of the two), under a new name `<name>-cont[N]` beside
    its parent (the folder the parent is in now, whatever runs_dir it was started with). The
    optimizer and schedule start afresh: the finished run saved weights, not optimizer state. So its
    warmup climbs to the peak lr again, the parent's unless `lr`: at the parent's peak a review's
    continued demo ended worse than it started, where a lower one keeps what was learned.
    Raises UserError when the run has no final model or the amount or lr is invalid."""
    if (epochs is None) == (max_steps is None):
        raise ValueError("pass exactly one of epochs and max_steps")
    paths = RunPaths(Path(run_dir))
    if not paths.final.is_dir():
        raise UserError(f"run {paths.root.name} saved no final model ({paths.final} does not exist)",
                        "only a finished run saved with output.save_final true can be continued")
    if (model := final_model(paths)) is None:
        raise UserError(f"run {paths.root.name} saved a LoRA adapter and no merged model ({paths.final})",
                        "only a LoRA run saved with lora.merge_on_export true can be continued")
    data = config_to_dict(load_config(paths.config))
    base = _CONTINUED_SUFFIX.sub("", paths.root.name) + CONTINUED
    changes = {
        "model.name_or_path": str(model.absolute()),
        "schedule.epochs": epochs if epochs is not None else data["schedule"]["epochs"],
        "schedule.max_steps": max_steps,
        "output.runs_dir": str(paths.root.parent),
        "output.run_name": unique_run_name(paths.root.parent, base),
        **({"optim.lr": lr} if lr is not None else {}),
    }
    for dotted, value in changes.items():
        set_dotted(data, dotted, value)
    return parse_config(data, source=f"continuation of {paths.root.name}")


def variant_config(run_dir: str | Path) -> RunConfig:
    """The run's config with output.run_name cleared, so a run started from it gets a folder of its
    own instead of colliding with the run it came from."""
    config = load_config(RunPaths(Path(run_dir)).config)
    return config.model_copy(update={"output": config.output.model_copy(update={"run_name": None})})
