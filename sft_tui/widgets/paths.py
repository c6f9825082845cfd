"""Path inputs: completion of the rest of a folder or file name as you type, and the path's end in view.

Over SSH there is no file dialog, so the inputs complete names the way a shell does: the first
entry (in sorted order) of the typed folder that starts with the typed name, accepted with the
right arrow key. Folders get a trailing slash so the next name can follow at once.
"""

from __future__ import annotations

import os

from textual.suggester import Suggester
from textual.widgets import Input


class PathInput(Input):
    """An Input holding a path, which shows the path's end when the app fills it in. Input shows a
    value from its start until the cursor moves, so at 80 columns a deep path showed its folders
    (`/home/alice/projects/sup`) and hid the file name."""

    def on_mount(self) -> None:
        self.call_after_refresh(self.show_end)

    def on_resize(self) -> None:
        """A box that the layout narrows after it was filled keeps the end in view."""
        if self.cursor_position == len(self.value):
            self.show_end()

    def fill(self, path: str) -> None:
        """Put `path` in the box with the cursor after it and its end in view."""
        self.value = path
        self.cursor_position = len(path)
        self.call_after_refresh(self.show_end)

    def show_end(self) -> None:
        self.scroll_to(x=self.max_scroll_x, animate=False)


class PathSuggester(Suggester):
    """Completes folder names, and names of files with one of `extensions` (e.g. (".jsonl", ".csv"))."""

    def __init__(self, extensions: tuple[str, ...] = ()) -> None:
        # The file system changes while the app runs, so nothing is cached.
        super().__init__(use_cache=False, case_sensitive=True)
        self.extensions = extensions

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, self.extensions)


def complete_path(value: str, extensions: tuple[str, ...] = ()) -> str | None:
    """`value` completed to the first matching folder (or file with one of `extensions`), or None.
    Hidden entries are offered only when the typed name starts with a dot."""
    if not value or value.startswith("demo:"):
        return None
    folder, slash, prefix = value.rpartition("/")
    where = os.path.expanduser(folder or "/") if slash else "."
    try:
        entries = sorted(os.scandir(where), key=lambda entry: entry.name)
    except OSError:
        return None
    for entry in entries:
        if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            completed = folder + slash + entry.name + "/"
        elif extensions and entry.name.lower().endswith(extensions):
            completed = folder + slash + entry.name
        else:
            continue
        if completed != value:
            return completed
    return None
