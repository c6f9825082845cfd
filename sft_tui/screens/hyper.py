"""Scaffolding for the hyper step; replaced by the real screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from sft_tui.screens.base import StepScreen


class HyperScreen(StepScreen):
    STEP = "hyper"
    BINDINGS = []

    def compose_body(self) -> ComposeResult:
        yield Static("hyper")
