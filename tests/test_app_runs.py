"""The runs screen (step 6) driven through the real app: the table of real tiny runs, comparing two
(overlaid curves, config diff), loading a run's config into the draft, continuing a finished run
from its final model and resuming a stopped one (its snapshot is in tests/test_snapshots.py)."""

from __future__ import annotations

import math
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


def fake_runs_config(tmp_path: Path) -> Path:
    """A draft config whose runs_dir holds three synthetic runs: finished, stopped and crashed."""
    runs = tmp_path / "runs"
    write_fake_run(runs, "lm-lr3e-3", 3e-3)
    write_fake_run(runs, "lm-lr1e-3", 1e-3, end="stopped")
    write_fake_run(runs, "lm-crashed", 2e-3, end=None)
    draft = config_to_dict(example_config("causal-lm"))
    draft["output"]["runs_dir"] = str(runs)
    path = tmp_path / "draft.yaml"
    save_config(parse_config(draft), path)
    return path


async def open_runs(pilot) -> RunsScreen:
    await pilot.pause()
    await pilot.press("6")
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
            assert [step for step, _ in evals] == ([5, 10, 15, 20] if name == "lr-3e-3" else [5])
        assert "lr-3e-3" in str(screen.query_one("#curves-legend").render())

        diff = screen.query_one(ConfigDiff)
        assert diff.display and diff.keys == ["optim.lr", "output.run_name"]
        assert [str(c) for c in diff.get_row("optim.lr")] == ["optim.lr", "0.003", "0.001"]
        assert "optim.batch_size" not in diff.keys and "model.name_or_path" not in diff.keys

        await pilot.press("escape")  # unmark all: the curves follow the cursor, the diff asks for marks
        assert not table.marked and len(curves.shown) == 1 and not diff.display


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

        await pilot.press("n")  # steps instead: the unit is a radio button
        dialog = app.screen
        dialog.query_one("#continue-amount").value = "5"
        dialog.query_one("#unit-steps").value = True
        await pilot.pause()
        dialog.query_one("#continue-amount").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert launched[-1]["config"].schedule.max_steps == 5

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
