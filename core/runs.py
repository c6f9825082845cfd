"""The run folder: one directory per run, holding its resolved config, event log, checkpoints and
final model (layout in DESIGN.md). Everything about a past run is read back from here."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import RunConfig, config_to_dict, load_config, save_config
from core.errors import UserError

CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
ERROR_LOG = "error.log"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def final(self) -> Path:
        return self.root / FINAL_DIR

    @property
    def error_log(self) -> Path:
        """The traceback of an unexpected failure: front ends name this file instead of printing it."""
        return self.root / ERROR_LOG


def config_digest(config: RunConfig) -> str:
    """Short stable hash of the resolved config: two runs with equal digests trained the same thing."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def new_run_id(config: RunConfig) -> str:
    if config.output.run_name:
        return config.output.run_name
    model = Path(config.model.name_or_path.replace("demo:", "")).name or "model"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")[:40]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"


def create_run(config: RunConfig, run_id: str) -> RunPaths:
    """Make the run folder and write the config it runs with; refuse to overwrite another run."""
    paths = RunPaths(Path(config.output.runs_dir) / run_id)
    if paths.events.exists():
        raise UserError(
            f"run folder {paths.root} already holds a run",
            "choose another output.run_name, or resume it with `sft-tui train --resume " + str(paths.root) + "`",
        )
    try:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create run folder {paths.root}: {err.strerror}", "check output.runs_dir") from None
    save_config(config, paths.config)
    return paths


def open_run(run_dir: str | Path) -> tuple[RunPaths, RunConfig]:
    """An existing run folder and its config, for resuming or inspecting it."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise UserError(f"{paths.root} is not a run folder: it has no {CONFIG_FILE}", "pass a folder under runs/")
    return paths, load_config(paths.config)
