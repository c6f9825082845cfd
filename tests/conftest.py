"""Shared test setup: offline Hugging Face, throwaway caches, and tiny models built once per session.

The environment is set at import time, before any test module imports torch or transformers: the
hub reads HF_HOME and HF_HUB_OFFLINE when it is first imported, and torch its thread count.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One thread per torch, in the test processes and the engines they start: the models are tiny, and
# pytest-xdist already runs a test process per core (two threads each made the suite 40% slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import helpers  # noqa: E402  (after the thread count)

_SCRATCH = tempfile.mkdtemp(prefix="sft-tui-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_SCRATCH, "hf-home")
os.environ["SFT_TUI_CACHE"] = os.path.join(_SCRATCH, "sft-tui-cache")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

_SUBJECTS = ["the cat", "a small dog", "my neighbour", "the old teacher", "a quiet robot", "the river"]
_VERBS = ["likes", "sees", "finds", "paints", "remembers", "follows"]
_OBJECTS = ["the red ball", "a long story", "the morning train", "two green apples", "the open window"]
_ENDINGS = [".", " today.", " again.", " every day.", " in the garden.", " after lunch.", "!"]


def make_sentences(n: int = 200) -> list[str]:
    """`n` short, varied English sentences, the same ones every time."""
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)
    return [f"{s} {v} {o}{e}".capitalize() for s, v, o, e in itertools.islice(combos, 0, None, 3)][:n]


@pytest.fixture
def sft_file(tmp_path):
    """Prompt/completion rows with a learnable rule: the answer is the prompt's word repeated."""
    rows = [{"prompt": f"Say {w} {i % 3}:", "completion": f" {w} {w}"} for i, w in enumerate(helpers.WORDS * 8)]
    return helpers.write_jsonl(tmp_path / "sft.jsonl", rows)


@pytest.fixture
def cls_file(tmp_path):
    rows = [{"text": f"{w} is {'good great fine' if i % 2 else 'bad awful poor'}", "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(helpers.WORDS * 8)]
    return helpers.write_jsonl(tmp_path / "cls.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """The corpus the tiny models' tokenizers are trained on."""
    return make_sentences()


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_texts):
    """A function arch -> folder of a tiny random model of that architecture (core.tiny.ARCHITECTURES),
    built on first use and shared by the whole session. Decoders are saved with an LM head,
    encoders as bare base models."""
    from core.logs import quiet_libraries
    from core.tiny import build_tiny_model

    built: dict[str, Path] = {}

    def folder(arch: str) -> Path:
        if arch not in built:
            quiet_libraries()
            built[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), tiny_texts)
        return built[arch]

    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_factory):
    """The same factory under the name `tiny_model_dir("gpt2")` reads best in tests."""
    return tiny_model_factory


def pytest_configure(config):
    config.addinivalue_line("markers", "prebuild: the app builds its steps ahead of their visit, as it does for users")


@pytest.fixture(autouse=True)
def _steps_built_on_visit(request, monkeypatch):
    """Pilot tests see each step built on its first visit: building every step ahead (what users
    get) cost each app test 1-3 s of waiting in `settle`. Tests of the prebuilt path, and the
    snapshots, which show what users see, ask for it with @pytest.mark.prebuild."""
    if request.node.get_closest_marker("prebuild") is None:
        from sft_tui.step_prebuild import StepPrebuild
        monkeypatch.setattr(StepPrebuild, "PREBUILD_STEPS", False)


@pytest.fixture(autouse=True)
def _heap_unfrozen():
    """An app freezes the heap it leaves (Loading.freeze_heap), for the process's life; in a test
    session that would keep every earlier test's garbage cycles. After each test the collector
    gets them back."""
    yield
    gc.unfreeze()
