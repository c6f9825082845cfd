"""Every step of the app is built while the user reads the first, so that a first visit costs what a
revisit does; and an app closed meanwhile waits for the step being built. A mixin of SftApp."""

from __future__ import annotations

import asyncio
import contextlib

from textual import events

PREBUILD_GAP_S = 0.05
"""Between two screens built ahead of their visit: keys typed meanwhile are answered first."""
SHUTDOWN_WAIT_S = 5.0
"""The longest the app's shutdown waits for a step the prebuild is still mounting."""


class StepPrebuild:
    PREBUILD_STEPS = True
    """Build the steps ahead of their visit. The pilot tests turn it off (tests/conftest.py) unless
    they test it: waiting for every step's build made each app test 1-3 s slower; a step not
    built yet is built on its first visit, as Textual does."""
    _building: asyncio.Future | None = None
    """The prebuild's screen being mounted (prebuild_steps), which shutdown lets finish."""
    _closing_down = False

    async def prebuild_steps(self) -> None:
        """Compose and mount every step not shown yet, one at a time, while the user reads the first:
        a first visit then costs what a revisit does, not the 0.3-1.5 s of building a screen. (Textual
        builds a mode's screen on its first switch_mode; `_init_mode` is that build, without the
        switch. A step so built takes its ScreenResume only when shown: StepScreen.)

        Once mounted, a built screen is styled by the app's current stylesheet: marking it so spares
        its first visit a restyle of every screen's widgets (Textual's refresh_css), which is most
        of what a first visit costs once the screen exists. So is its size: the classes its width
        and height give it (HORIZONTAL_BREAKPOINTS, on_resize) are set now, not on the visit.

        The steps built, their widgets live as long as the app: out of the garbage collector's way
        (Loading.freeze_heap)."""
        for name in self.MODES:  # in step order
            if self._closing_down:
                return
            if name not in self._screen_stacks:  # not visited meanwhile
                self._building = asyncio.ensure_future(self._build_step(name))
                await self._building
                self._building = None
                await asyncio.sleep(PREBUILD_GAP_S)
        self.freeze_heap()

    async def _build_step(self, name: str) -> None:
        await self._init_mode(name)
        screen = self._screen_stacks[name][0]
        screen._css_update_count = self._css_update_count
        screen.post_message(events.Resize(self.size, self.size))  # its breakpoint classes, now
        screen.refresh_bindings()  # its footer lists its keys now (StepFooter composes when they change)
        await asyncio.sleep(PREBUILD_GAP_S)
        screen._refresh_layout(self.size)  # lays it out (drawn only when current)
        await asyncio.sleep(PREBUILD_GAP_S)  # its widgets take their sizes
        screen._compositor.render_full_update()  # fills their line caches: what a first frame costs

    async def _shutdown(self) -> None:
        """Textual closes every screen here: a step the prebuild is still mounting would fail in its
        on_mount (its widgets gone), an error shown as the app quits. The prebuild stops, and the
        step it is building finishes first."""
        self._closing_down = True
        if self._building is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._building), SHUTDOWN_WAIT_S)
        await super()._shutdown()
