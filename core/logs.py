"""Route the engine's and the libraries' log lines into events instead of onto the terminal.

transformers, datasets and accelerate print warnings and progress bars straight to stderr, which
would draw over a TUI and clutter headless progress. While a run is active their records go through
Python logging into a handler that emits `LogMessage` events; the front end decides where they show.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from core.events import EventSink, LogMessage

ROUTED_LOGGERS = ("core", "transformers", "datasets", "accelerate", "peft")


def quiet_libraries() -> None:
    """Stop transformers/datasets from writing to stderr themselves; their records still propagate."""
    import datasets
    import transformers

    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()


class EventLogHandler(logging.Handler):
    def __init__(self, sink: EventSink) -> None:
        super().__init__(level=logging.INFO)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] != "core" and record.levelno < logging.WARNING:
            return  # library INFO chatter (load reports, cache notes) is not worth a log line
        try:
            message = record.getMessage()
        except Exception:  # a broken log call must never break training
            message = str(record.msg)
        self._sink.emit(LogMessage(level=record.levelname.lower(), logger=record.name, message=message))


@contextlib.contextmanager
def logs_to_events(sink: EventSink) -> Iterator[None]:
    """Attach an EventLogHandler to the routed loggers for the duration of a run."""
    quiet_libraries()
    handler = EventLogHandler(sink)
    loggers = [logging.getLogger(name) for name in ROUTED_LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.name == "core":
            lg.setLevel(logging.INFO)
        lg.propagate = False  # the root logger's stderr handler must not print them a second time
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
