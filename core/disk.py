"""Writes that fail because of the disk, not the code: a full disk, a quota, a file size limit or
a read-only file system. Each is the user's to fix (free space, then resume), so every place that
writes a run folder turns one into a UserError that says so, not a traceback "this looks like a bug".
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from core.errors import UserError

DISK_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
               errno.EFBIG: "the file size limit (ulimit -f) is reached", errno.EROFS: "the file system is read-only"}


def write_errno(err: BaseException) -> int | None:
    """The errno behind a failed write: an OSError's, or the one safetensors' Rust writer quotes
    in its message ("I/O error: File too large (os error 27)")."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def disk_problem(err: BaseException, folder: Path, then: str) -> UserError | None:
    """The UserError for `err` when the disk under `folder` caused it, else None. `then`: what to do
    once there is room ("resume with `…`")."""
    code = write_errno(err)
    if code not in DISK_FAULTS:
        return None
    written = getattr(err, "filename", None) or folder
    return UserError(f"cannot write {written}: {DISK_FAULTS[code]}", f"{remedy(code)} under {folder}, then {then}")


def remedy(code: int) -> str:
    """What the user does about DISK_FAULTS[code], before carrying on."""
    return "make it writable" if code == errno.EROFS else "free space"
