"""What a newcomer's review of the app found, driven through the real app at 80x24: Enter on a run's
view of step 5, the quit question for a paused run, two data roles on one column, and a draft that
names a run folder already holding a run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from textual.widgets import ContentSwitcher, Input, Static

from core.config import example_config, save_config
from core.runs import RunPaths
from sft_tui.app import create_app
from sft_tui.messages import RunState
from sft_tui.screens.dialogs import QuitDialog
from sft_tui.session import Session
from helpers import settle, visible_text
from test_app_train import post_finished_run


def notices(app) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


# ---- 1. Enter on the view of a run that ended ------------------------------------------------------
async def test_enter_on_an_ended_runs_view_shows_the_setup_says_so_and_starts_nothing(monkeypatch):
    """Enter did nothing and said nothing after a run ended (Start was off unless the setup showed).
    Now the first Enter shows the setup of the next run and says that Enter starts it; only a
    second one, on the setup, starts a run."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape")  # out of the model screen's text box
        await post_finished_run(pilot)
        switcher = app.screen.query_one(ContentSwitcher)
        assert switcher.current == "run" and app.run_state == "finished"
        started = []
        monkeypatch.setattr(app, "launch_run", lambda: started.append(True))
        monkeypatch.setattr(app.session, "problems", lambda: {})
        app.screen.set_focus(None)  # Enter reaches the screen, as on the charts pane
        await pilot.press("enter")
        await pilot.pause()
        assert not started and switcher.current == "setup"
        assert "setup of the next run" in notices(app) and "v shows run demo-run again" in notices(app)
        assert "ready to start" in visible_text(app)
        await pilot.press("enter")
        await pilot.pause()
        assert started == [True]


# ---- 2. quitting while a detached run is paused ----------------------------------------------------
async def test_quitting_while_a_detached_run_is_paused_says_it_stays_paused(tmp_path):
    """The dialog said "Detach: it goes on" of a paused run, which in fact waits, holding its memory."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.followed = SimpleNamespace(paths=RunPaths(tmp_path / "r1"), in_process=False, controls=True,
                                       send=lambda command: None, release=lambda: None)
        app.run_state = RunState.PAUSED
        await pilot.press("ctrl+q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, QuitDialog)
        text = str(dialog.query_one(".dialog-text", Static).render())
        assert "it goes on" not in text
        assert "r1 is paused" in text and "stays paused" in text and "p resumes it" in text and "`sft-tui attach`" in text
        await pilot.press("escape")
        app.run_state = RunState.RUNNING
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert "it goes on" in str(app.screen.query_one(".dialog-text", Static).render())
        await pilot.press("escape")
        app.followed, app.run_state = None, RunState.IDLE


# ---- 3. two roles on one column ----------------------------------------------------------------------
async def test_text_and_label_on_one_column_are_refused_on_the_data_step():
    """The model read its own label: the demo's `label` column as both text and label loaded as valid."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape", "2")
        await settle(pilot)
        app.screen.query_one("#col-text", Input).value = "label"
        column = app.screen.query_one("#col-label", Input)
        column.value = "label"
        column.focus()
        await pilot.press("enter")
        await settle(pilot)
        error = str(app.screen.query_one("#data-error", Static).render())
        assert "data.columns.text and data.columns.label both name column 'label'" in error
        assert app.session.config.data.columns.label is None  # nothing applied


# ---- 4. a draft named after a run folder that holds a run -------------------------------------------
def finished_run_config(tmp_path: Path, name: str = "done") -> Path:
    """A config of the user's that names its run (output.run_name), once that run has trained: its
    folder holds a final model. (A run's own config.yaml, opened or attached to, gets its name cleared
    by the app; a file of the user's keeps it.)"""
    config = example_config("classification")
    config = config.model_copy(update={"output": config.output.model_copy(
        update={"runs_dir": str(tmp_path / "runs"), "run_name": name})})
    paths = RunPaths(tmp_path / "runs" / name)
    paths.final.mkdir(parents=True)
    save_config(config, paths.config)
    save_config(config, tmp_path / "my-run.yaml")
    return tmp_path / "my-run.yaml"


def test_a_run_name_whose_folder_holds_a_run_is_a_problem_of_output_run_name(tmp_path):
    session = Session(example_config("classification").model_copy())
    session.update({"output.runs_dir": str(tmp_path / "runs"), "output.run_name": "done"})
    assert "output.run_name" not in session.problems()  # no such folder yet
    (tmp_path / "runs" / "done" / "checkpoints").mkdir(parents=True)  # a failed start's stub: Start takes it over
    assert "output.run_name" not in session.problems()
    RunPaths(tmp_path / "runs" / "done").final.mkdir()
    problem = session.problems()["output.run_name"]
    assert "already holds a run" in problem and "output.run_name on step 4" in problem and "R" in problem
    session.update({"output.run_name": None})
    assert "output.run_name" not in session.problems()


async def test_a_config_naming_a_run_that_trained_says_so_and_step_4_renames_it(tmp_path):
    """Step 5 said "ready to start", Start was then refused, and no step could edit output.run_name."""
    app = create_app(finished_run_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "5")
        await pilot.pause()
        text = visible_text(app)
        assert "ready to start" not in text and "output.run_name" in text

        await pilot.press("4")
        await pilot.pause()
        field = app.screen.fields["output.run_name"]
        assert field.control.value == "done"
        field.control.focus()
        await pilot.press("end", "shift+home", "backspace")  # empty: a fresh name from the time
        await pilot.pause()
        assert app.session.config.output.run_name is None and field.error == ""
        field.control.focus()
        await pilot.press(*"../x")
        await pilot.pause()
        assert "single folder name" in field.error and "output.run_name" in app.session.invalid
        await pilot.press("end", "shift+home", *"second")
        await pilot.pause()
        assert app.session.config.output.run_name == "second" and not app.session.invalid

        await pilot.press("escape", "5")
        await pilot.pause()
        assert "ready to start" in visible_text(app)
        assert yaml.safe_load((tmp_path / "my-run.yaml").read_text())["output"]["run_name"] == "done"  # not saved
