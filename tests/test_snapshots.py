"""Snapshots of every step of the app, at 120x40 and 80x24, in one place and under one naming
scheme: test_snapshot_<screen>_<size>, kept as tests/__snapshots__/test_snapshots/<name>.svg.

Each test drives the real app (create_app, the demos) to the screen it pictures. After a change
that is meant to change a picture, regenerate with `pytest tests/test_snapshots.py
--snapshot-update` and look at the SVGs before committing them.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input

from sft_tui.app import create_app
from sft_tui.widgets.train.stats import RunStats
from helpers import settle
from test_app_train import open_train, post_finished_run

pytestmark = pytest.mark.prebuild  # what users see: every step built ahead of its visit


@pytest.fixture(autouse=True)
def steady_cursor(monkeypatch):
    """The same pictures at any moment: a focused text box's cursor does not blink (the model step
    opens with its path box focused)."""
    monkeypatch.setattr(Input.__dict__["cursor_blink"], "_default", False)


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """The same pictures on every machine: the GPU pane always says there is none."""
    monkeypatch.setattr(RunStats, "gpu_probe", staticmethod(lambda: []))


async def step(pilot, key: str) -> None:
    await pilot.press(key)
    await settle(pilot)


# ---- how each picture is reached ----------------------------------------------------------------
async def to_step(pilot, key: str) -> None:
    """From the model step, whose path box has the focus (a digit would be typed into it), to step `key`."""
    await pilot.pause()  # the app shows its first step before it takes keys
    await pilot.press("escape")
    await step(pilot, key)


async def data(pilot) -> None:
    await to_step(pilot, "2")


async def freeze(pilot) -> None:
    await to_step(pilot, "3")
    await pilot.pause(0.2)  # the tree's cursor highlight marks the deciding rule a moment later


async def freeze_top_n(pilot) -> None:
    await freeze(pilot)
    await pilot.press("t")
    await pilot.pause()


async def freeze_methods(pilot) -> None:
    """Layer-wise lr decay at its default 0.8, then gradual unfreezing, one epoch per stage."""
    await freeze(pilot)
    await pilot.press("d", "enter")  # the decay dialog and its default
    await pilot.pause()
    await pilot.press("u", "enter", "down", "enter", "tab", "enter")  # gradual, every 0
    await settle(pilot)


async def hyper(pilot) -> None:
    """Step 4 with the demo's data loaded, so that the preview counts steps."""
    await pilot.pause()  # the app shows its first step before it takes keys
    await pilot.press("escape", "4")  # out of the model's path box, to step 4
    await pilot.pause()
    await settle(pilot)
    pilot.app.load_data()
    await settle(pilot)


async def hyper_with_an_invalid_field(pilot) -> None:
    await hyper(pilot)
    field = pilot.app.screen.fields["optim.grad_accum"].control
    field.focus()  # selects the text: typing replaces it
    await pilot.press("0")
    await pilot.pause()
    await pilot.press("escape")


async def finished_run_scrolled_down(pilot) -> None:
    """The finished training screen at its end: the panes under the charts (eval, samples, log),
    which 80x24 cannot show at once, reached with the keyboard."""
    await post_finished_run(pilot)
    await pilot.press("end")
    await pilot.pause(0.2)


async def help_screen(pilot) -> None:
    await settle(pilot)
    await pilot.press("f1")  # F1: `?` would type into the model's path box, which has the focus
    await pilot.pause()


# ---- the snapshots ------------------------------------------------------------------------------
def test_snapshot_model_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=settle)


def test_snapshot_model_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=settle)


def test_snapshot_data_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=data)


def test_snapshot_data_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=data)


def test_snapshot_freeze_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=freeze)


def test_snapshot_freeze_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=freeze)


def test_snapshot_freeze_top_n_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=freeze_top_n)


def test_snapshot_freeze_top_n_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=freeze_top_n)


def test_snapshot_freeze_methods_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=freeze_methods)


def test_snapshot_freeze_methods_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=freeze_methods)


def test_snapshot_hyper_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=hyper_with_an_invalid_field)


def test_snapshot_hyper_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=hyper)


def test_snapshot_train_ready_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=open_train)


def test_snapshot_train_ready_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=open_train)


def test_snapshot_train_finished_120x40(snap_compare):
    assert snap_compare(create_app(task="causal-lm"), terminal_size=(120, 40), run_before=post_finished_run)


def test_snapshot_train_finished_80x24(snap_compare):
    assert snap_compare(create_app(task="causal-lm"), terminal_size=(80, 24), run_before=post_finished_run)


def test_snapshot_train_finished_scrolled_80x24(snap_compare):
    assert snap_compare(create_app(task="causal-lm"), terminal_size=(80, 24), run_before=finished_run_scrolled_down)


def test_snapshot_help_120x40(snap_compare):
    assert snap_compare(create_app(), terminal_size=(120, 40), run_before=help_screen)


def test_snapshot_help_80x24(snap_compare):
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=help_screen)


def test_snapshot_runs_compare_120x40(snap_compare, tmp_path, monkeypatch):
    """Step 6 with two synthetic runs marked: their curves overlaid and the config keys that differ."""
    from test_app_runs import fake_runs_config, two_fake_runs_marked

    monkeypatch.setattr("sft_tui.format.runs.format_age", lambda seconds: "2h")  # the runs' ages grow
    assert snap_compare(create_app(fake_runs_config(tmp_path)), terminal_size=(120, 40),
                        run_before=two_fake_runs_marked)


def test_snapshot_runs_compare_80x24(snap_compare, tmp_path, monkeypatch):
    from test_app_runs import fake_runs_config, two_fake_runs_marked

    monkeypatch.setattr("sft_tui.format.runs.format_age", lambda seconds: "2h")
    assert snap_compare(create_app(fake_runs_config(tmp_path)), terminal_size=(80, 24),
                        run_before=two_fake_runs_marked)
