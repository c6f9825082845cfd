"""`sft-tui attach`: find the run to follow, and follow it in plain text for a terminal without the
app. The app's attach (sft_tui.app) reads the same run folder through the same modules."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.follow import EventFollower, follow
from core.liveness import live_record
from core.run_info import RunInfo, newest_live_run, read_run, run_info
from core.runs import RunPaths, how_to_go_on

POLL_S = 0.25
EXIT_FAILED = 1
EXIT_CRASHED = 4


def find_run(run_dir: str | None, runs_dir: str) -> RunInfo:
    """The run in `run_dir`, or the newest live run under `runs_dir`."""
    if run_dir is None:
        info = newest_live_run(runs_dir)
        if info is None:
            raise UserError(f"no run is training under {runs_dir}/",
                            "`sft-tui runs` lists the runs there; pass one: `sft-tui attach runs/<run>`"
                            " (or --runs-dir DIR)")
        return info
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise UserError(f"{run_dir} is not a run folder: it has no {paths.config.name}",
                        "pass a folder under runs/; `sft-tui runs` lists them")
    info = read_run(paths.root)
    if info.state == "unreadable":
        raise UserError(f"run {run_dir} cannot be read: {info.reason}",
                        "a run folder holds the files sft-tui wrote there; replace or remove the one named")
    return info


def ended_problem(info: RunInfo) -> UserError | None:
    """Why `info` has nothing live to attach to: it ended, or its engine died without a word."""
    if info.state == "crashed":
        kept = f"its last complete checkpoint is {info.last_checkpoint.name}" if info.last_checkpoint else \
            "it saved no checkpoint"
        why = f"; {info.reason}" if info.reason else ""  # which process failed first, when one said
        return UserError(f"run {info.paths.root} crashed: its engine ended without a final event at step "
                         f"{info.step}{why}", f"{kept}; {how_to_go_on(info.paths, info.last_checkpoint is not None)}")
    if not info.live:
        how = info.reason if info.state != "failed" else f"failed: {info.reason}"
        return UserError(f"run {info.paths.root} is not training: it {info.state} at step {info.step} ({how})",
                         "its summary: `sft-tui runs`, or the runs screen (6) in the app")
    return None


def follow_plain(info: RunInfo, display) -> int:
    """Print the run's whole history, then its live progress, until it ends (its exit status as
    `sft-tui train` would give it) or Ctrl+C, which leaves the run training. A run that has ended
    is its history and its status."""
    from sft_tui.train_command import EXIT_STOPPED

    follower = EventFollower(info.paths.events)

    def show(events) -> int | None:
        """Print `events`; the exit status when the last of them ends the run (a stopped run that
        was resumed goes on after its first end)."""
        code = None
        for event in events:
            display.emit(event)
            if event.type == "run_started":
                code = None
            elif event.type == "run_failed":
                code = EXIT_FAILED
            elif event.type == "run_finished":
                code = EXIT_STOPPED if event.reason == "stopped" else 0
        return code

    try:
        for events, alive in follow(follower, lambda: live_record(info.paths.engine) is not None, POLL_S):
            if (code := show(events)) is not None and not run_info(info.paths.root).live:
                return code  # (live after its end: resumed, by an engine whose first event is to come)
            if not alive:
                crash = ended_problem(run_info(info.paths.root))
                display.note(f"{crash.message}\nhint: {crash.hint.strip()}")
                return EXIT_CRASHED
    except KeyboardInterrupt:
        display.progress.stop()
        display.note(f"detached: the run goes on; attach again with `sft-tui attach {info.paths.root}`")
        return 0
