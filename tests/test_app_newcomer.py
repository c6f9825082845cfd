"""What a newcomer's review of the app found, driven through the real app at 80x24: Enter on a run's
view of step 5, the quit question for a paused run, two data roles on one column, and a draft that
names a run folder already holding a run (after `sft-tui attach`, or a run's config.yaml opened)."""

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


