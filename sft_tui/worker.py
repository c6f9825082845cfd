"""Work that must not run on the UI thread: loading models and data, and training.

These functions run inside Textual thread workers. They import torch and transformers lazily (the
first screen draws before either is imported), return plain results or post messages, and never
touch widgets.
"""

from __future__ import annotations

import threading

from textual.message_pump import MessagePump

from core.config import RunConfig
from core.control import Control
from core.events import Event
from sft_tui.messages import EngineEvent
from sft_tui.session import ModelInfo


_import_lock = threading.Lock()


def warm_up() -> bool:
    """Import the heavy libraries while the user reads the first screen; answers whether torch sees
    a CUDA GPU (the app refuses precision fp16 without one, as the engine would).

    Every worker calls it first: two threads importing transformers at once can see a half
    initialised module ("cannot import name 'AutoTokenizer'"), so imports happen under one lock;
    once done, the call costs nothing.
    """
    with _import_lock:
        import datasets  # noqa: F401
        import torch
        import transformers  # noqa: F401

        from core.logs import quiet_libraries

        quiet_libraries()
        return torch.cuda.is_available()


def load_model_info(config: RunConfig, labels: list[str] | None = None) -> ModelInfo:
    """Tokenizer and weightless structure of the configured model (seconds, even for big models)."""
    warm_up()
    from core.describe import describe_model
    from core.models import build_skeleton, load_tokenizer, usable_positions

    tokenizer = load_tokenizer(config.model)
    skeleton = build_skeleton(config.model, config.task, labels, pad_token_id=tokenizer.pad_token_id)
    return ModelInfo(describe_model(skeleton), skeleton, tokenizer, config.task, labels,
                     usable_positions(config.model, tokenizer))


def load_data(config: RunConfig, model: ModelInfo):
    """Tokenize the configured data with the model's tokenizer (core.data.PreparedData)."""
    warm_up()
    from core.data import prepare_data

    return prepare_data(config, model.tokenizer, model.max_positions)


class PostingSink:
    """An engine EventSink that hands each event to a Textual widget as a message (thread-safe)."""

    def __init__(self, target: MessagePump) -> None:
        self.target = target

    def emit(self, event: Event) -> None:
        self.target.post_message(EngineEvent(event))


def run_training(config: RunConfig, target: MessagePump, control: Control, resume_dir=None):
    """The engine in this (worker) thread, reporting to `target`. Returns core.engine.RunResult.

    Reports come once a second (headless: four times): every redraw they cause competes with the
    training threads for the CPU and the GIL, and on 2 cores a third busy thread stalls torch's
    two, which wait for each other (bench/app_vs_headless.py)."""
    warm_up()
    from core.engine import train

    return train(config, [PostingSink(target)], control, resume_dir=resume_dir, report_interval_s=1.0)
