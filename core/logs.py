"""Route the engine's and the libraries' log lines into events instead of onto the terminal.

transformers, datasets and accelerate print warnings and progress bars straight to stderr, which
would draw over a TUI and clutter headless progress. While a run is active their records go through
Python logging into a handler that emits `LogMessage` events; the front end decides where they show.
So do their `warnings.warn` calls (accelerate's and FSDP's among them), through
`logging.captureWarnings`, and torch's loggers (torch.distributed, FSDP, the compiler), which torch
gives stderr handlers of their own.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from core.events import EventSink, LogMessage

ROUTED_LOGGERS = ("core", "transformers", "datasets", "accelerate", "peft", "py.warnings")
"""`py.warnings` is where logging.captureWarnings sends warnings.warn calls."""


def quiet_libraries() -> None:
    """Keep transformers and datasets off the terminal: no tqdm bars, and their log records go
    through Python logging to whatever handlers the app or CLI set up, instead of straight to
    stderr. The NullHandlers stop Python's last-resort handler printing them when there are none."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    ds_logging.disable_progress_bar()
    for name in ("transformers", "datasets"):
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):  # datasets has no disable_default_handler(): its own
            if type(handler) is logging.StreamHandler:  # stderr handler would draw over the TUI
                lib.removeHandler(handler)
        if not any(isinstance(h, logging.NullHandler) for h in lib.handlers):
            lib.addHandler(logging.NullHandler())


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


def _torch_loggers() -> list[logging.Logger]:
    """torch's loggers that stop propagation: torch._logging gives them stderr handlers of their own
    (or none, leaving Python's last resort to print on stderr), so a record of torch.distributed or
    FSDP reaches the nearest of them and goes no further. Each needs the run's handler."""
    return [lg for name, lg in list(logging.root.manager.loggerDict.items())
            if isinstance(lg, logging.Logger) and (name == "torch" or name.startswith("torch.")) and not lg.propagate]


@contextlib.contextmanager
def logs_to_events(sink: EventSink) -> Iterator[None]:
    """Attach an EventLogHandler to the routed loggers, and to torch's in place of their stderr
    handlers, and capture warnings.warn, for the duration of a run."""
    quiet_libraries()
    handler = EventLogHandler(sink)
    loggers = [logging.getLogger(name) for name in ROUTED_LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    muted = {lg: [h for h in lg.handlers if type(h) is logging.StreamHandler] for lg in _torch_loggers()}
    showwarning = warnings.showwarning
    logging.captureWarnings(True)
    captured = warnings.showwarning is not showwarning  # else someone captures them already: left on after
    for lg in loggers:
        lg.addHandler(handler)
        if lg.name == "core":
            lg.setLevel(logging.INFO)
        lg.propagate = False  # the root logger's stderr handler must not print them a second time
    for lg, streams in muted.items():
        for stream in streams:
            lg.removeHandler(stream)
        lg.addHandler(handler)
    try:
        yield
    finally:
        if captured:
            logging.captureWarnings(False)
        for lg, streams in muted.items():
            lg.removeHandler(handler)
            for stream in streams:
                lg.addHandler(stream)
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
