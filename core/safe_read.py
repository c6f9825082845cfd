"""Reading the files of a run folder that someone else may have written: run folders are shared and
listed by every client (core.run_info), so one bad file must cost an error, never a hang or the
machine's memory. Only a regular file is opened: a FIFO would block its reader until a writer comes,
a device may never end, and a link may point anywhere. Torch-free.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

SMALL_FILE_BYTES = 1 << 20
"""More than any record or config sft-tui writes (a few KB)."""


def _refuse_irregular(mode: int, path: Path) -> None:
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for reading in binary if it is a regular file itself, not a link to one; else
    OSError. Looked at before the open (which never waits, O_NONBLOCK) and again after it, in case
    the file was swapped in between."""
    path = Path(path)
    _refuse_irregular(os.lstat(path).st_mode, path)
    file = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb")
    try:
        _refuse_irregular(os.fstat(file.fileno()).st_mode, path)
    except OSError:
        file.close()
        raise
    return file


def read_small(path: str | Path, limit: int = SMALL_FILE_BYTES) -> str:
    """The UTF-8 text of a small regular file (a process record, a config). A larger one is an
    OSError and is never read whole; text that is not UTF-8 is a ValueError."""
    with open_regular(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
    return data.decode("utf-8")
