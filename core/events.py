"""What the engine tells the world: typed, frozen, JSON-serialisable events and the sink protocol.

The engine never knows who listens. The run folder's `events.jsonl`, the headless progress bar and
the Textual app are all sinks of the same stream, so the log on disk is the run's whole history:
the runs browser and a re-attaching app rebuild everything from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, Protocol

from pydantic import TypeAdapter

from core.safe_read import open_regular


EndReason = Literal["completed", "stopped", "early-stopped"]


@dataclass(frozen=True)
class Event:
    """Base of all events; `type` is the tag written to JSON, `time` a Unix timestamp."""

    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def __init_subclass__(cls, tag: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tag:
            cls.type = tag

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event, tag="run_started"):
    """Sent once setup is done, before the first step of a run or of a resume."""

    run_id: str
    run_dir: str
    task: str
    model: str
    config_digest: str
    total_params: int
    trainable_params: int
    planned_steps: int
    steps_per_epoch: int
    train_rows: int
    validation_rows: int
    device: str
    precision: str
    world_size: int = 1
    resumed_from_step: int = 0
    data_digest: str = ""
    """core.data.PreparedData.digest of the rows it trains and evaluates ("" in runs started before it)."""


@dataclass(frozen=True)
class StepEvent(Event):
    """An event about optimizer step `step` (0 before the first), the x-axis of every chart."""

    step: int


@dataclass(frozen=True)
class StepMetrics(StepEvent, tag="step"):
    """Averages over the optimizer steps since the previous StepMetrics (sent a few times a second)."""

    epoch: float
    loss: float
    grad_norm: float | None
    lr: float
    tokens_per_s: float
    samples_per_s: float
    tokens_seen: int
    elapsed_s: float
    eta_s: float | None
    memory: dict[str, float] = field(default_factory=dict)
    eta_estimated: bool = False
    """Part of eta_s is a guess: work still to come (an evaluation, generations, a save) that the run
    has not timed yet (core.eta)."""


@dataclass(frozen=True)
class EvalResult(StepEvent, tag="eval"):
    """One evaluation on the validation rows; `is_best` by eval.metric, which picks the best step."""

    epoch: float
    metrics: dict[str, float]
    is_best: bool
    seconds: float
    tokens_per_s: float | None = None
    """Validation tokens (padding not counted, as StepMetrics counts them) over `seconds`, all
    processes together; None in event logs written before it was reported."""
    before_training: bool = False
    """The evaluation before the first step (eval.before_training, step 0): the "before" of the
    results' before -> after; it is never the best and does not count for early stopping."""
    untrained_head: bool = False
    """Before training, the model's task head was new (initialised at random): its metrics say what an
    untrained head scores, not what the pretrained model knows."""


@dataclass(frozen=True)
class SampleGenerated(StepEvent, tag="sample"):
    """Causal LM: a greedy generation for a validation prompt, beside the reference answer."""

    prompt: str
    output: str
    reference: str


@dataclass(frozen=True)
class CheckpointSaved(StepEvent, tag="checkpoint"):
    """A complete checkpoint is on disk at `path` (written atomically, so a resume may use it)."""

    path: str
    seconds: float


@dataclass(frozen=True)
class Paused(StepEvent, tag="paused"):
    """The run waits after optimizer step `step` until it is resumed or stopped."""


@dataclass(frozen=True)
class Resumed(StepEvent, tag="resumed"):
    """A paused run trains on (not a resume from a checkpoint: that starts with RunStarted)."""


@dataclass(frozen=True)
class MicroBatchHalved(StepEvent, tag="micro_batch_halved"):
    """Optimizer step `step` ran out of device memory (compute.oom_recovery): its partial gradients
    were dropped and it is taken again with `batch_size` rows per micro-batch and `grad_accum`
    micro-batches per step, the same rows per optimizer step as before. `reason`: the error's first line."""

    batch_size: int
    grad_accum: int
    reason: str


@dataclass(frozen=True)
class LogMessage(Event, tag="log"):
    """A log record from the engine or the libraries it drives (transformers, datasets, ...)."""

    level: Literal["debug", "info", "warning", "error", "critical"]
    logger: str
    message: str


@dataclass(frozen=True)
class RunFinished(StepEvent, tag="run_finished"):
    """`reason`: completed, stopped (by the user or a signal), or early-stopped."""

    reason: EndReason
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_step: int | None
    output_path: str | None
    last_checkpoint: str | None
    elapsed_s: float
    before_metrics: dict[str, float] = field(default_factory=dict)
    """The evaluation before the first step (eval.before_training); empty without one."""
    before_untrained_head: bool = False
    """That evaluation measured a new, untrained task head (kept across a resume, as before_metrics)."""
    output_step: int | None = None
    """The step whose weights output_path holds: the best evaluation's under early stopping
    (eval.patience), else the last step. None without a final model (or in runs before it was recorded)."""

    @property
    def output_metrics(self) -> dict[str, float]:
        """The evaluation of the model in output_path: the best one's when that model is the best step's."""
        if self.output_step is not None and self.output_step == self.best_step and self.output_step != self.step:
            return self.best_metrics
        return self.final_metrics


@dataclass(frozen=True)
class RunFailed(Event, tag="run_failed"):
    """`log_file`: where the traceback of an unexpected failure (a bug, not bad input) was written."""

    last_checkpoint: str | None
    message: str
    hint: str
    step: int = 0
    log_file: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (RunStarted, StepMetrics, EvalResult, SampleGenerated, CheckpointSaved, Paused, Resumed,
                MicroBatchHalved, LogMessage, RunFinished, RunFailed)
}


MAX_LINE_BYTES = 1 << 20
"""No event the engine writes comes near this (a sample generation is a few KB): a longer line of an
events.jsonl is skipped without being held whole, so a huge file cannot fill the reader's memory."""


@functools.cache
def _validator(cls: type[Event]) -> TypeAdapter:
    return TypeAdapter(cls)


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form (reading `events.jsonl`), each field checked against its
    type: a run folder may come from anyone, and a `"time": "soon"` would otherwise fail far from
    here (sorting runs, formatting a run's age, which an infinite time breaks too). Unknown fields
    (a newer version's) are ignored; a missing or wrong one raises ValueError (pydantic's
    ValidationError), KeyError or TypeError."""
    data = dict(data)
    event = _validator(EVENT_TYPES[data.pop("type")]).validate_python(data)
    if not math.isfinite(event.time):
        raise ValueError(f"time {event.time} is no moment")
    return event


class EventSink(Protocol):
    """Anything that receives events. Called on the training thread: keep it quick."""

    def emit(self, event: Event) -> None: ...


class JsonlSink:
    """Appends each event as one JSON line and flushes, so a crash loses at most the current line."""

    def __init__(self, path: str | Path) -> None:
        from core.atomic import no_follow

        self._file = open(path, "a+b", opener=no_follow)  # noqa: SIM115 - closed by close()
        if self._file.tell() > 0:
            self._file.seek(-1, 2)
            if self._file.read(1) != b"\n":  # a torn last line: never glue the next event onto it
                self._file.write(b"\n")

    def emit(self, event: Event) -> None:
        self._file.write((json.dumps(event.to_dict(), default=str) + "\n").encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Broadcast:
    """Sends each event to every sink it holds (none on the processes that do not report)."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def emit_failure(self, event: Event) -> None:
        """Tell every sink that can still hear it: on a full disk the event log cannot take the
        failure, and that must not hide the message from the terminal or the app."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except OSError:
                continue


class ListSink:
    """Keeps every event in memory: for tests and for callers that want the history afterwards."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


HISTORY_STEPS = 2000
"""The most step reports a client parses from a run's history (run_info, the first read of a
follower): an engine reports four times a second, 345,600 times in a day's run, which took a client
listing or attaching to it seconds to parse, while a chart shows a few hundred points (the app's
keep 400). Every event of another type is read."""
RECENT_STEPS = 200
"""Of HISTORY_STEPS, the newest reports, all kept: the shown throughput is a mean over the last
ones, and the chart's newest points are where a user looks."""
STEP_LINE = b'{"type": "step", '
"""How JsonlSink starts a step report's line: a line so started is known without parsing it."""


def _dropped(steps: list[int], most: int) -> set[int]:
    """Of the step reports at indices `steps`, those to leave out to keep `most`: the RECENT_STEPS
    newest stay, and of the others some evenly spread over the run, the first among them."""
    if len(steps) <= most:
        return set()
    recent = min(RECENT_STEPS, most)
    older, spread = steps[:-recent] if recent else steps, most - recent
    kept = {older[k * len(older) // spread] for k in range(spread)}
    return set(older) - kept


def _thinned(lines: list[bytes], most: int) -> list[bytes]:
    """`lines` with at most `most` step reports (_dropped), known by STEP_LINE: a line of another
    kind, or in another writer's form, stays."""
    dropped = _dropped([i for i, line in enumerate(lines) if line.startswith(STEP_LINE)], most)
    return [line for i, line in enumerate(lines) if i not in dropped] if dropped else lines


def thin_steps(events: list[Event], most: int) -> list[Event]:
    """`events` with at most `most` step reports, as _thinned leaves a log's lines."""
    dropped = _dropped([i for i, event in enumerate(events) if event.type == "step"], most)
    return [event for i, event in enumerate(events) if i not in dropped] if dropped else events


def parse_event_lines(lines: Iterable[bytes] | Iterable[str], most_steps: int | None = None) -> list[Event]:
    """The events of JSON lines from an events.jsonl; a line torn by a crash, or one that is no valid
    event, is skipped. `most_steps`: parse at most that many of the step reports of byte lines
    (_thinned), for a client that reads a run's history rather than follows it."""
    if most_steps is not None:
        lines = list(lines)
        if lines and isinstance(lines[0], bytes):
            lines = _thinned(lines, most_steps)
    events = []
    for line in lines:
        try:
            events.append(event_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
            continue
    return events


def read_events(path: str | Path, most_steps: int | None = None) -> list[Event]:
    """All events of a run's `events.jsonl` (but step reports beyond `most_steps`: parse_event_lines),
    read line by line; a torn line (crash mid-write), a line that is no valid event and one over
    MAX_LINE_BYTES are skipped. OSError when it is not a regular file (core.safe_read.open_regular: a
    FIFO there must not hang every client listing runs)."""
    with open_regular(path) as file:
        return parse_event_lines(_bounded_lines(file), most_steps)


def _bounded_lines(file: IO[bytes]) -> Iterator[bytes]:
    """The lines of `file`, at most MAX_LINE_BYTES each: a longer one is passed over in pieces."""
    while line := file.readline(MAX_LINE_BYTES + 1):
        if line.endswith(b"\n") or len(line) <= MAX_LINE_BYTES:
            yield line
            continue
        while (rest := file.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
