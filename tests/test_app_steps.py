"""Switching steps: the app builds every step while the user reads the first, and a built step
waits to be shown before it catches up with the session. What a switch costs is measured by
bench/ui_latency.py; these tests check the structure that makes it cheap: no step is built, and no
stylesheet refreshed or widget restyled, on the key that shows it."""

from __future__ import annotations

import gc

import pytest
from textual.screen import Screen

from sft_tui.app import STEPS, create_app
from sft_tui.screens import SCREENS
from sft_tui.screens.base import CATCH_UP_DELAY_S
from sft_tui.widgets.footer import StepFooter
from helpers import settle, visible_text

pytestmark = pytest.mark.prebuild


def record_layouts(monkeypatch) -> list[Screen]:
    """The screens laid out in full from now on (Screen._refresh_layout), in order."""
    layouts: list[Screen] = []
    refresh_layout = Screen._refresh_layout
    monkeypatch.setattr(Screen, "_refresh_layout",
                        lambda screen, *a, **k: layouts.append(screen) or refresh_layout(screen, *a, **k))
    return layouts


async def open_loaded_data_step(pilot) -> None:
    """Out of the model's path box to step 2, which loads the demo data on its first visit."""
    await settle(pilot)
    await pilot.press("escape", "2")
    await settle(pilot)
    assert pilot.app.data_state == "ready"


async def test_every_step_is_built_before_its_first_visit_and_waits_to_be_shown():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for name, _ in STEPS:
            (screen,) = app.get_screen_stack(name)
            assert isinstance(screen, SCREENS[name]) and screen.is_mounted
        assert app.data_state == "ready"  # the configured data follows the model, before step 2 is shown
        runs = app.get_screen_stack("runs")[0]
        assert not runs.is_current and runs.query("RunTable")  # built, composed, not shown

        await pilot.press("escape", "2")  # leave the model box (it has the focus), then step 2
        await settle(pilot)
        assert isinstance(app.screen, SCREENS["data"])
        assert app.data_state == "ready"  # shown: it loads the data it needs


async def test_a_first_visit_neither_refreshes_the_css_nor_restyles_the_step(monkeypatch):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("escape")
        restyled: list = []
        refreshed: list = []
        monkeypatch.setattr(app, "refresh_css", lambda *a, **k: refreshed.append(a))
        update_nodes = app.stylesheet.update_nodes
        monkeypatch.setattr(app.stylesheet, "update_nodes",
                            lambda nodes, animate=False: restyled.extend(nodes) or update_nodes(nodes, animate))
        for number, (name, _) in enumerate(STEPS, 1):
            if number == 1:
                continue
            await pilot.press(str(number))
            await pilot.pause()
            assert isinstance(app.screen, SCREENS[name])
            if app.screen.in_form:
                await pilot.press("escape")
        assert refreshed == []
        whole = [node for node in restyled if isinstance(node, Screen)]
        assert whole == [], f"restyled as a whole on its first visit: {whole}"


async def test_an_app_closed_while_it_builds_its_steps_closes_without_an_error():
    """Closing waits for the step being built: unmounted under its on_mount, it raised NoMatches."""
    for wait in (0.0, 0.1, 0.3, 0.6):
        app = create_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(wait)
        assert app.return_code in (None, 0), f"closed after {wait} s: {app._exception!r}"


async def test_showing_a_built_step_again_lays_out_nothing_and_keeps_its_footer(monkeypatch):
    """Textual laid a step out in full on every switch, as after a terminal resize, and composed its
    footer anew two or three times: most of a revisit's 110-190 ms."""
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("escape")
        for key in "343":  # first visits, each laid out before the next
            await pilot.press(key)
            await settle(pilot)
        layouts = record_layouts(monkeypatch)
        footers: list[StepFooter] = []
        recompose = StepFooter.recompose
        monkeypatch.setattr(StepFooter, "recompose", lambda footer: footers.append(footer) or recompose(footer))
        for key in "4343":
            await pilot.press(key)
            await settle(pilot)
        assert isinstance(app.screen, SCREENS["freeze"])
        assert layouts == [] and footers == []

        await pilot.press("tab")  # into the freeze tree: keys of its own join the footer
        await settle(pilot)
        assert footers == [app.screen.query_one(StepFooter)]


async def test_a_step_hidden_while_the_terminal_was_resized_is_laid_out_at_the_new_size():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "4", "escape", "3")
        await settle(pilot)
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        hyper = app.screen
        assert isinstance(hyper, SCREENS["hyper"]) and hyper.has_class("-narrow")
        assert hyper.query_one(StepFooter).region.bottom == 24


async def test_what_the_warm_up_and_the_loads_leave_is_out_of_the_collectors_full_passes():
    """A full garbage collection scanned the libraries, the model's structure and the data, 0.1-0.3 s
    with the GIL held, and a key pressed then waited: they are frozen (gc.freeze) once loaded."""
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_loaded_data_step(pilot)
        scanned = {id(obj) for obj in gc.get_objects()}
        loaded = [app.session.model, app.session.data, app.screen, app.get_screen_stack("runs")[0]]
        assert all(gc.is_tracked(obj) for obj in loaded)
        assert [obj for obj in loaded if id(obj) in scanned] == []


async def test_a_hidden_step_catches_up_with_a_load_before_it_is_shown(monkeypatch):
    """The data loaded while step 4 was hidden, and its preview grew: Textual lays out only the
    current screen, so that layout, 100-200 ms on a 30-block model, came on the key that showed it."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_loaded_data_step(pilot)
        hyper = app.get_screen_stack("hyper")[0]
        await pilot.pause(CATCH_UP_DELAY_S + 0.2)
        assert not hyper._layout_required
        layouts = record_layouts(monkeypatch)
        await pilot.press("4")
        await settle(pilot)
        assert app.screen is hyper and layouts == []
        assert "steps" in visible_text(app)  # the preview, laid out while hidden, shows the plan
