"""Regenerate screenshots/*.svg from the real app, built by the same factory as the command line.

    .venv/bin/python screenshots/make_screenshots.py

Each screen is shown on the bundled demos at 120x40 after its loading workers finish; the training
screen is captured after a short real run of the causal-LM demo, and the runs screen compares it
with a second run at a smaller learning rate. Runs offline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent
SIZE = (120, 40)


async def settle(app, pilot, seconds: float = 0.5) -> None:
    """Let workers finish and the screen redraw."""
    await app.workers.wait_for_complete()
    await pilot.pause(seconds)


async def shoot_steps(task: str, prefix: str) -> None:
    from sft_tui.app import STEPS, create_app

    app = create_app(task=task)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot, 1.0)
        for number, (name, _) in enumerate(STEPS[:4], 1):
            await pilot.press("escape", str(number))  # Esc: out of the model's path box first
            await settle(app, pilot)
            await settle(app, pilot)  # a screen may start a second load after the first (labels -> head)
            app.save_screenshot(filename=f"{prefix}{number}-{name}.svg", path=str(OUT))
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        if prefix == "":
            app.save_screenshot(filename="help.svg", path=str(OUT))


async def shoot_training(runs_dir: str) -> None:
    from sft_tui.app import create_app

    app = create_app(task="causal-lm")
    app.session.update({"output.runs_dir": runs_dir, "output.run_name": "screenshot", "schedule.max_steps": 120,
                        "eval.every_steps": 40})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape", "5")
        await settle(app, pilot)
        app.save_screenshot(filename="5-train-ready.svg", path=str(OUT))
        await pilot.press("enter")
        await finished(app, pilot)
        app.save_screenshot(filename="5-train-finished.svg", path=str(OUT))
        # a second run with a smaller learning rate, then both compared on the runs screen
        app.session.update({"output.run_name": "screenshot-lr-1e-3", "optim.lr": 1e-3})
        app.changed()
        await pilot.pause(0.5)
        await pilot.press("v", "enter")  # back to the setup view, where Enter starts
        await finished(app, pilot)
        await pilot.press("6")
        await settle(app, pilot, 2.5)
        await pilot.press("space", "down", "space")
        await settle(app, pilot, 1.0)
        app.save_screenshot(filename="6-runs.svg", path=str(OUT))


async def finished(app, pilot) -> None:
    """Wait until the run the app follows has ended, and its last events are drawn."""
    await pilot.pause(1.0)
    for _ in range(600):
        await pilot.pause(0.2)
        if app.run_state in ("finished", "failed"):
            break
    await settle(app, pilot, 1.0)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the run folder shows as runs/screenshot, the same on every regeneration
        asyncio.run(shoot_steps("classification", ""))
        asyncio.run(shoot_steps("causal-lm", "lm-"))
        asyncio.run(shoot_training("runs"))
    print("\n".join(sorted(p.name for p in OUT.glob("*.svg"))), file=sys.stderr)


if __name__ == "__main__":
    main()
