"""The footer of every step: Textual's Footer, with Help, Quit and the command palette pinned to
its right end.

Textual's Footer lists the focused widget's keys, then the screen's, then the app's, and cuts what
does not fit: at 80 columns the app's `?` and `q` were the first to go. Here the screen's own keys
come first and get cut first; the keys that lead out of any situation always show. A key that
would be cut in its middle ("^r Rescan HF cach") is left out whole: `?` lists every key.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.widgets import Footer

PINNED = ("help", "quit", "command_palette")
"""Actions of the keys that stay visible at any width, in this order."""


class StepFooter(Footer):
    DEFAULT_CSS = """
    StepFooter .footer-pinned {
        dock: right;
        width: auto;
        background: $footer-background;
        border-left: vkey $foreground 20%;
        padding-left: 1;
    }
    """

    def __init__(self) -> None:
        super().__init__(show_command_palette=False, compact=True)
        self._shown: tuple | None = None
        """The keys the footer shows or is about to (_keys): it is composed again only when they change."""
        self._width = 0
        """The width the keys were fitted to."""

    def bindings_changed(self, screen) -> None:
        """Textual composes the footer anew whenever the bindings may have changed: on every step
        switch and focus change, and twice when a step is shown. Most change nothing it shows."""
        keys = self._keys() if screen is self.screen else None
        if keys is None or keys != self._shown:
            self._shown = keys
            super().bindings_changed(screen)

    def _keys(self) -> tuple:
        return tuple((binding.key, binding.description, binding.action, enabled, tooltip)
                     for _, binding, enabled, tooltip in self.screen.active_bindings.values() if binding.show)

    def compose(self) -> ComposeResult:
        if self._bindings_ready:
            self._shown = self._keys()
        pinned, others = {}, []
        for widget in super().compose():
            if getattr(widget, "action", None) in PINNED:  # a FooterKey (private to Textual)
                pinned[widget.action] = self._plainest_key(widget)
            else:
                others.append(widget)
        keys = [pinned[action] for action in PINNED if action in pinned]
        self._width = self.app.size.width
        room = self._width - sum(map(_width, keys)) - 2  # the pinned group's border and padding
        for widget in others:
            room -= _width(widget)
            if room < 0:
                break
            yield widget
        yield HorizontalGroup(*keys, classes="footer-pinned")

    async def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width and self._bindings_ready:
            await self.recompose()

    def _plainest_key(self, key):
        """Show `q` rather than `^q` where both quit: Textual shows an action's first key, and the
        app's ctrl+q comes first. (Where a form takes `q` as typing, only ctrl+q is left.)"""
        candidates = [active.binding for active in self.screen.active_bindings.values()
                      if active.binding.action == key.action and active.binding.show]
        plain = [binding for binding in candidates if "+" not in binding.key]
        if plain:
            key.key, key.key_display = plain[0].key, self.app.get_key_display(plain[0])
        return key


def _width(widget) -> int:
    """The cells a compact FooterKey takes: its key, a space and its description, then its margin."""
    description = getattr(widget, "description", "")
    return cell_len(getattr(widget, "key_display", "")) + (1 + cell_len(description) if description else 0) + 1
