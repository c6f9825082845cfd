"""Switching steps: the app builds every step while the user reads the first, and a built step
waits to be shown before it catches up with the session. What a switch costs is measured by
bench/ui_latency.py; these tests check the structure that makes it cheap: no step is built, and no
stylesheet refreshed or widget restyled, on the key that shows it."""

from __future__ import annotations

from textual.screen import Screen

from sft_tui.app import STEPS, create_app
from sft_tui.screens import SCREENS
from helpers import settle


async def test_every_step_is_built_before_its_first_visit_and_waits_to_be_shown():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for name, _ in STEPS:
            (screen,) = app.get_screen_stack(name)
            assert isinstance(screen, SCREENS[name]) and screen.is_mounted
        assert app.data_state == "none"  # the data step, built but not shown, has not loaded its data
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
