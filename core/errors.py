"""The one exception type the engine raises for problems the user can fix.

Every front end (headless CLI, Textual app) catches `UserError` and shows `message` and `hint`
without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config value, a file, a model or a dataset the user pointed at.

    `message` says what is wrong and names the field or file; `hint` says what to do about it.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
