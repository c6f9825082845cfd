"""Where a model can come from without typing a path: the bundled demos and the local HF cache."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: str
    about: str


DEMO_MODELS = (
    DemoModel("demo:minilm", "classification", "pretrained all-MiniLM-L6-v2 · classification"),
    DemoModel("demo:tiny-lm", "causal-lm", "tiny Llama, built on first use · causal LM"),
)
"""The demos of core.models, each with the task its example config (core.config.example_config) trains."""


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size: str
    """Size on disk, e.g. "90.9M"."""


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
    models = [CachedModel(repo.repo_id, repo.size_on_disk_str) for repo in info.repos if repo.repo_type == "model"]
    return folder, sorted(models, key=lambda m: m.repo_id.lower())
