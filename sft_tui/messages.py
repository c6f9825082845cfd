"""Textual messages: engine events and worker results, delivered to the UI thread.

Workers never touch widgets; they post these, and the screens update themselves in handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from core.events import Event, StepMetrics


@dataclass
class EngineEvent(Message):
    """One event from the training engine. Step metrics may be merged when the UI falls behind:
    the progress bar needs only the newest, and a merged point only makes a curve coarser."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        return (isinstance(message, EngineEvent) and isinstance(message.event, StepMetrics)
                and isinstance(self.event, StepMetrics))


@dataclass
class ModelLoaded(Message):
    info: Any  # sft_tui.session.ModelInfo


@dataclass
class DataLoaded(Message):
    data: Any  # core.data.PreparedData


@dataclass
class LoadFailed(Message):
    """A UserError from a model or data worker, to show in place on the screen that asked."""

    what: str  # "model" or "data"
    message: str
    hint: str
