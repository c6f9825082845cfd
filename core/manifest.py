"""What makes a checkpoint folder complete, without importing torch.

`manifest.json` is the last file written into a checkpoint and lists every other file with its
size. A folder whose manifest is missing, unreadable or disagrees with the files on disk (a
truncated weights file, a file deleted by hand) is not complete, so no resume picks it. Clients
that only list checkpoints (the app's resume dialog, `sft-tui runs`) use this module and stay light.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.safe_read import read_small

PREFIX = "step-"
MANIFEST = "manifest.json"
FORMAT = 1


def step_of(path: Path) -> int | None:
    """N for a folder named `step-N`, else None."""
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def write_manifest(folder: Path, step: int) -> None:
    """List every file in `folder` with its size; call it after all of them are written."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    text = json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1)
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (naming the file), or None when it is."""
    try:
        manifest = json.loads(read_small(folder / MANIFEST))  # never a FIFO: every client lists checkpoints
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            return f"{folder / MANIFEST} is of an unknown format"
    except FileNotFoundError:
        return f"{folder} has no {MANIFEST} (its write never finished)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder / MANIFEST} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size:,} bytes, but {size:,} were written (truncated or changed)"
    return None


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Interrupted writes (hidden temporary folders) and
    incomplete ones are skipped."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir()
             if p.is_dir() and step_of(p) is not None and checkpoint_problem(p) is None]
    return sorted(found, key=step_of)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def incomplete_checkpoints(checkpoints_dir: Path) -> list[str]:
    """The problems of every `step-N` folder that is not complete, newest first (for messages)."""
    if not checkpoints_dir.is_dir():
        return []
    steps = sorted((p for p in checkpoints_dir.iterdir() if p.is_dir() and step_of(p) is not None),
                   key=step_of, reverse=True)
    return [problem for p in steps if (problem := checkpoint_problem(p))]


def superseded_remains(checkpoints_dir: Path) -> list[Path]:
    """Incomplete `step-N` folders older than the newest complete checkpoint: what a kill while
    keep_last pruned one left (a resume never reads them, and pruning lists complete ones only)."""
    newest = latest_checkpoint(checkpoints_dir)
    if newest is None:
        return []
    return [p for p in checkpoints_dir.iterdir() if p.is_dir() and not p.is_symlink()
            and (step := step_of(p)) is not None and step < step_of(newest) and checkpoint_problem(p) is not None]
