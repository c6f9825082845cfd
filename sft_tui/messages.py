"""Textual messages: what workers report to the UI thread, one type per outcome.

Workers never touch widgets: a load worker posts ModelLoaded, DataLoaded or LoadFailed to the app;
the training engine's events arrive at the train screen as EngineEvent (one at a time, from an
engine in a thread of the app) or EngineEvents (in batches, read from a detached engine's
events.jsonl), and EngineGone says that a detached engine's process has ended; whatever changes the
state of the run (a key, an engine event, the end of the engine) is a RunStateChanged that the app
alone applies to `app.run_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from textual.message import Message

from core.config import RunConfig
from core.events import Event, StepMetrics


class RunState(str, Enum):
    """The state of the app's run, as the draft bar shows it."""

    IDLE = "idle"
    """No run yet, or the draft changed since the last one ended."""
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"
    """It trained all its planned steps (RunFinished reason `completed`)."""
    STOPPED = "stopped"
    """Stopped before its last step, by a key or a signal, at a checkpoint it can resume from."""
    EARLY_STOPPED = "early-stopped"
    """Ended by early stopping (eval.patience), with its final model saved."""
    FAILED = "failed"

    @classmethod
    def after(cls, reason: str) -> RunState:
        """The state a run is in after RunFinished with `reason`: a stopped run is not "finished"."""
        return {"stopped": cls.STOPPED, "early-stopped": cls.EARLY_STOPPED}.get(reason, cls.FINISHED)

    @property
    def live(self) -> bool:
        """A run is training (or pausing, or stopping at its next step)."""
        return self in (RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)

    @property
    def ended(self) -> bool:
        return self in (RunState.FINISHED, RunState.STOPPED, RunState.EARLY_STOPPED, RunState.FAILED)


@dataclass
class EngineEvent(Message):
    """One event from the training engine. Step metrics may be merged when the UI falls behind:
    the progress bar needs only the newest, and a merged point only makes a curve coarser."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        return (isinstance(message, EngineEvent) and isinstance(message.event, StepMetrics)
                and isinstance(self.event, StepMetrics))


@dataclass
class EngineEvents(Message):
    """Events a detached engine appended to its run's events.jsonl, applied in one screen update.
    `client`: the sft_tui.run_client.RunClient that read them (a run the app has left is ignored)."""

    events: list[Event]
    client: Any = None


@dataclass
class EngineGone(Message):
    """The followed run's engine process has ended; its last events were posted before this.
    `problem`: when its log has no final event, why it is not training (it crashed:
    sft_tui.attach.ended_problem); `engine_log`: the tail of the engine's output when it ended
    before writing any event."""

    problem: Any = None
    engine_log: str | None = None
    client: Any = None


@dataclass
class ControlTaken(Message):
    """This app, a viewer of the followed run, controls it now: the client that did has gone
    (its app quit, or its terminal was killed), and its keys would otherwise stay off for good."""

    client: Any = None


@dataclass
class RunFollowed(Message):
    """The app follows a run from now on: the train screen starts over with its `history`, what the
    run wrote before (an attach, a resume), drawn in one update before the screen's first frame. It
    fills the panes, but the run's state is the one it has now, not the one each old event
    announced. `attached`: the app did not start the run, and `training`: its engine ran then (its
    state is the one its history ends in). `controller`: the client that controls the run (a
    core.liveness.ProcessRecord) when it is not this app."""

    run_dir: str | None
    history: list[Event] = field(default_factory=list)
    attached: bool = False
    training: bool = False
    controller: Any = None


@dataclass
class ModelLoaded(Message):
    """A model's structure and tokenizer (sft_tui.session.ModelInfo) loaded for `config`."""

    info: Any
    config: RunConfig


@dataclass
class DataLoaded(Message):
    """The data of `config` tokenized (core.data.PreparedData) with the tokenizer of `info`, the
    model loaded for it (the one already loaded, or a fresh one when there was none)."""

    info: Any
    data: Any
    config: RunConfig


@dataclass
class LoadFailed(Message):
    """The model or the data of `config` did not load: a UserError's message and hint, or for a bug
    the exception's name and text (its traceback goes to the error dialog too)."""

    kind: Literal["model", "data"]
    config: RunConfig
    message: str
    hint: str = ""


@dataclass
class RunStateChanged(Message):
    """The run entered `state`. Posted where the change is seen; `SftApp.on_run_state_changed` is
    the one place that sets `app.run_state`."""

    state: RunState
