"""The runs screen (step 6) driven through the real app: the table of real tiny runs, comparing two
(overlaid curves, config diff), loading a run's config into the draft, continuing a finished run
from its final model and resuming a stopped one (its snapshot is in tests/test_snapshots.py)."""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from pathlib import Path

import pytest

from core.config import config_to_dict, example_config, load_config, parse_config, save_config
from core.events import EvalResult, JsonlSink, RunFinished, RunStarted, StepMetrics
from core.run_info import run_info
from sft_tui.app import SftApp, create_app
from sft_tui.format.compare import config_diff, flatten, loss_curve
from sft_tui.screens.runs import RunsScreen
from sft_tui.widgets.runs.diff import ConfigDiff
from sft_tui.widgets.runs.table import MARK, RunTable
from helpers import StopAt, settle, visible_text
from test_app_train import lm_config_file

T0 = 1_700_000_000.0
"""The time of the synthetic runs' events: fixed, so their rows and snapshot never change."""


# ---- runs written without training (synthetic events), for the layout and the snapshot ----------
def write_fake_run(runs_dir: Path, name: str, lr: float, end: str | None = "completed", steps: int = 40,
                   metric: str = "loss") -> Path:
    """A run folder with a valid config and an events.jsonl of smooth made-up curves: `end` is the
    reason of its RunFinished (None: no final event, a crashed run)."""
    root = runs_dir / name
    root.mkdir(parents=True)
    (root / "checkpoints").mkdir()
    config = parse_config({
        "task": "causal-lm", "seed": 3, "model": {"name_or_path": "models/tiny-llama"},
        "data": {"train": "data/sft.jsonl", "max_length": 32},
        "optim": {"lr": lr, "batch_size": 8}, "schedule": {"max_steps": steps},
        "eval": {"every_steps": 10, "metric": metric}, "output": {"runs_dir": str(runs_dir), "run_name": name},
    })
    save_config(config, root / "config.yaml")
    sink = JsonlSink(root / "events.jsonl")
    fall = 1000 * lr
    sink.emit(RunStarted(run_id=name, run_dir=str(root), task="causal-lm", model="tiny-llama", config_digest="0",
                         total_params=1000, trainable_params=1000, planned_steps=steps, steps_per_epoch=10,
                         train_rows=80, validation_rows=20, device="cpu", precision="fp32", time=T0))
    last = steps if end == "completed" else steps // 2
    for step in range(1, last + 1):
        loss = 1.0 + 3.0 * math.exp(-fall * step / steps)
        sink.emit(StepMetrics(step=step, epoch=step / 10, loss=loss, lr=lr, grad_norm=1.0, tokens_per_s=100.0,
                              samples_per_s=10.0, tokens_seen=step * 100, elapsed_s=step, eta_s=0.0, time=T0 + step))
        if step % 10 == 0:
            sink.emit(EvalResult(step=step, epoch=step / 10, metrics={"loss": loss + 0.2, "perplexity": math.exp(loss)},
                                 is_best=True, seconds=0.1, time=T0 + step))
    if end is not None:
        sink.emit(RunFinished(step=last, reason=end, final_metrics={}, best_metrics={}, best_step=last,
                              output_path=None, last_checkpoint=None, elapsed_s=last, time=T0 + last + 1))
    sink.close()
    return root


def draft_over(runs: Path) -> Path:
    """The causal-LM demo's config with `runs` as its runs_dir, saved beside that folder as draft.yaml."""
    draft = config_to_dict(example_config("causal-lm"))
    draft["output"]["runs_dir"] = str(runs)
    path = runs.parent / "draft.yaml"
    save_config(parse_config(draft), path)
    return path


def fake_runs_config(tmp_path: Path) -> Path:
    """A draft config whose runs_dir holds three synthetic runs: finished, stopped and crashed."""
    runs = tmp_path / "runs"
    write_fake_run(runs, "lm-lr3e-3", 3e-3)
    write_fake_run(runs, "lm-lr1e-3", 1e-3, end="stopped")
    write_fake_run(runs, "lm-crashed", 2e-3, end=None)
    return draft_over(runs)


async def open_runs(pilot) -> RunsScreen:
    await pilot.pause()
    await pilot.press("escape", "6")  # out of the model's path box, to step 6
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    return screen


async def mark(pilot, screen: RunsScreen, *names: str) -> None:
    """Move the cursor to each named run and mark it with space."""
    table = screen.query_one(RunTable)
    for name in names:
        key = next(key for key, info in table.infos.items() if info.name == name)
        table.move_cursor(row=table.get_row_index(key))
        await pilot.press("space")
    await pilot.pause()


async def two_fake_runs_marked(pilot) -> None:
    """The runs screen with the finished and the stopped synthetic run marked (the snapshot's state)."""
    screen = await open_runs(pilot)
    await mark(pilot, screen, "lm-lr3e-3", "lm-lr1e-3")
    await pilot.pause(0.2)


# ---- two real tiny runs, trained once for the module --------------------------------------------
def with_changes(config, **dotted):
    """`config` with `section__field=value` changes, validated again."""
    data = config_to_dict(config)
    for key, value in dotted.items():
        section, field = key.split("__")
        data[section][field] = value
    return parse_config(data)


@pytest.fixture(scope="module")
def real_runs(tiny_model_factory, tmp_path_factory) -> Path:
    """A draft config whose runs_dir holds two real runs of the tiny LM that differ in lr only:
    `lr-3e-3` trained to the end (final/ saved), `lr-1e-3` stopped at step 6 with a checkpoint."""
    from core.engine import train

    tmp = tmp_path_factory.mktemp("runs-screen")
    base = load_config(lm_config_file(tmp, tiny_model_factory("llama"), eval={"num_samples": 0},
                                      checkpoint={"every_steps": 5}))
    train(with_changes(base, optim__lr=3e-3, output__run_name="lr-3e-3"), [], report_interval_s=0)
    train(with_changes(base, optim__lr=1e-3, output__run_name="lr-1e-3"), [], StopAt(6), report_interval_s=0)
    return tmp / "config.yaml"


@pytest.fixture
def launched(monkeypatch) -> list[dict]:
    """What SftApp.launch_run and attach_run were asked to do (they start engines; not here)."""
    calls: list[dict] = []
    monkeypatch.setattr(SftApp, "launch_run", lambda self, config=None, resume_dir=None: calls.append(
        {"config": config, "resume_dir": resume_dir}), raising=False)
    monkeypatch.setattr(SftApp, "attach_run", lambda self, run_dir: calls.append({"attach": run_dir}),
                        raising=False)
    return calls


def notes(app) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


async def select(pilot, screen: RunsScreen, name: str) -> None:
    table = screen.query_one(RunTable)
    key = next(key for key, info in table.infos.items() if info.name == name)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


def test_an_early_ended_run_lists_where_its_resume_starts(tmp_path):
    """`sft-tui runs` and the runs screen said "crashed 20/40" of a run whose last checkpoint was
    step 10: read as a resume from step 20, and a run with no checkpoint at all read the same. They
    list the steps a resume keeps."""
    from core.manifest import write_manifest
    from sft_tui.format.runs import step_text

    crashed = write_fake_run(tmp_path, "crashed", 1e-3, end=None)  # its last step logged: 20
    assert step_text(run_info(crashed)) == "0/40"
    for step in (10, 20):
        folder = crashed / "checkpoints" / f"step-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        write_manifest(folder, step)
        assert step_text(run_info(crashed)) == f"{step}/40"
    assert step_text(run_info(write_fake_run(tmp_path, "done", 1e-3))) == "40/40"


async def test_two_real_runs_are_listed_compared_and_diffed(real_runs):
    runs = real_runs.parent / "runs"
    app = create_app(real_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunTable)
        rows = {table.get_row_at(i)[1]: table.get_row_at(i) for i in range(table.row_count)}
        assert set(rows) == {"lr-3e-3", "lr-1e-3"}
        assert str(rows["lr-3e-3"][2]) == "finished" and rows["lr-3e-3"][3] == "20/20"
        assert str(rows["lr-1e-3"][2]) == "stopped" and rows["lr-1e-3"][3] == "6/20"
        assert rows["lr-3e-3"][2].style == "bold" and rows["lr-1e-3"][2].style == "yellow"  # state colours

        await mark(pilot, screen, "lr-3e-3", "lr-1e-3")
        assert [str(table.get_row_at(i)[0]) for i in range(2)] == [MARK, MARK]
        curves = screen.query_one("#runs-curves")
        assert [name for name, _, _ in curves.shown] == ["lr-3e-3", "lr-1e-3"]
        for name, loss, evals in curves.shown:
            events = run_info(runs / name).events
            assert loss == loss_curve(events) and len(loss) == (20 if name == "lr-3e-3" else 6)
            assert [step for step, _ in evals] == ([0, 5, 10, 15, 20] if name == "lr-3e-3" else [0, 5])  # from step 0
        assert "lr-3e-3" in str(screen.query_one("#curves-legend").render())

        diff = screen.query_one(ConfigDiff)
        assert diff.display and diff.keys == ["optim.lr"]  # not output.run_name: every two runs differ in it
        assert [str(c) for c in diff.get_row("optim.lr")] == ["optim.lr", "0.003", "0.001"]
        assert "optim.batch_size" not in diff.keys and "model.name_or_path" not in diff.keys

        await pilot.press("escape")  # unmark all: the curves follow the cursor, the diff asks for marks
        assert not table.marked and len(curves.shown) == 1 and not diff.display


async def test_at_80x24_compared_runs_leave_their_curves_room_in_a_long_list(real_runs, tmp_path):
    """Eight runs, two compared that differ in five keys: the table's 7 rows and the diff's 5 left
    the curves two rows of plot. While runs are marked the table and the diff give rows up (both scroll)."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(real_runs.parent / "runs", runs)
    base = load_config(runs / "lr-1e-3" / "config.yaml")
    for i in range(6):
        shutil.copytree(runs / "lr-1e-3", runs / f"x{i}")
        save_config(with_changes(base, output__run_name=f"x{i}", optim__batch_size=4 + i, optim__max_grad_norm=2.0 + i,
                                 optim__weight_decay=0.1 * i, schedule__warmup_steps=i, eval__every_steps=3 + i),
                    runs / f"x{i}" / "config.yaml")
    draft = tmp_path / "draft.yaml"
    save_config(with_changes(base, output__runs_dir=str(runs), output__run_name=None), draft)
    app = create_app(draft)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3")
        await pilot.press("space")
        await select(pilot, screen, "x5")
        await pilot.press("space")
        await settle(pilot)
        assert len(screen.query_one(ConfigDiff).keys) >= 5
        plots = screen.query("#curves-plots > *")
        assert plots and all(plot.size.height >= 8 for plot in plots)


async def test_l_loads_a_runs_config_into_the_draft_with_a_new_name(real_runs):
    app = create_app(real_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-1e-3")
        assert app.session.config.optim.lr != 1e-3
        await pilot.press("l")
        assert app.session.config.optim.lr == 1e-3 and app.session.config.output.run_name is None
        assert "lr-1e-3" in notes(app) and "run_name cleared" in notes(app)


async def test_n_continues_a_finished_run_from_its_final_model(real_runs, launched):
    runs = real_runs.parent / "runs"
    app = create_app(real_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3")
        await pilot.press("n")
        dialog = app.screen
        dialog.query_one("#continue-amount").value = "2"
        await pilot.press("enter")
        await pilot.pause()
        config = launched[-1]["config"]
        assert config.model.name_or_path == str(runs / "lr-3e-3" / "final")
        assert (config.schedule.epochs, config.schedule.max_steps) == (2, None)
        assert config.output.run_name == "lr-3e-3-cont" and config.output.runs_dir == str(runs)
        assert config.optim.lr == 3e-3  # the rest is the parent's config

        await pilot.press("n")  # steps instead: the unit is a radio button; and a lower peak lr
        dialog = app.screen
        assert dialog.query_one("#continue-lr").value == "0.003"  # the parent's, which the schedule climbs to again
        dialog.query_one("#continue-amount").value = "5"
        dialog.query_one("#unit-steps").value = True
        dialog.query_one("#continue-lr").value = "fast"
        await pilot.pause()
        dialog.query_one("#continue-amount").focus()
        await pilot.press("enter")
        assert "type a learning rate, e.g. 0.0003" in app.screen.error and len(launched) == 1
        dialog.query_one("#continue-lr").value = "3e-4"
        await pilot.press("enter")
        await pilot.pause()
        assert launched[-1]["config"].schedule.max_steps == 5 and launched[-1]["config"].optim.lr == 3e-4

        await pilot.press("n")  # a bad amount is told in the dialog, which stays open
        app.screen.query_one("#continue-amount").value = "many"
        await pilot.press("enter")
        assert "type a number of epochs" in app.screen.error and len(launched) == 2
        await pilot.press("escape")

        await select(pilot, screen, "lr-1e-3")
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen) and len(launched) == 2
        assert "did not finish (stopped at step 6)" in notes(app)


async def test_r_resumes_a_stopped_run_and_refuses_a_complete_one(real_runs, launched):
    runs = real_runs.parent / "runs"
    app = create_app(real_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3")
        await pilot.press("r")
        assert not launched and "is complete (completed at step 20)" in notes(app)
        await select(pilot, screen, "lr-1e-3")
        await pilot.press("r")
        assert launched == [{"config": None, "resume_dir": runs / "lr-1e-3"}]
        await pilot.press("enter")
        assert launched[-1] == {"attach": runs / "lr-1e-3"}


# ---- synthetic runs: states, refusals, refreshing, bad input, a small terminal -------------------
def make_live(root: Path) -> None:
    """Give a crashed synthetic run a live engine: this test process's own record."""
    from core.liveness import write_record
    from core.runs import RunPaths

    write_record(RunPaths(root).engine)


async def test_a_live_run_is_attached_not_resumed_and_a_run_without_final_is_not_continued(tmp_path, launched):
    config = fake_runs_config(tmp_path)
    make_live(tmp_path / "runs" / "lm-crashed")
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        assert screen.query_one(RunTable).infos[str(tmp_path / "runs" / "lm-crashed")].state == "running"
        await select(pilot, screen, "lm-crashed")
        await pilot.press("r")
        assert not launched and "is running now: Enter attaches to it" in notes(app)
        await pilot.press("enter")
        assert launched == [{"attach": tmp_path / "runs" / "lm-crashed"}]

        await select(pilot, screen, "lm-lr3e-3")  # finished, but saved no final/
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen) and len(launched) == 1
        assert "saved no final model" in notes(app) and "output.save_final" in notes(app)

        await select(pilot, screen, "lm-lr1e-3")  # stopped without a complete checkpoint
        await pilot.press("r")
        assert len(launched) == 1 and "no complete checkpoint" in notes(app)


async def test_the_table_follows_the_folder_and_skips_what_is_not_a_run(tmp_path):
    config = fake_runs_config(tmp_path)
    (tmp_path / "runs" / "notes").mkdir()  # no config.yaml: not a run
    (tmp_path / "runs" / "notes" / "todo.txt").write_text("x")
    (tmp_path / "runs" / "stray.txt").write_text("x")
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunTable)
        assert sorted(info.name for info in table.infos.values()) == ["lm-crashed", "lm-lr1e-3", "lm-lr3e-3"]
        write_fake_run(tmp_path / "runs", "lm-new", 5e-3)
        await pilot.pause(2.5)  # the next refresh finds it
        await settle(pilot)
        assert "lm-new" in {info.name for info in table.infos.values()}


async def test_a_runs_dir_that_does_not_exist_says_where_it_looked(tmp_path):
    app = create_app(draft_over(tmp_path / "nowhere"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs(pilot)
        assert screen.query_one(RunTable).row_count == 0
        empty = str(screen.query_one("#runs-empty").render())
        assert str(tmp_path / "nowhere") in empty and "does not exist yet" in empty and "step 5" in empty
        await pilot.press("r", "n", "l", "enter")  # nothing to act on: told, nothing breaks
        assert "no run here" in notes(app)


async def test_compare_is_usable_at_80x24(tmp_path):
    app = create_app(fake_runs_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await two_fake_runs_marked(pilot)
        # the diff as tall as its rows: with a fixed 7 the curves had one row of plot (a review: "unusable")
        assert app.screen.query_one("#curves-loss").size.height >= 10
        text = visible_text(app)
        for shown in ("lm-lr3e-3", "lm-lr1e-3", "lm-crashed", "train loss", "eval loss", "config diff",
                      "optim.lr", "Open", "Mark", "Resume", "Continue"):
            assert shown in text, shown
        await pilot.press("m")  # the eval chart cycles through the metrics both runs report
        assert "eval perplexity" in visible_text(app)


async def test_at_80_columns_long_run_names_give_up_their_middle_and_state_to_age_stay(tmp_path):
    """Run names hold the model's name: with a 35-character model the name pushed the best metric
    half out of an 80-column table, and the age out of it."""
    runs = tmp_path / "runs"
    long_name = "20261203-114237-smollm2-135m-instruct-finetuned-v3"
    write_fake_run(runs, long_name, 3e-3)
    write_fake_run(runs, "20261203-120000-minilm", 1e-3, end="stopped")
    app = create_app(draft_over(runs))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunTable)
        lines = visible_text(app).splitlines()
        header = next(line for line in lines if " run " in line and " best " in line)
        assert "age" in header
        row = next(line for line in lines if "20261203-114237-" in line and "…" in line)
        assert row.split("…")[1].split()[0].endswith("-v3")  # its start time whole and its end, the middle given up
        assert re.search(r"finished +40/40 +loss \d\.\d{4} @40 +\d+d", row)  # the whole best metric, the age
        assert "20261203-120000-minilm" in visible_text(app)  # a short name stays whole
        assert table.infos[str(runs / long_name)].name == long_name
        await pilot.resize_terminal(160, 40)
        await pilot.pause()
        assert long_name in visible_text(app)  # room again: the whole name

# ---- the rules behind the screen ------------------------------------------------------------------
def test_config_diff_keeps_only_keys_that_differ():
    a = {"optim": {"lr": 0.003, "batch_size": 8}, "freeze": {"rules": []}, "output": {"run_name": None}}
    b = {"optim": {"lr": 0.001, "batch_size": 8}, "freeze": {"rules": [{"match": "x", "train": False}]},
         "output": {"run_name": "b"}, "new": {"key": True}}
    assert flatten(a) == {"optim.lr": 0.003, "optim.batch_size": 8, "freeze.rules": [], "output.run_name": None}
    assert config_diff([a, b]) == [  # output.run_name left out: the columns' headers name the runs
        ("optim.lr", ["0.003", "0.001"]),
        ("freeze.rules", ["[]", '[{"match": "x", "train": false}]']),
        ("new.key", ["-", "true"]),
    ]
    assert config_diff([a, a]) == []


def test_curves_keep_the_last_value_of_a_step_trained_again_after_a_resume():
    def step(n, loss):
        return StepMetrics(step=n, epoch=0.0, loss=loss, lr=0.1, grad_norm=None, tokens_per_s=1.0,
                           samples_per_s=1.0, tokens_seen=0, elapsed_s=0.0, eta_s=None)

    assert loss_curve([step(1, 3.0), step(2, 2.0), step(3, 1.5), step(3, 1.4), step(4, 1.2)]) == [
        (1, 3.0), (2, 2.0), (3, 1.4), (4, 1.2)]


def test_the_catalog_reads_again_only_runs_that_changed_or_live(tmp_path, monkeypatch):
    """An ended run that did not change is not read again. A live run is asked about every time, but
    its log is followed: only what its engine appended is read (a day's log took 0.26 s each time),
    and what the run says follows it, as a whole read of the log would."""
    import core.run_catalog
    from core.follow import EventFollower
    from core.run_info import run_info

    runs = tmp_path / "runs"
    write_fake_run(runs, "done", 1e-3)
    write_fake_run(runs, "live", 1e-3, end=None)
    make_live(runs / "live")
    read, bytes_read = [], []
    real, real_read_new = core.run_catalog.read_run, EventFollower.read_new
    monkeypatch.setattr(core.run_catalog, "read_run",
                        lambda root, fold=None: read.append((root.name, fold is not None)) or real(root, fold))

    def counted(follower):
        before = follower._offset
        events = real_read_new(follower)
        bytes_read.append(follower._offset - before)
        return events

    monkeypatch.setattr(EventFollower, "read_new", counted)
    catalog = core.run_catalog.RunCatalog()
    assert {info.name: info.state for info in catalog.read(runs)} == {"done": "finished", "live": "running"}
    assert sorted(read) == [("done", False), ("live", True)]  # a live run's log is followed from the first read
    read.clear()
    catalog.read(runs)
    assert read == [("live", True)]
    sink = JsonlSink(runs / "live" / "events.jsonl")
    sink.emit(StepMetrics(step=21, epoch=2.1, loss=1.5, lr=1e-3, grad_norm=1.0, tokens_per_s=100.0, samples_per_s=10.0,
                          tokens_seen=2100, elapsed_s=21, eta_s=0.0, time=T0 + 21))
    sink.emit(EvalResult(step=21, epoch=2.1, metrics={"loss": 1.1}, is_best=True, seconds=0.1, time=T0 + 21))
    sink.close()
    bytes_read.clear()
    live = next(info for info in catalog.read(runs) if info.name == "live")
    appended = len("".join(line + "\n" for line in
                           (runs / "live" / "events.jsonl").read_text(encoding="utf-8").splitlines()[-2:]))
    assert bytes_read == [appended]  # the two lines, not the log
    whole = run_info(runs / "live")
    assert (live.step, live.best, live.updated, live.state) == (whole.step, whole.best, whole.updated, whole.state) \
        == (21, ("loss", 1.1, 21), T0 + 21, "running")
    assert live.events == whole.events
    with (runs / "done" / "events.jsonl").open("a") as log:
        log.write("\n")
    read.clear()
    catalog.read(runs)
    assert sorted(read) == [("done", False), ("live", True)]
    (runs / "live" / "events.jsonl").unlink()  # a start that failed, taken over by a new one: a new log
    write_fake_run(runs / "new", "live", 1e-3, end=None, steps=6)
    (runs / "new" / "live" / "events.jsonl").rename(runs / "live" / "events.jsonl")
    live = next(info for info in catalog.read(runs) if info.name == "live")
    assert live.events == run_info(runs / "live").events and live.step == 3  # the new log alone


# ---- a real continuation: the new run records its parent and starts from the finished weights -----
async def test_a_continued_run_records_its_parent_and_starts_from_the_finished_weights(real_runs, launched, tmp_path):
    import shutil

    from core.engine import train
    from core.events import read_events

    runs = tmp_path / "runs"  # a copy: the continuation adds a run folder beside its parent
    shutil.copytree(real_runs.parent / "runs", runs)
    draft = load_config(real_runs)
    path = tmp_path / "draft.yaml"
    save_config(draft.model_copy(update={"output": draft.output.model_copy(update={"runs_dir": str(runs)})}), path)
    app = create_app(path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3")
        await pilot.press("n", "enter")  # one more epoch, the dialog's default
        await pilot.pause()
    config = launched[-1]["config"]
    assert (config.schedule.epochs, config.schedule.max_steps, config.output.run_name) == (1, None, "lr-3e-3-cont")

    train(config, [], report_interval_s=0)
    child, parent = runs / "lr-3e-3-cont", runs / "lr-3e-3"
    assert run_info(child).parent == parent and run_info(child).state == "finished"
    parent_losses = loss_curve(read_events(parent / "events.jsonl"))
    child_losses = loss_curve(read_events(child / "events.jsonl"))
    first, last, continued = parent_losses[0][1], parent_losses[-1][1], child_losses[0][1]
    assert abs(continued - last) < 0.25 * (first - last), (first, last, continued)  # not back at the start

    async with create_app(path).run_test(size=(80, 24)) as pilot:  # the parent column is cut there
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3-cont")
        assert "continued from lr-3e-3" in str(screen.query_one("#curves-legend").render())


def test_a_continued_classifier_keeps_its_trained_head(tiny_model_factory, tmp_path):
    """Continuing loads <parent>/final with the same labels: the trained head is loaded, not replaced
    by a new one (core.models replaces a head only when its shape differs)."""
    import torch
    from safetensors.torch import load_file

    from core.engine import train
    from core.events import read_events
    from core.lineage import continued_config
    from core.models import load_model
    from test_app_train import cls_config_file

    train(load_config(cls_config_file(tmp_path, tiny_model_factory("bert"))), [], report_interval_s=0)
    parent = tmp_path / "runs" / "cls"
    config = continued_config(parent, max_steps=2)
    id2label = json.loads((parent / "final" / "config.json").read_text())["id2label"]
    model = load_model(config.model, "classification", [id2label[str(i)] for i in range(len(id2label))])
    saved = load_file(str(parent / "final" / "model.safetensors"))
    head = {name: tensor for name, tensor in model.state_dict().items() if name.startswith("classifier")}
    assert head and all(torch.equal(tensor, saved[name]) for name, tensor in head.items())

    train(config, [], report_interval_s=0)

    def head_news(run: Path) -> list[str]:
        return [e.message for e in read_events(run / "events.jsonl")
                if e.type == "log" and "new task head" in e.message]

    assert head_news(parent) and not head_news(tmp_path / "runs" / "cls-cont")


def test_a_lora_run_continues_from_its_merged_model_or_is_refused_before_the_dialog(tiny_model_factory, tmp_path):
    """Continue pointed the new run at a LoRA run's final/, which holds only the adapter: the run
    failed with "final is not a model folder: no config.json"."""
    from core.engine import train
    from core.lineage import continue_problem, continued_config
    from core.run_info import run_info
    from test_app_train import cls_config_file

    config = load_config(cls_config_file(tmp_path, tiny_model_factory("bert")))
    for name, merge in (("adapter", False), ("merged", True)):
        config.output.run_name, config.lora.enabled, config.lora.merge_on_export = name, True, merge
        train(config, [], report_interval_s=0)
    adapter, merged = tmp_path / "runs" / "adapter", tmp_path / "runs" / "merged"
    problem = continue_problem(run_info(adapter))
    assert problem is not None and "saved a LoRA adapter, which a run cannot start from" in problem.message
    assert "lora.merge_on_export true" in problem.hint
    assert continue_problem(run_info(merged)) is None
    continued = continued_config(merged, max_steps=2)
    assert continued.model.name_or_path == str(merged / "final" / "merged")
    assert train(continued, [], report_interval_s=0).reason == "completed"


@pytest.mark.skipif("in_process" not in inspect.signature(create_app).parameters,
                    reason="needs SftApp.launch_run and create_app(in_process=...) (the detached-engine work)")
async def test_n_through_the_app_trains_a_new_run_under_its_parent(real_runs, tmp_path):
    """The whole path without stand-ins: n, the dialog's default (one more epoch), SftApp.launch_run
    (in-process here, to stay quick), and the finished child in the table naming its parent."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(real_runs.parent / "runs", runs)
    draft = load_config(real_runs)
    path = tmp_path / "draft.yaml"
    save_config(draft.model_copy(update={"output": draft.output.model_copy(update={"runs_dir": str(runs)})}), path)
    app = create_app(path, in_process=True)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        await select(pilot, screen, "lr-3e-3")
        await pilot.press("n", "enter")
        deadline = time.monotonic() + 120
        while not app.run_state.ended and time.monotonic() < deadline:
            await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        assert app.current_mode == "train"
        child = run_info(runs / "lr-3e-3-cont")
        assert child.state == "finished" and child.parent == runs / "lr-3e-3"
        await pilot.press("6")
        await settle(pilot)
        row = screen.query_one(RunTable).get_row(str(runs / "lr-3e-3-cont"))
        assert row[-1] == "lr-3e-3"  # the parent column


async def test_at_80x24_every_run_and_the_whole_diff_are_reached_from_the_keyboard(tmp_path):
    """Nine runs in a table of six lines, and a diff under the charts: the cursor brings the last run
    into view, and Tab takes the focus to the diff, whose rows scroll the same way."""
    path = fake_runs_config(tmp_path)
    for i in range(6):
        write_fake_run(tmp_path / "runs", f"lm-extra-{i}", 1e-4 * (i + 1))
    app = create_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunTable)
        assert table.row_count == 9 and app.focused is table
        last = next(info.name for key, info in table.infos.items() if table.get_row_index(key) == 8)
        assert last not in visible_text(app)
        await pilot.press(*["down"] * 8)
        assert last in visible_text(app)
        await pilot.press("space", "up", "space")
        await pilot.press("tab")
        assert isinstance(app.focused, ConfigDiff)
        assert "optim.lr" in visible_text(app)


def test_sft_tui_runs_prints_whole_run_names_at_80_columns(tmp_path, monkeypatch, capsys):
    """`sft-tui runs` over SSH: the names are what `sft-tui attach runs/<name>` takes, so they are
    never cut (it printed "20261203-195351-mi…" at 80 columns). Where the table fits, one line a run;
    where a long model name leaves no room for the other columns, each name on a line of its own and
    its state and step under it (the table cut them to "running (pid 97…" and "7/…")."""
    from sft_tui.cli import main

    def printed(names: list[str]) -> list[str]:
        for name in names:
            write_fake_run(tmp_path / "runs", name, 1e-3)
        assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert all(len(line) <= 80 for line in lines), lines
        assert all(any(line.split()[0] == name for line in lines) for name in names), lines
        return lines

    monkeypatch.setenv("COLUMNS", "80")
    table = printed(["20261203-195351-minilm", "20261203-195352-minilm-cont"])
    assert table[0].split() == ["run", "state", "step", "best", "age", "parent"] and len(table) == 3, table
    stacked = printed(["20261204-165642-smol-c2-chat-300-42-0.23-4096"])
    assert len(stacked) == 6, stacked  # three runs, two lines each
    for name, details in zip(stacked[::2], stacked[1::2]):
        assert details.startswith("  ") and " · step " in details and "…" not in details, stacked


def test_a_cut_run_name_keeps_its_start_time():
    """Cut in the middle, three runs of one model read `20261205-00…1-deep-llama`, told apart by a digit."""
    from sft_tui.widgets.runs.table import _cut_run_name

    assert _cut_run_name("20261205-004051-deep-llama", 24) == "20261205-004051-dee…lama"
    assert _cut_run_name("20261205-004051-deep-llama", 30) == "20261205-004051-deep-llama"
    assert _cut_run_name("my-own-run-name-that-is-long", 12) == "my-ow…s-long"  # not a generated name
