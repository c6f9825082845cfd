"""Textual messages: engine events, delivered to the UI thread.

Workers never touch widgets; they post these, and the screens update themselves in handlers.
(Model and data loads report through the app's model_state/data_state reactives instead.)
"""

from __future__ import annotations

from dataclasses import dataclass

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
