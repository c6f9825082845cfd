"""Where a model can come from without typing a path: the bundled demos and the local HF cache,
listed in one OptionList."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from core.config import DEMO_MINILM, DEMO_MODELS, DEMO_TINY_LM
from core.memory import format_bytes
from sft_tui.format.numbers import format_count

HF_PREFIX = "hf:"
"""Option ids of cached models are the repo id after this prefix (demo ids are the demo names)."""
DEMO_ABOUT = {DEMO_MINILM: "pretrained all-MiniLM-L6-v2 · classification",
              DEMO_TINY_LM: "tiny Llama, built on first use · causal LM"}
"""A line under each demo of core.config.DEMO_MODELS."""


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size_on_disk: int
    """Bytes, all revisions together (what deleting it would free)."""
    params: int | None
    """Parameters of the newest revision, from its safetensors headers; None when it has none."""

    def about(self) -> str:
        """`269.1 MB · 134.5M params`: a size with its unit, so that it never reads as a count."""
        size = format_bytes(self.size_on_disk)
        return f"{size} · {format_count(self.params)} params" if self.params else size


def safetensors_params(folder: Path) -> int | None:
    """The parameters stored in a folder's *.safetensors files, read from their headers only (a
    few KB each, no torch): each tensor is stored once, tied ones too. None without such files, or
    when a header cannot be read (an incomplete download)."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    try:
        for file in files:
            with file.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total if files else None


def cached_models() -> tuple[str, list[CachedModel]]:
    """The hub cache folder (it follows HF_HOME / HF_HUB_CACHE) and the models in it, by repo id.

    Reads only the local folder, so it works offline; seconds for a large cache, hence a worker.
    """
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    folder = constants.HF_HUB_CACHE
    try:
        info = scan_cache_dir(folder)
    except (CacheNotFound, ValueError):
        return folder, []
    models = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        newest = max(repo.revisions, key=lambda revision: revision.last_modified, default=None)
        params = safetensors_params(newest.snapshot_path) if newest is not None else None
        models.append(CachedModel(repo.repo_id, repo.size_on_disk, params))
    return folder, sorted(models, key=lambda m: m.repo_id.lower())


class ModelSources(OptionList):
    """The demos, then the models of the local HF cache (scanned in a worker, again on `rescan`).
    Picking one posts `Picked`: a demo by its name, a cached model by its repo id."""

    @dataclass
    class Picked(Message):
        name: str
        """The demo name (core.config.DEMO_MODELS) or the repo id of a cached model."""
        demo: bool

    def __init__(self, **kwargs) -> None:
        super().__init__(*_options([]), **kwargs)
        self.selected = ""
        """The model the list highlights when it has it (the configured one)."""

    def on_mount(self) -> None:
        self.rescan()

    def rescan(self) -> None:
        self.app.run_worker(self._read_cache, thread=True, exclusive=True, group="model-hf-cache",
                            exit_on_error=False)

    def _read_cache(self) -> None:
        folder, models = cached_models()
        self.app.call_from_thread(self._show_cached, folder, models)

    def _show_cached(self, folder: str, models: list[CachedModel]) -> None:
        self.set_options(_options(models))
        self.tooltip = f"HF cache: {folder}"
        self.highlight_model(self.selected)

    def highlight_model(self, name: str) -> None:
        """Highlight `name` (a demo or a cached repo id); nothing for a folder or an id not listed."""
        self.selected = name
        for option_id in (name, HF_PREFIX + name):
            try:
                self.highlighted = self.get_option_index(option_id)
                return
            except OptionDoesNotExist:
                continue
        self.highlighted = None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        choice = event.option.id or ""
        if choice in DEMO_MODELS:
            self.post_message(self.Picked(choice, demo=True))
        elif choice.startswith(HF_PREFIX):
            self.post_message(self.Picked(choice.removeprefix(HF_PREFIX), demo=False))


def _options(models: list[CachedModel]) -> list[Option | None]:
    options: list[Option | None] = [Option(Text.assemble((name, "bold"), "\n", (DEMO_ABOUT[name], "dim")), id=name)
                                    for name in DEMO_MODELS]
    options.append(None)
    if not models:
        options.append(Option(Text("no models in the local HF cache", style="dim italic"), disabled=True))
    for model in models:
        options.append(Option(Text.assemble(model.repo_id, "\n", (model.about(), "dim")), id=HF_PREFIX + model.repo_id))
    return options
