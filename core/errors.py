"""The one exception type the engine raises for problems the user can fix.

Every front end (headless CLI, Textual app) catches `UserError` and shows `message` and `hint`
without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import shlex
from pathlib import Path


class UserError(Exception):
    """Bad input: a config value, a file, a model or a dataset the user pointed at.

    `message` says what is wrong and names the field or file; `hint` says what to do about it.
    `fields` holds the same problems by dotted config field ({"optim.lr": "Input should be ..."}),
    where the error is about config fields, so that a form can mark each field without parsing
    `message` back.
    """

    def __init__(self, message: str, hint: str = "", fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = dict(fields or {})

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def train_command(*args: str | Path) -> str:
    """`sft-tui train ...` as a message gives it to be typed: each argument quoted for the shell (a
    path with a space), and paths absolute, so the command works from any folder."""
    words = [str(Path(a).absolute()) if isinstance(a, Path) else a for a in args]
    return shlex.join(["sft-tui", "train", *words])


ABORTED = "by a second Ctrl+C, without saving"
"""The end of a RunFailed message for a run aborted on purpose (core.engine): a launcher that reads
how its processes ended (`sft-tui train --nproc N`) gives it the aborted status, 130, not a failure's."""
