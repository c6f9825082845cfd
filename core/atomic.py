"""Folders that appear whole or not at all: the one writer behind checkpoints and `final/`.

A folder is written under a hidden temporary name beside its destination, its files are flushed to
disk and given the permissions the user's umask asks for, and only then is it renamed into place.
A crash (kill -9, a full disk, a power cut after the flush) therefore leaves either the previous
folder or the new one, never a half-written folder where a resume or a user would pick it up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


def no_follow(path: str, flags: int, mode: int = 0o666) -> int:
    """An `opener` for open(): a run folder's file, never a symbolic link in its place (which would
    aim an append or a truncation at a file of the link's choosing; core.runs.foreign_problem).
    `mode`: a new file's, before the umask (functools.partial(no_follow, mode=0o600) for a private one)."""
    return os.open(path, flags | os.O_NOFOLLOW, mode)


def replace_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Write `text` to `path` atomically, a reader never seeing half of it: through a temporary file
    of a random name created exclusively (mkstemp), not a name one could guess and plant a link
    under (`.engine.json.<pid>.tmp` was written through one, for every pid a folder had links for).
    The file is private (0600), as a record of processes is. `durable`, for a file the user keeps (a
    config): it is on disk before it takes the name, so a crash or power cut leaves the old file or
    the new one, never an empty one, and it gets the mode a plain write would give it: the old
    file's, or what the umask leaves of 0666."""
    import errno
    import tempfile

    if durable and path.exists() and not os.access(path, os.W_OK):  # the rename would replace a read-only file
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fchmod(f.fileno(), path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
                os.fsync(f.fileno())
        os.replace(temp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _settle(folder: Path) -> None:
    """One mode for every file, as the umask says (safetensors writes 0600, torch.save 0644), and
    every byte on disk before the rename makes the folder visible."""
    mask = _umask()
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            path.chmod(0o777 & ~mask)
            continue
        path.chmod(0o666 & ~mask)
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_leftovers(folder: Path) -> list[str]:
    """Remove what a killed atomic_folder left in `folder` (its temporary and replaced copies), which
    nothing saves under that name again: a save at a stop or on request, a final/ written once. Only
    the run's engine calls it, holding the run's lock. The names removed, for the log."""
    if not folder.is_dir():
        return []
    left = [p for p in folder.iterdir() if p.name.startswith((TMP_PREFIX, _OLD_PREFIX)) and p.is_dir()
            and not p.is_symlink()]
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in left]


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on a clean exit it replaces `final` in one rename.

    On an exception the temporary folder is removed and `final` (if any) is left as it was."""
    tmp = final.with_name(TMP_PREFIX + final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _settle(tmp)
        old = final.with_name(_OLD_PREFIX + final.name)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
