"""Work that must not run on the UI thread: loading models and data, training in process, and
following a detached run.

These functions run inside Textual thread workers. They import torch and transformers lazily (the
first screen draws before either is imported), post their outcome as a message
(sft_tui.messages), and never touch widgets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from textual.message import Message
from textual.message_pump import MessagePump
from textual.worker import get_current_worker

from core.config import RunConfig
from core.control import Control
from core.errors import UserError
from core.events import Event, LogMessage, RunFailed, RunStarted
from core.follow import follow
from sft_tui.messages import ControlTaken, EngineEvent, EngineEvents, EngineGone, LoadFailed
from sft_tui.run_client import InProcessClient, RunClient
from sft_tui.session import ModelInfo

FOLLOW_POLL_S = 0.2
"""How often a detached run's events.jsonl is read: the engine reports four times a second, and a
screen update per read (not per event) keeps the UI thread's share small."""
CONTROLLER_LOOK_S = 2.0
"""How often a viewer looks whether the client that controls the run is still there."""

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


def report_load(target: MessagePump, kind: str, config: RunConfig, work: Callable[[], Message]) -> None:
    """Run a `kind` ("model" or "data") load of `config` in this worker and post its outcome to
    `target`: the message `work` returns (ModelLoaded, DataLoaded), or LoadFailed.

    The outcome of a load that a newer one replaced (its worker was cancelled) is dropped: it is
    about settings the user has left. An exception other than UserError is a bug: LoadFailed still
    goes out, so nothing stays "loading", and the exception is raised again for the app's worker
    handler, which writes its traceback and shows the error dialog.
    """
    worker = get_current_worker()
    try:
        outcome = work()
    except UserError as err:
        outcome = LoadFailed(kind, config, err.message, err.hint)
    except Exception as err:
        target.post_message(LoadFailed(kind, config, f"{type(err).__name__}: {err}"))
        raise
    if not worker.is_cancelled:
        target.post_message(outcome)


class PostingSink:
    """An engine EventSink that hands each event to a Textual widget as a message (thread-safe)."""

    def __init__(self, target: MessagePump) -> None:
        self.target = target

    def emit(self, event: Event) -> None:
        self.target.post_message(EngineEvent(event))


class RunSink(PostingSink):
    """The sink of the app's in-process run: its events go to the train screen, except log records,
    which reach the log pane through the app's logging handler (the one route of every log line of
    the app's process; the engine's copy of them goes to events.jsonl). RunStarted tells `client`
    the run's folder; RunFailed is kept for the app, which then opens no second dialog when the
    worker ends."""

    def __init__(self, target: MessagePump, client: InProcessClient) -> None:
        super().__init__(target)
        self.client = client
        self.started: RunStarted | None = None
        self.failed: RunFailed | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, LogMessage):
            return
        if isinstance(event, RunStarted):
            self.started = event
            self.client.found(event.run_dir)
        elif isinstance(event, RunFailed):
            self.failed = event
        super().emit(event)


def run_training(config: RunConfig, sink: RunSink, control: Control, resume_dir=None):
    """The engine in this (worker) thread, reporting to `sink`. Returns core.engine.RunResult.

    Reports come once a second (headless: four times): every redraw they cause competes with the
    training threads for the CPU and the GIL, and on 2 cores a third busy thread stalls torch's
    two, which wait for each other (bench/app_vs_headless.py)."""
    warm_up()
    from core.engine import train

    return train(config, [sink], control, resume_dir=resume_dir, report_interval_s=1.0)


def follow_run(client: RunClient, target: MessagePump, ended: bool, poll_s: float = FOLLOW_POLL_S) -> None:
    """Post what the engine of `client`'s detached run appends to events.jsonl (its history has
    been read: `ended` says whether it ends the run) to `target`, one EngineEvents per read, until
    the engine ends (then EngineGone) or this worker is cancelled."""
    worker = get_current_worker()
    heard = False
    looked = time.monotonic()
    for events, alive in follow(client.follower, client.engine_alive, poll_s, lambda: worker.is_cancelled):
        if client.fresh:  # older events are a replaced start's
            events = [e for e in events if e.time >= client.since]
        if events:
            target.post_message(EngineEvents(events, client=client))
            heard = True
        ended = run_ended(events, ended)
        if client.controller is not None and alive and not ended and time.monotonic() - looked >= CONTROLLER_LOOK_S:
            looked = time.monotonic()
            if client.take_over():
                target.post_message(ControlTaken(client))
        if not alive:
            silent = client.process is not None and not heard
            target.post_message(EngineGone(None if ended else _crash_problem(client),
                                           client.engine_log_tail() if silent else None, client))
            return


def run_ended(events: list[Event], ended: bool = False) -> bool:
    """Whether the run's latest start has ended after `events` (`ended`: before them)."""
    for event in events:
        if event.type in ("run_started", "run_finished", "run_failed"):
            ended = event.type != "run_started"
    return ended


def _crash_problem(client: RunClient):
    """Why a run whose engine ended without a final event is not training (sft_tui.attach), with
    the signal that ended the engine when this app started it and so knows."""
    from core.run_info import run_info
    from sft_tui.attach import ended_problem

    problem = ended_problem(run_info(client.paths.root))
    if problem is not None and (killed := killed_by(client.process)):
        problem = UserError(f"{problem.message}; {killed}", problem.hint, problem.fields)
    return problem


def killed_by(process) -> str:
    """How a signal ended `process` (a Popen that has ended), or "": a crash with no final event
    said nothing of it, though SIGKILL is how the kernel ends a process that ran the machine out of
    memory (loading a model bigger than the RAM, say)."""
    import signal

    code = process.returncode if process is not None else None
    if code is None or code >= 0:
        return ""
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    why = " (as the kernel's out-of-memory killer does: `dmesg` says whether it did)" if -code == signal.SIGKILL else ""
    return f"the engine was killed by {name}{why}"
