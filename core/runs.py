"""The run folder: one directory per run, holding its resolved config, event log, checkpoints and
final model (layout in DESIGN.md). Everything about a past run is read back from here."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from core.atomic import TMP_PREFIX, no_follow
from core.config import RunConfig, config_to_dict, is_folder_name, load_config, save_config
from core.errors import UserError, train_command
from core.events import read_events
from core.liveness import Heartbeat, live_record, write_record
from core.manifest import incomplete_checkpoints, latest_checkpoint


class RunPaths:
    """Where each part of a run lives in its folder (the layout in DESIGN.md); every module that
    reads or writes a run folder names its files through this."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.events = self.root / "events.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"
        self.error_log = self.root / "error.log"  # a failure's traceback: front ends name it, never print it
        self.lock = self.root / ".lock"
        self.engine = self.root / "engine.json"  # pid and start time of the engine writing the run
        self.engine_log = self.root / "engine.log"  # a detached engine's output
        self.commands = self.root / "commands"  # the control channel (core.commands)
        self.controller = self.root / "controller.json"  # the client that sends the commands


def foreign_problem(paths: RunPaths) -> UserError | None:
    """Why this user must not write the run folder `paths`: it belongs to another user, or it (or its
    checkpoints/) holds a symbolic link. Run folders are shared by copying (cp -r and tar keep
    links), and a link named events.jsonl, engine.log or commands turned the engine's appends,
    truncations and clean-ups on a file of the link's choosing: a review appended a command to
    ~/.bashrc and had an engine delete every *.json of another folder. None for a folder to be made."""
    try:
        owner = paths.root.stat().st_uid
    except (FileNotFoundError, NotADirectoryError):  # to be made (or runs_dir is a file: said when made)
        return None
    if owner != os.getuid():
        return UserError(f"run folder {paths.root} belongs to another user (uid {owner})",
                         "copy it to a folder of your own to resume it: `cp -rL RUN my-runs/` (-L copies the files "
                         "links point at)")
    if links := _links(paths):
        shown = ", ".join(links[:5]) + (f" and {len(links) - 5} more" if len(links) > 5 else "")
        return UserError(f"run folder {paths.root} has symbolic links in it: {shown}",
                         "a run folder holds files of its own: copy it with `cp -rL`, which replaces links by "
                         "the files they point at, or remove the links")
    return None


def _links(paths: RunPaths) -> list[str]:
    """The symbolic links among the run folder's entries and its checkpoints': any name there may be
    one sft-tui writes, its temporary files' included (a folder held a link for every pid)."""
    found = []
    for folder in (paths.root, paths.checkpoints):
        try:
            found += [str(entry.relative_to(paths.root)) for entry in sorted(folder.iterdir()) if entry.is_symlink()]
        except (NotADirectoryError, FileNotFoundError):
            continue
    return found


def config_digest(config: RunConfig) -> str:
    """Short stable hash of the resolved config: two runs with equal digests trained the same thing."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


CONTINUED = "-cont"
"""What a continued run's name adds to its parent's (core.lineage, new_run_id)."""


STARTED = re.compile(r"\d{8}-\d{6}-")
"""The start time (`YYYYmmdd-HHMMSS-`) a generated run name begins with (new_run_id)."""


def run_of_final(model: str) -> Path | None:
    """The run whose final model `model` is, or None: a continued run starts from `<parent>/final`,
    and that path is the whole record of its lineage (core.run_info, core.lineage)."""
    candidate = Path(model)
    parent = RunPaths(candidate.parent)
    return candidate.parent if candidate == parent.final and parent.config.is_file() else None


def new_run_id(config: RunConfig) -> str:
    """output.run_name, else `<start time>-<model>`. A model that is another run's final folder
    names the run after that one (`<start time>-<its model>-cont`), not after the folder `final`."""
    if config.output.run_name:
        return config.output.run_name
    if (parent := run_of_final(config.model.name_or_path)) is not None:  # `final` here: the working folder's name
        model = STARTED.sub("", parent.absolute().name, count=1) + CONTINUED
    else:
        model = Path(config.model.name_or_path.replace("demo:", "")).name or "model"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")[:40]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"


def claim_run_id(config: RunConfig) -> str:
    """new_run_id, with its folder created here when the name was generated, under a `-2`, `-3`
    suffix if taken: two runs started in the same second (a sweep's script, two terminals) took the
    same name, and the second was refused as in use. mkdir is atomic, so two processes never claim
    the same folder. An output.run_name is the user's and is left to create_run's checks."""
    run_id = new_run_id(config)
    if config.output.run_name:
        return run_id
    runs = Path(config.output.runs_dir)
    candidate, n = run_id, 1
    try:
        runs.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (runs / candidate).mkdir()
                return candidate
            except FileExistsError:
                n += 1
                candidate = f"{run_id}-{n}"
    except OSError as err:
        raise UserError(f"cannot create a run folder in {runs}: {err.strerror}", "check output.runs_dir") from None


def run_root(runs_dir: str | Path, run_id: str) -> Path:
    """`runs_dir/run_id`, refusing any id that is not one plain folder name: a run folder is
    created, replaced and cleaned up by this module, which must never reach outside runs_dir."""
    if not is_folder_name(run_id):
        raise UserError(f"output.run_name {run_id!r} is not a plain folder name",
                        "use letters, digits, '-', '_' or '.', e.g. my-run (it is created inside output.runs_dir)")
    return Path(runs_dir) / run_id


class RunLock:
    """An exclusive lock on a run folder for the lifetime of the engine that writes it.

    `fcntl.flock` on `.lock`: the kernel drops it when the process dies, however it dies, so a
    crashed run never needs unlocking by hand. The holder's pid is written into the file so that a
    refused second engine can name it."""

    def __init__(self, paths: RunPaths) -> None:
        import fcntl

        # 0600: flock needs only a descriptor, so a lock file other users can read, they could hold
        # (a review locked another user out of resuming); never through a link (foreign_problem)
        self._file = open(paths.lock, "a+", encoding="utf-8",  # noqa: SIM115 - closed by release()
                          opener=functools.partial(no_follow, mode=0o600))
        with contextlib.suppress(OSError):  # one made before, or copied with its mode, is narrowed too
            os.fchmod(self._file.fileno(), 0o600)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read(32).strip()
            self._file.close()
            raise self._refusal(paths, holder) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        self._record = paths.engine
        # for clients: the lock says "someone", this says who, and since when; the heartbeat that it
        # still trains, to another host sharing the folder
        self._heartbeat = Heartbeat(paths.engine, write_record(paths.engine))

    @staticmethod
    def _refusal(paths: RunPaths, holder: str) -> UserError:
        """Why the lock is refused. The pid in `.lock` is named, with a kill hint, only while it is
        the live engine that engine.json records on this host: anyone who can read `.lock` can hold
        it, and its text may be a long-dead engine's pid (since reused by another process) or
        anything else (`1; rm -rf ~`), which the hint must not ask the user to paste."""
        record = live_record(paths.engine)
        if record is not None and record.here and holder == str(record.pid):  # so a number, and alive
            return UserError(f"run folder {paths.root} is in use by another sft-tui engine (pid {holder})",
                             f"wait for it to end, or stop it with `kill -TERM {holder}` (it saves a checkpoint)")
        return UserError(f"run folder {paths.root} is in use: a process holds its lock ({paths.lock}), and it is "
                         "not a live sft-tui engine on record",
                         f"wait for it to end; `fuser -v {paths.lock}` names the process")

    def release(self) -> None:
        """Unlock, and remove the engine's record: an engine in a thread of a process that lives on
        (the app's --in-process runs, tests) would otherwise seem to train the run still. An engine
        that dies without releasing leaves its record, whose dead process says the run crashed."""
        if not self._file.closed:
            self._heartbeat.stop()
            self._record.unlink(missing_ok=True)
            self._file.close()


def how_to_go_on(paths: RunPaths, resumable: bool) -> str:
    """The command that carries on a run that ended early, for a hint: its resume when it has a
    checkpoint to resume from, else a new start of its config."""
    if resumable:
        return f"resume with `{train_command('--resume', paths.root)}`"
    return f"start it again with `{train_command(paths.config)}`"


def folder_identity(root: Path) -> tuple[int, int] | None:
    """The run folder's device and inode, None once no folder is at `root`: what moved_problem compares."""
    try:
        found = root.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def moved_problem(paths: RunPaths, identity: tuple[int, int] | None) -> UserError | None:
    """The run folder was moved or deleted under its engine, which writes by path: a save would make
    a new folder at the old place with only its checkpoints and final/, which no client lists, while
    the moved one's events said the run finished there."""
    if identity is None or folder_identity(paths.root) == identity:
        return None
    return UserError(f"run folder {paths.root} was moved or deleted while the run trained",
                     f"its checkpoints so far went with it: put it back at {paths.root} and "
                     f"{how_to_go_on(paths, resumable=True)} (or resume it where it is now)")


def holds_a_run(paths: RunPaths) -> bool:
    """Whether a run folder holds something worth keeping: a complete checkpoint or a final model.
    A folder of a start that failed (or was killed) before its first checkpoint does not."""
    return paths.final.exists() or latest_checkpoint(paths.checkpoints) is not None


def occupied_problem(paths: RunPaths) -> UserError | None:
    """Why a new run cannot be started in `paths` (it holds a run), or None."""
    if not holds_a_run(paths):
        return None
    return UserError(f"run folder {paths.root} already holds a run",
                     f"choose another output.run_name, or {how_to_go_on(paths, resumable=True)}")


def create_run(config: RunConfig, run_id: str) -> tuple[RunPaths, RunLock]:
    """Make (and lock) the run folder and write the config it runs with.

    A folder that holds a run is refused, and so is one that holds what sft-tui did not write; one
    left by a start that never saved a checkpoint is taken over with the new config, so a failed
    start never blocks its name."""
    paths = RunPaths(run_root(config.output.runs_dir, run_id))
    if problem := foreign_problem(paths) or not_a_stub_problem(paths):
        raise problem
    try:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create run folder {paths.root}: {err.strerror}", "check output.runs_dir") from None
    lock = RunLock(paths)
    if problem := occupied_problem(paths):
        lock.release()
        raise problem
    paths.events.unlink(missing_ok=True)
    shutil.rmtree(paths.checkpoints)  # nothing complete in it: interrupted writes only
    paths.checkpoints.mkdir()
    save_config(config, paths.config)
    return paths, lock


def not_a_stub_problem(paths: RunPaths) -> UserError | None:
    """An existing folder under the new run's name that holds files sft-tui did not write: a config
    that is not a run's, an event log of something else, checkpoints not named step-N. Taking it
    over deleted them (an output.run_name equal to a project folder's name lost its checkpoints)."""
    if not paths.root.is_dir():
        return None
    foreign = []
    if paths.config.is_file():
        try:
            load_config(paths.config)
        except UserError:
            foreign.append(paths.config.name)
    if paths.events.is_file() and paths.events.stat().st_size and not _has_events(paths):
        foreign.append(paths.events.name)
    if paths.checkpoints.is_dir():
        foreign += [f"{paths.checkpoints.name}/{p.name}" for p in paths.checkpoints.iterdir()
                    if not p.name.startswith(("step-", TMP_PREFIX))]
    if not foreign:
        return None
    return UserError(f"{paths.root} exists and is not an sft-tui run folder: it holds {', '.join(foreign)}",
                     "choose another output.run_name (the folder is left as it is)")


def _has_events(paths: RunPaths) -> bool:
    try:
        return bool(read_events(paths.events))
    except OSError:  # not a regular file: not an event log of ours
        return False


def anchored(config: RunConfig) -> RunConfig:
    """The config with its local inputs (data, model folder) made absolute, as a new run
    runs by it and keeps it: a run is resumed from its folder's config, and relative paths named
    files under the folder the run was started in, so a resume from anywhere else could not find its
    data. Its digest (RunStarted.config_digest) is the anchored config's."""
    from core.data.sources import is_local

    data = config.data
    changes = {"data": {"train": _absolute(data.train) if is_local(data.train) else data.train,
                        "validation": _absolute(data.validation) if data.validation and is_local(data.validation)
                        else data.validation}}
    if Path(config.model.name_or_path).expanduser().exists():
        changes["model"] = {"name_or_path": _absolute(config.model.name_or_path)}
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)
                                     for section, values in changes.items()})


def _absolute(path: str) -> str:
    return path if path.startswith("demo:") else str(Path(path).expanduser().absolute())


def discard_stub(paths: RunPaths) -> None:
    """Remove what a start that failed before its first checkpoint left: only the files this module
    writes, so a folder holding anything else is left in place."""
    if holds_a_run(paths):
        return
    for path in (paths.config, paths.events, paths.lock, paths.engine):
        path.unlink(missing_ok=True)
    for folder in (paths.checkpoints, paths.root):
        try:
            folder.rmdir()
        except OSError:
            return


def open_run(run_dir: str | Path) -> tuple[RunPaths, RunConfig]:
    """An existing run folder and its config, for resuming or inspecting it."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise UserError(f"{paths.root} is not a run folder: it has no {paths.config.name}", "pass a folder under runs/")
    return paths, load_config(paths.config)


def resume_problem(paths: RunPaths) -> UserError | None:
    """Why the run in `paths` cannot be resumed (it is complete, its config was edited, or it has no
    checkpoint), or None. Cheap: no torch, no model, so a resume fails before any loading."""
    try:
        finished = [e for e in read_events(paths.events, most_steps=0) if e.type in ("run_started", "run_finished")] \
            if paths.events.exists() else []
    except OSError as err:  # a FIFO or a link where the event log belongs (core.safe_read)
        return UserError(f"run {paths.root} cannot be read: {paths.events.name}: {err.strerror or err}",
                         "a run folder holds files of its own: copy it with `cp -rL` to resume it")
    if finished and finished[-1].type == "run_finished" and finished[-1].reason != "stopped":
        return UserError(f"run {paths.root} is complete ({finished[-1].reason} at step {finished[-1].step}"
                         + (", model in final/)" if paths.final.exists() else ")"),
                         f"start a new run from its config: `{train_command(paths.config, '--set', 'output.run_name=NEW')}`")
    if latest_checkpoint(paths.checkpoints) is None:
        found = incomplete_checkpoints(paths.checkpoints)
        return UserError(f"run {paths.root} has no complete checkpoint to resume from"
                         + (f" ({'; '.join(found)})" if found else " (it ended before its first checkpoint)"),
                         how_to_go_on(paths, resumable=False))
    started = next((e for e in finished if e.type == "run_started"), None)
    return _changed_config(paths, started.config_digest) if started is not None else None


def _changed_config(paths: RunPaths, started_with: str) -> UserError | None:
    """An edit of the run's config.yaml since it started: a resume continues the run by its
    checkpoint, whose schedule, data position and weights the edit would not fit (a new lr was
    ignored, a new batch size changed which rows the saved position means, a new model made every
    checkpoint look damaged)."""
    try:
        digest = config_digest(load_config(paths.config))
    except UserError as err:
        return err
    if digest == started_with:
        return None
    return UserError(f"{paths.config} was changed after the run started (digest {started_with} -> {digest}): "
                     "a resume continues the run as it was trained",
                     "undo the edit to resume, or train the edited config as a new run: "
                     f"`{train_command(paths.config, '--set', 'output.run_name=NEW')}`")


def latest_resumable(runs_dir: str | Path) -> Path | None:
    """The run folder under `runs_dir` a resume most likely means: of the runs `resume_problem`
    accepts and no engine trains now (those are for attaching), the one whose newest complete
    checkpoint was written last; None if there is none. Cheap enough for the UI thread: no torch,
    and the events of the newest candidates only."""
    found = []
    for root in Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else ():
        checkpoint = latest_checkpoint(RunPaths(root).checkpoints) if root.is_dir() else None
        if checkpoint is not None:
            found.append((checkpoint.stat().st_mtime, root))
    for _, root in sorted(found, reverse=True):
        if resume_problem(RunPaths(root)) is None and live_record(RunPaths(root).engine) is None:
            return root
    return None
