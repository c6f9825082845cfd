"""Keys as a newcomer meets them: the footer keeps help and quit at 80 columns, the help screen
and the palette read well and say each thing once, keys can be remapped from a file, and typing
meant for a text box never switches steps or starts a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import Button, Input

from core.errors import UserError
from sft_tui.app import STEPS, create_app
from sft_tui.cli import main
from sft_tui.keymap import binding_scopes, default_bindings, keys_label, print_keymap, read_keymap
from sft_tui.screens.help import HelpScreen, help_rows
from helpers import visible_text

DIGITS = {name: str(i) for i, (name, _) in enumerate(STEPS, 1)}


def footer(app) -> str:
    return visible_text(app).rstrip("\n").splitlines()[-1]


async def go(pilot, step: str) -> None:
    """Leave whatever box has the focus (the model screen opens in its path box), then switch."""
    await pilot.press("escape", DIGITS[step])
    await pilot.pause()
    assert pilot.app.current_mode == step


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_help_and_quit_show_in_the_footer_of_every_step(size):
    app = create_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert isinstance(app.screen.focused, Input)  # in the path box, ? and q are typing: F1 and ^q show
        assert "F1 Help" in footer(app) and "^q Quit" in footer(app)
        for step in DIGITS:
            await go(pilot, step)
            text = footer(app)
            assert "? Help" in text and "q Quit" in text and "^p Commands" in text, (step, text)
            assert "1 Model" not in text  # the step tabs show the number keys


async def test_a_key_that_does_not_fit_is_left_out_whole_and_comes_back_with_room():
    """At 80 columns the footer cut "^r Rescan HF cache" to "^r Rescan HF cach"."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        narrow = footer(app)
        assert "Load model" in narrow and "Rescan" not in narrow
        await pilot.resize_terminal(120, 30)
        await pilot.pause()
        assert "^r Rescan HF cache ^s Save YAML" in footer(app)


async def test_the_help_screen_writes_keys_as_people_do_one_line_per_action():
    rows = help_rows({})
    text = "\n".join("  ".join(row) for row in rows)
    assert ("Freeze", "[ / Ctrl+↑", "Move rule up") in rows
    assert ("everywhere", "q / Ctrl+Q", "Quit") in rows
    assert ("everywhere", "Ctrl+P", "Commands") in rows
    assert ("everywhere", "? / F1", "Help") in rows
    for raw in ("left_square_bracket", "ctrl+", "question_mark", "escape"):
        assert raw not in text
    train = {what: keys for where, keys, what in rows if where == "Train"}
    assert train["Start training"] == "Enter" and train["Stop & save"] == "s"
    assert list(train.values()).count("s") == 1
    assert len({(where, what) for where, _, what in rows}) == len(rows)  # one line per action

    app = create_app(keymap={"train-stop": "x", "quit": "ctrl+w"})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")  # F1 opens the help even from the model screen's path box
        await pilot.pause(0.5)
        assert isinstance(app.screen, HelpScreen)
        shown = visible_text(app)
        assert "Ctrl+W / Ctrl+Q" in shown  # the quit line, in the keys in effect
        assert ("Train", "x", "Stop & save") in help_rows(app.keymap)


@pytest.mark.parametrize("step", ["model", "train", "hyper"])
async def test_the_palette_offers_each_command_once_with_a_description_that_adds_something(step):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await go(pilot, step)
        commands = list(app.get_system_commands(app.screen))
        titles = [command.title.split("  (")[0] for command in commands]
        assert "Save YAML" in titles and "Load YAML" in titles
        assert titles.count("Quit") == 1
        assert len(titles) == len(set(titles))
        for command in commands:
            assert command.help.strip().lower() != command.title.split("  (")[0].lower()
        save = next(command for command in commands if command.title.startswith("Save YAML"))
        assert save.title == "Save YAML  (Ctrl+S)"

        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"save yaml")
        await pilot.pause(0.3)
        assert "Save YAML" in visible_text(app)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert "Save the whole config as YAML" in visible_text(app)  # the dialog opened from this step


def test_every_binding_has_a_unique_id():
    ids = [binding.id for _, bindings in binding_scopes() for binding in bindings]
    assert None not in ids
    assert len(ids) == len(set(ids))


def test_print_keymap_round_trips_as_a_keymap_and_imports_no_torch(tmp_path):
    code = ("import sys; from sft_tui.cli import main; rc = main(['--print-keymap']); "
            "sys.stdout.flush(); assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == print_keymap()
    path = tmp_path / "keymap.toml"
    path.write_text(done.stdout, encoding="utf-8")
    keymap = read_keymap(path)
    assert keymap == {binding_id: binding.key for binding_id, binding in default_bindings().items()}
    assert "# [ / Ctrl+↑  Move rule up" in done.stdout


async def test_a_remapped_key_works_and_the_tabs_show_it(tmp_path, monkeypatch):
    path = tmp_path / "keymap.toml"
    path.write_text('go-data = "f2"\ntrain-start = "ctrl+g"\n', encoding="utf-8")
    monkeypatch.setenv("SFT_TUI_KEYMAP", str(path))
    from sft_tui.keymap import load_keymap

    app = create_app(keymap=load_keymap())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "2")
        await pilot.pause()
        assert app.current_mode == "model"  # 2 no longer goes to the data step
        await pilot.press("f2")
        await pilot.pause()
        assert app.current_mode == "data"
        assert "F2 Data" in visible_text(app)
        await pilot.press("5")
        await pilot.pause()
        started = []
        monkeypatch.setattr(app, "launch_run", lambda: started.append(True))
        monkeypatch.setattr(app.session, "problems", lambda: [])
        await pilot.press("enter")
        await pilot.pause()
        assert not started  # Enter was moved
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert started == [True]
        assert "^g Start training" in footer(app)


@pytest.mark.parametrize("text, message", [
    ('go-modl = "f2"\n', "names an unknown binding id 'go-modl'"),
    ("go-model = \n", "is not TOML"),
    ('go-model = "ctl+x"\n', "binds go-model to an unknown key 'ctl+x'"),
    ("go-model = 3\n", "gives go-model no keys"),
])
def test_a_bad_keymap_file_is_refused_with_its_name_and_the_binding(tmp_path, capsys, text, message):
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["--keymap", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the keymap {path} ") and message in err and "Traceback" not in err
    with pytest.raises(UserError):
        read_keymap(path)


async def test_typing_on_a_button_switches_no_step_and_opens_nothing():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        box = app.screen.query_one("#model-path", Input)
        assert box.has_focus  # the model screen opens in its path box
        app.screen.query_one("#model-load", Button).focus()
        await pilot.press(*"HuggingFaceTB/SmolLM2-135M?q")
        await pilot.pause()
        assert app.current_mode == "model" and app.is_running and box.value == app.session.config.model.name_or_path
        assert not isinstance(app.screen, HelpScreen)
        assert "F1 Help" in footer(app) and "^q Quit" in footer(app)  # the keys that still work there


@pytest.mark.parametrize("step, box", [("model", "#model-path"), ("data", "#data-train"),
                                       ("hyper", "#field-optim-lr Input"), ("train", "#start")])
async def test_escape_leaves_the_form_on_every_step(step, box):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await go(pilot, step)
        app.screen.query_one(box).focus()
        await pilot.pause()
        assert "esc Leave the form" in footer(app)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.focused is None
        await pilot.press("1" if step != "model" else "2")
        await pilot.pause()
        assert app.current_mode != step  # the number keys switch steps again


async def test_a_digit_typed_right_after_escape_switches_steps_even_while_the_app_lags():
    """At start-up, while torch loads, the loop can lag by seconds, and the keys of a quick `Esc 3`
    wait in the app's queue together. Esc used to reach the path box first and leave the form only
    once it had bubbled back up, after the box had already taken the 3."""
    from textual import events

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        box = app.screen.query_one("#model-path", Input)
        assert app.screen.focused is box
        app.post_message(events.Key("escape", "\x1b"))
        app.post_message(events.Key("3", "3"))  # in the queue before the escape is handled
        await pilot.pause()
        await pilot.pause()
        assert box.value == app.session.config.model.name_or_path
        assert app.current_mode == "freeze"


async def test_escape_closes_an_open_drop_down_list_and_stays_in_the_form():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await go(pilot, "data")
        select = app.screen.query_one("#data-format")
        select.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert select.expanded
        await pilot.press("escape")
        await pilot.pause()
        assert not select.expanded and app.screen.focused is select
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.focused is None


async def test_only_enter_starts_a_run_never_a_letter(monkeypatch):
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await go(pilot, "train")
        started = []
        monkeypatch.setattr(app, "launch_run", lambda: started.append(True))
        monkeypatch.setattr(app.session, "problems", lambda: [])
        await pilot.press(*"stars")
        await pilot.pause()
        assert not started
        assert "Start training" in footer(app) and "s Start" not in footer(app)
        app.screen.query_one("#start", Button).focus()
        await pilot.press("s")
        await pilot.pause()
        assert not started
        await pilot.press("enter")  # on the Start button
        await pilot.pause()
        assert started == [True]


def test_keys_read_as_people_write_them():
    assert keys_label("left_square_bracket,ctrl+up") == "[ / Ctrl+↑"
    assert keys_label("space") == "Space" and keys_label("ctrl+q") == "Ctrl+Q" and keys_label("f1") == "F1"
    assert keys_label("plus") == "+" and keys_label("escape") == "Esc" and keys_label("R") == "R"


def test_the_readme_documents_the_keymap():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "--print-keymap" in readme and "SFT_TUI_KEYMAP" in readme
