"""The draft as a YAML file, on every step: ctrl+s saves it (and so keeps it: quitting asks about
nothing then), ctrl+o replaces it with a config file, whose model and data load as at start-up.
Mixed into SftApp, whose session it reads and replaces.
"""

from __future__ import annotations

from pathlib import Path

from core.config import load_config, save_config
from sft_tui.session import untrusted


class DraftFiles:
    def action_save_config(self) -> None:
        from sft_tui.screens.dialogs import PathDialog

        if self.session.invalid:
            self.notify(f"fix the invalid field(s) first: {', '.join(self.session.invalid)}",
                        title="Not saved", severity="error", markup=False)
            return

        def save(path: Path) -> None:
            save_config(self.session.config, path)
            self.session.config_path = path
            self.session.keep()

        def saved(path: Path | None) -> None:
            if path is not None:
                self.notify(f"saved {path}", title="Config", markup=False)

        self.push_screen(PathDialog("Save the whole config as YAML", "Save", self._config_path(), save,
                                    placeholder="path/to/config.yaml", confirm_overwrite=True), saved)

    def action_load_config(self) -> None:
        """The loaded config replaces the draft; each step shows it when next shown (ScreenResume)."""
        from sft_tui.screens.dialogs import PathDialog

        def load(path: Path) -> None:
            config, note = untrusted(load_config(path), str(path))
            self.session.replace_config(config, path)
            if note:
                self.notify(note, title="Remote code", severity="warning", timeout=20, markup=False)

        def loaded(path: Path | None) -> None:
            if path is not None:
                self.changed()
                self.load_what_changed()
                self.notify(f"loaded {path}", title="Config", markup=False)

        self.push_screen(PathDialog("Load a config from YAML", "Load", self._config_path(), load,
                                    placeholder="path/to/config.yaml"), loaded)

    def _config_path(self) -> str:
        return str(self.session.config_path or "sft.yaml")
