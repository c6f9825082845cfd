"""Scaffolding for the freeze step; replaced by the real screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from sft_tui.screens.base import StepScreen


class FreezeScreen(StepScreen):
    STEP = "freeze"
    BINDINGS = []

    def compose_body(self) -> ComposeResult:
        yield Static("freeze")
