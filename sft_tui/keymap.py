"""The app's keys by binding id: the defaults, a user's keymap file over them, and keys written as
people read them (`[`, `Ctrl+↑`) for the help screen and the palette.

A keymap file is TOML, one `binding-id = "key,key"` line per binding to change (Textual key names
such as `ctrl+l`, `f2`, `left_square_bracket`, or the character itself); `sft-tui --print-keymap`
writes every binding in that form. The file is checked before the app starts, so a typo is
reported with the file and the binding id, never as a traceback; Textual's keymap
(`App.set_keymap`) then applies it by id.

This module imports no screen at module level: `sft-tui --print-keymap` must stay torch-free and
quick, and the app imports it at start-up.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from textual.binding import Binding
from textual.keys import Keys, _character_to_key, format_key, key_to_character

from core.errors import UserError

ENV = "SFT_TUI_KEYMAP"
"""An environment variable naming the keymap file, when it is not the default one."""
MODIFIERS = ("ctrl", "shift", "alt", "meta", "super", "hyper")
NAMED = {"escape": "Esc", "enter": "Enter", "space": "Space", "tab": "Tab", "delete": "Delete",
         "backspace": "Backspace", "pageup": "PgUp", "pagedown": "PgDn", "home": "Home", "end": "End",
         "insert": "Insert"}
"""Keys whose Textual name is not what people write (format_key gives `⏎` for enter, `esc`...)."""
KNOWN_KEYS = ({key.value for key in Keys} | {"space", "enter", "escape", "tab", "backspace", "delete"}
              | {_character_to_key(chr(code)) for code in range(33, 127)})
"""Textual's key names: special keys, and the names of printable characters (`plus`, `question_mark`)."""


def default_path() -> Path:
    """~/.config/sft-tui/keymap.toml, or under $XDG_CONFIG_HOME when it is set."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "sft-tui" / "keymap.toml"


# ---- keys as people read them ------------------------------------------------------------------
def key_label(key: str) -> str:
    """One Textual key name as people write it: `left_square_bracket` -> `[`, `ctrl+up` -> `Ctrl+↑`,
    `question_mark` -> `?`, `space` -> `Space`."""
    *modifiers, name = key.split("+")
    base = NAMED.get(name) or format_key(name)
    if len(base) == 1 and modifiers:
        base = base.upper()
    elif len(base) > 1 and base == name:  # a name format_key keeps: f1, pageup
        base = base.upper() if base[0] == "f" and base[1:].isdigit() else base.capitalize()
    return "+".join([*(modifier.capitalize() for modifier in modifiers), base])


def keys_label(keys: str) -> str:
    """A binding's comma-separated keys, each as people write it, joined by ` / `."""
    return " / ".join(key_label(key.strip()) for key in keys.split(","))


# ---- every binding the keymap may change -------------------------------------------------------
def binding_scopes() -> list[tuple[str, list[Binding]]]:
    """(where, bindings) for the app, every step, each step screen and the help screen: what the
    help screen lists and what a keymap file may rebind. Imported here, not at module level: the
    screens load only when the app or --print-keymap needs them."""
    from sft_tui.app import STEPS, SftApp
    from sft_tui.screens import SCREENS
    from sft_tui.screens.base import StepScreen
    from sft_tui.screens.help import HelpScreen

    return ([("everywhere", SftApp.BINDINGS), ("every step", StepScreen.BINDINGS)]
            + [(label, SCREENS[name].__dict__.get("BINDINGS", [])) for name, label in STEPS]
            + [("help screen", HelpScreen.BINDINGS)])


def declared_bindings(node_class: type) -> list[Binding]:
    """The bindings `node_class` and its bases declare (base classes first, as Textual merges
    them), without Textual's own: the ones this app gives an id and a description."""
    return [binding for base in reversed(node_class.__mro__) if base.__module__.startswith("sft_tui")
            for binding in base.__dict__.get("BINDINGS", ()) if isinstance(binding, Binding)]


def default_bindings() -> dict[str, Binding]:
    """Every binding id and its binding, in the order the help screen shows them."""
    return {binding.id: binding for _, bindings in binding_scopes() for binding in bindings}


def effective_keys(binding: Binding, keymap: dict[str, str]) -> str:
    """The keys of `binding` under `keymap` (Textual's key names, comma separated)."""
    return keymap.get(binding.id or "", binding.key)


def first_key_label(binding: Binding, keymap: dict[str, str]) -> str:
    """The first of `binding`'s keys under `keymap`, as people write it: what a line names the key by."""
    return key_label(effective_keys(binding, keymap).split(",")[0])


def print_keymap() -> str:
    """The defaults in the keymap file's format: saved as is, the file changes nothing."""
    lines = [f"# sft-tui keymap: save as {default_path()} (or pass --keymap FILE, or set ${ENV}),",
             "# keep the lines you change. binding-id = \"key,key\": Textual key names (ctrl+l, f2,",
             "# left_square_bracket, question_mark) or the character itself."]
    for where, bindings in binding_scopes():
        lines.append(f"\n# ---- {where}")
        for binding in bindings:
            what = binding.description + (f": {binding.tooltip}" if binding.tooltip else "")
            lines.append(f"{_toml_key(binding.id)} = \"{binding.key}\"  # {keys_label(binding.key)}  {what}")
    return "\n".join(lines) + "\n"


def _toml_key(binding_id: str) -> str:
    return binding_id if binding_id.replace("-", "").replace("_", "").isalnum() else f'"{binding_id}"'


# ---- reading a keymap file ---------------------------------------------------------------------
def keymap_path(explicit: str | Path | None) -> Path | None:
    """The keymap file to read: --keymap, else $SFT_TUI_KEYMAP, else the default file if it exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    path = default_path()
    return path if path.is_file() else None


def load_keymap(explicit: str | Path | None = None) -> dict[str, str]:
    """The user's keymap (binding id -> keys); {} without a file. UserError names the file and,
    for a bad entry, the binding id."""
    path = keymap_path(explicit)
    return {} if path is None else read_keymap(path)


def read_keymap(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read the keymap {path}: {err.strerror}",
                        f"fix the path, or unset ${ENV}; `sft-tui --print-keymap` writes one") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"the keymap {path} is not TOML: {err}",
                        'each line reads binding-id = "key"; see `sft-tui --print-keymap`') from None
    known = default_bindings()
    keymap = {}
    for binding_id, keys in data.items():
        if binding_id not in known:
            raise UserError(f"the keymap {path} names an unknown binding id {binding_id!r}",
                            "`sft-tui --print-keymap` lists every binding id")
        if not isinstance(keys, str) or not keys.strip():
            raise UserError(f"the keymap {path} gives {binding_id} no keys",
                            f'write keys as a string, e.g. {binding_id} = "{known[binding_id].key}"')
        for key in keys.split(","):
            if not _is_key(key.strip()):
                raise UserError(f"the keymap {path} binds {binding_id} to an unknown key {key.strip()!r}",
                                "use Textual key names: ctrl+l, f2, space, enter, left_square_bracket, or a "
                                "character")
        keymap[binding_id] = ",".join(key.strip() for key in keys.split(","))
    return keymap


def _is_key(key: str) -> bool:
    """A key Textual can deliver: modifiers, then one character or a key name."""
    *modifiers, name = key.split("+")
    if not name or any(modifier not in MODIFIERS for modifier in modifiers):
        return False
    return len(name) == 1 or name in KNOWN_KEYS or key_to_character(name) is not None
