"""What a client can say about a run from its folder alone, without the engine's help: its state
(running, paused, finished, stopped, failed, crashed), progress, best metric, age and parent.
`sft-tui runs`, `sft-tui attach` and the app's runs screen all read runs through this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.events import HISTORY_STEPS, Event, read_events, thin_steps
from core.liveness import ProcessRecord, live_record
from core.manifest import latest_checkpoint
from core.rank_failure import crash_reason
from core.runs import RunPaths, run_of_final
from core.safe_read import read_small

LIVE_STATES = ("starting", "running", "paused")
STATES = (*LIVE_STATES, "finished", "stopped", "failed", "crashed", "unreadable")


@dataclass
class RunInfo:
    paths: RunPaths
    state: str
    """One of STATES. crashed: no engine runs it and its log has no final event. unreadable: its
    files cannot be read as a run's (damaged, or planted by someone else); `reason` says why."""
    engine: ProcessRecord | None
    """The live engine's record; None when none runs the run."""
    step: int = 0
    planned_steps: int | None = None
    best: tuple[str, float, int] | None = None
    """(metric, value, step) of the best evaluation so far."""
    updated: float = 0.0
    """Unix time of the run's last event (or of its folder, before any)."""
    parent: Path | None = None
    """The run whose final model this run started from (a continued run)."""
    reason: str = ""
    """How a run ended: completed/early-stopped (finished), or a failure's message."""
    last_checkpoint: Path | None = None
    task: str = ""
    events: list[Event] = field(default_factory=list, repr=False)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def name(self) -> str:
        return self.paths.root.name

    @property
    def age_s(self) -> float:
        return max(time.time() - self.updated, 0.0)

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "crashed", "failed") and self.last_checkpoint is not None


@dataclass
class EventFold:
    """What a run's events say, fed in the order of its log: run_info folds a whole log at once, and
    core.run_catalog feeds a live run's fold what its engine appended since, rather than read the log
    again every two seconds (0.26 s for a day's run, with HISTORY_STEPS of its step reports)."""

    events: list[Event] = field(default_factory=list)
    planned_steps: int | None = None
    step: int = 0
    task: str = ""
    best: Event | None = None
    """The last evaluation that was the best."""
    paused: bool = False
    final: Event | None = None
    """The run_finished or run_failed event of its latest start."""
    started: float = 0.0

    def feed(self, events: list[Event]) -> None:
        for event in events:
            kind = event.type
            if kind == "run_started":
                self.planned_steps, self.step, self.task = event.planned_steps, event.resumed_from_step, event.task
                self.final, self.paused, self.started = None, False, event.time
            elif kind == "step":
                self.step = event.step
            elif kind == "eval" and event.is_best and event.metrics:
                self.best = event
            elif kind in ("paused", "resumed"):
                self.paused = kind == "paused"
            elif kind in ("run_finished", "run_failed"):
                self.final = event
                self.step = event.step or self.step
        if events:  # a live run's fold grows 4 a second
            self.events = thin_steps([*self.events, *events], HISTORY_STEPS)


def run_info(root: str | Path, fold: EventFold | None = None) -> RunInfo:
    """The state of the run in `root`, read from its event log (or from `fold`, fed with it), its
    checkpoints and its engine record."""
    paths = RunPaths(Path(root))
    if fold is None:
        fold = EventFold()
        fold.feed(read_events(paths.events, HISTORY_STEPS) if paths.events.exists() else [])
    events = fold.events
    engine = live_record(paths.engine)
    config = config_dict(paths)
    info = RunInfo(paths, "crashed", engine, step=fold.step, planned_steps=fold.planned_steps, task=fold.task,
                   events=list(events), updated=events[-1].time if events else _mtime(paths.root),
                   parent=_parent(config), last_checkpoint=latest_checkpoint(paths.checkpoints))
    if (best := fold.best) is not None:
        chosen = (config.get("eval") or {}).get("metric")
        metric = chosen if chosen in best.metrics else next(iter(best.metrics))
        info.best = (metric, best.metrics[metric], best.step)
    final, paused, started = fold.final, fold.paused, fold.started
    # an engine started after the run's last end: a resume, whose run_started is yet to come
    resuming = final is not None and engine is not None and engine.since > final.time
    if final is not None and not resuming:
        if final.type == "run_failed":
            info.state, info.reason = "failed", final.message
        else:
            info.state = "stopped" if final.reason == "stopped" else "finished"
            info.reason = final.reason
    elif engine is not None:
        info.state = "starting" if resuming or not info.planned_steps else "paused" if paused else "running"
    else:  # crashed: one of several processes may have said why before rank 0 was ended for it
        info.reason = crash_reason(paths.root, since=started)
    return info


def read_run(root: Path, fold: EventFold | None = None) -> RunInfo:
    """run_info, or the run as unreadable with the reason when its folder cannot be read as a run:
    one damaged or hostile folder in a shared runs folder must not hide (or crash) the list of
    every run, in `sft-tui runs`, `sft-tui attach` and the app."""
    try:
        return run_info(root, fold)
    except Exception as err:  # noqa: BLE001 - whatever the folder holds, the other runs are still listed
        why = f"{err.strerror}: {Path(err.filename).name}" if isinstance(err, OSError) and err.filename \
            else f"{type(err).__name__}: {err}"
        return RunInfo(RunPaths(root), "unreadable", None, updated=_mtime(root), reason=why.splitlines()[0][:200])


def run_roots(runs_dir: str | Path) -> list[Path]:
    """The run folders under `runs_dir`: those with a config.yaml. A folder this user may not look
    into (another user's, mode 0700) is no run of theirs."""
    folder = Path(runs_dir)
    return [root for root in folder.iterdir() if _has_config(root)] if folder.is_dir() else []


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Every run folder under `runs_dir` (a folder with a config.yaml), the most recently active first."""
    return sorted(map(read_run, run_roots(runs_dir)), key=lambda info: info.updated, reverse=True)


def newest_live_run(runs_dir: str | Path) -> RunInfo | None:
    return next((info for info in list_runs(runs_dir) if info.live), None)


def config_dict(paths: RunPaths) -> dict:
    """The run's config.yaml as plain data (no validation: a client lists runs of other versions
    too); {} when it cannot be read, or holds YAML aliases (_NoAliasLoader)."""
    try:
        data = yaml.load(read_small(paths.config), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except (OSError, ValueError, RecursionError, yaml.YAMLError):  # RecursionError: nested too deep
        return {}
    return data if isinstance(data, dict) else {}


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing aliases: `*name` repeats a subtree without copying it in the
    file, so a few hundred bytes of nested aliases become gigabytes once a config is flattened or
    printed (the runs screen's diff). sft-tui writes no alias in a run's config."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "a run's config holds no YAML alias",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _has_config(root: Path) -> bool:
    try:
        return (root / "config.yaml").is_file()
    except OSError:
        return False


def _parent(config: dict) -> Path | None:
    """A continued run starts from another run's final model: its model path is `<parent>/final`."""
    model = (config.get("model") or {}).get("name_or_path")
    if not isinstance(model, str):
        return None
    return run_of_final(model)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
