"""How fast the app answers keys: switching steps (the number keys) when idle, first visit and
revisit, and opening/closing help and switching steps while a run trains. The issue this serves
wants a revisit under 150 ms; this script only measures.

    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/ui_latency.py [--repeats 3] [--size 120x40]

It drives the real app in-process with Textual's run_test pilot, on two models: the bundled
causal-LM demo (demo:tiny-lm, 4 blocks) and a Llama of SmolLM2-135M's depth (30 blocks, the module
tree is what matters; narrow, --hidden 64, to fit a CPU) built in a temp folder by core.tiny.

What is timed: a key is posted as an events.Key (pilot.press would wait for the process to go idle,
which it never does while a run trains), and the app's `_display`, through which every frame goes
to the terminal, is wrapped to timestamp each frame (and to encode it into escape codes as a real
terminal driver would; the headless driver skips that). From the key:
- "switched": until app.screen is the target screen (polled every 2 ms, what the tests poll); the
  terminal may still show the old screen;
- "frame": until the first frame of the target screen (a step's, or HelpScreen) drawn once that
  screen has finished its compose and mount: when the user first sees the answer;
- "settled" (idle only): until the last frame before 0.5 s without one, when the screen has
  stopped changing (spinners, loaders).
Between idle measurements the app settles (workers done, screen quiet).

--repeats N: N fresh apps per model (first visits are once per app: reported as median and range),
and N rounds of revisits of every step (sft_tui.app.STEPS) in each; step 1 is the start screen, so
it has no first visit by key (the app builds the other steps while the first shows: a first visit
is timed after the app settled). Esc, untimed, leaves a form before a number key. Then, on step 5,
Enter starts a run (no evals, no checkpoints, 100,000
steps, in the app's own thread); after 2 steps, 8 rounds of "?", escape, "4", "5"; the run is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from textual import events
from textual.widgets import Input

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench/, this script's folder, is on it already

from engine_vs_trainer import CpuWindow
from helpers import WORDS, settle, tiny_lm_config, write_jsonl

QUIET_S = 0.5
NEVER = {"schedule.max_steps": 100_000, "eval.every_steps": 100_000, "eval.num_samples": 0,
         "checkpoint.every_steps": 100_000, "output.save_final": False}


class Frames:
    """Wraps app._display: the time and screen of each frame handed to the terminal."""

    def __init__(self, app) -> None:
        self.log: list[tuple[float, object, bool]] = []
        original = app._display

        def display(screen, renderable) -> None:
            original(screen, renderable)
            if renderable is not None and not app._batch_count:
                renderable.render_segments(app.console)
                self.log.append((time.perf_counter(), screen, screen.is_mounted))

        app._display = display

    async def quiet(self) -> float:
        """Wait until no frame came for QUIET_S; the time of the last frame."""
        while (last := self.log[-1][0] if self.log else 0.0) > time.perf_counter() - QUIET_S:
            await asyncio.sleep(0.05)
        return last


async def timed(app, frames: Frames, key: str, char: str | None, target: type, settled: bool = True):
    """Seconds from posting `key` until app.screen is a `target` (polled every 2 ms, as
    tests/test_app_train.py does), to the first frame of it once mounted, and to the last frame
    before QUIET_S without one (None when not `settled`)."""
    seen, switched = len(frames.log), None
    started = time.perf_counter()
    app.post_message(events.Key(key, char))
    while True:
        if switched is None and isinstance(app.screen, target):
            switched = time.perf_counter() - started
        hits = [t for t, screen, mounted in frames.log[seen:] if mounted and isinstance(screen, target)]
        if hits:
            break
        if time.perf_counter() - started > 30:
            raise RuntimeError(f"no frame of {target.__name__} within 30 s of key {key}")
        await asyncio.sleep(0.002)
    frame = hits[0] - started
    return min(switched or frame, frame), frame, (await frames.quiet()) - started if settled else None


async def measure(app, label: str, args, rows: dict) -> None:
    from sft_tui.app import STEPS
    from sft_tui.screens import SCREENS
    from sft_tui.screens.help import HelpScreen
    from sft_tui.widgets.train.progress import RunProgress

    frames = Frames(app)

    def add(row: str, value: tuple) -> None:
        rows.setdefault((label, row), []).append(value)

    async with app.run_test(size=args.size) as pilot:
        try:
            await settle(pilot)
            await pilot.press("escape")  # out of the model's path box, which has the focus
            await settle(pilot)
            await frames.quiet()
            for visit in ["first", *["revisit"] * args.repeats]:
                for number, (name, _) in enumerate(STEPS, 1):
                    if visit == "first" and number == 1:
                        continue
                    if app.screen.in_form:  # a number key types into a form's box: Esc leaves it first
                        await pilot.press("escape")
                        await settle(pilot)
                    add(f"{visit} {number}", await timed(app, frames, str(number), str(number), SCREENS[name]))
                    await settle(pilot)
            await pilot.press("5", "enter")
            bar = app.screen.query_one(RunProgress)
            deadline = time.monotonic() + 120
            while bar.progress < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the run did not reach step 2 in 120 s: {app.run_state}, {app.screen}")
                await asyncio.sleep(0.05)
            keys = [("question_mark", "?", HelpScreen, "? (help)"), ("escape", None, SCREENS["train"], "escape"),
                    ("4", "4", SCREENS["hyper"], "5->4"), ("5", "5", SCREENS["train"], "4->5")]
            for _ in range(8):
                for key, char, target, row in keys:
                    add(f"training {row}", await timed(app, frames, key, char, target, settled=False))
                    await asyncio.sleep(0.2)
            if not app.run_state.live:
                raise RuntimeError("the run ended before the measurements did; raise its max_steps")
        finally:
            await stop_run(app)


async def stop_run(app) -> None:
    """Stop a run that trains in the app's thread, or the script would not exit: through app.control
    or, in the app of detachable runs, the client of the run it follows."""
    if getattr(app, "control", None) is not None:
        app.control.stop()
    elif getattr(app, "followed", None) is not None and app.run_state.live:
        app.followed.send("stop")
    try:
        await asyncio.wait_for(app.workers.wait_for_complete(), 120)
    except TimeoutError:
        print("the run could not be stopped; exiting without cleaning up", flush=True)
        os._exit(1)


def deep_model_config(folder: Path, hidden: int) -> Path:
    """A config of a 30-block Llama (SmolLM2-135M's depth, `hidden` wide) on prompt/completion rows."""
    from core.config import parse_config, save_config
    from core.logs import quiet_libraries
    from core.tiny import build_tiny_model

    quiet_libraries()
    rows = [{"prompt": f"Say {w} {i % 3}:", "completion": f" {w} {w}"} for i, w in enumerate(WORDS * 4)]
    data = write_jsonl(folder / "sft.jsonl", rows)
    model = build_tiny_model("llama", folder / "model", [r["prompt"] + r["completion"] for r in rows],
                             hidden=hidden, layers=30)
    config = tiny_lm_config(model, data, folder / "runs", schedule={"max_steps": 100_000},
                            eval={"every_steps": 100_000, "num_samples": 0}, checkpoint={"every_steps": 100_000})
    save_config(parse_config(config), folder / "config.yaml")
    return folder / "config.yaml"


def ms(values: list[float]) -> str:
    values = [v * 1000 for v in values]
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    # A focused box's blinking cursor draws a frame every 0.5 s: "settled" would never come.
    Input.__dict__["cursor_blink"]._default = False
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="120x40", help="terminal WxH, e.g. 80x24")
    parser.add_argument("--hidden", type=int, default=64, help="width of the 30-block model (SmolLM2-135M: 576)")
    args = parser.parse_args()
    args.size = tuple(int(n) for n in args.size.split("x"))
    from sft_tui.app import create_app

    if "in_process" in inspect.signature(create_app).parameters:  # train in the app's thread, as measured
        create_app = functools.partial(create_app, in_process=True)
    rows: dict[tuple[str, str], list] = {}
    window = CpuWindow()
    window.start()
    with tempfile.TemporaryDirectory() as tmp:
        deep = deep_model_config(Path(tmp), args.hidden)
        for label, make in [("demo (4 blocks)", lambda: create_app(task="causal-lm")),
                            (f"30 blocks x {args.hidden}", lambda: create_app(deep))]:
            for repeat in range(args.repeats):
                app = make()
                app.session.update({**NEVER, "output.runs_dir": f"{tmp}/runs-{repeat}"})
                asyncio.run(measure(app, label, args, rows))
    load = window.stop()
    print(f"size {args.size[0]}x{args.size[1]}, {args.repeats} apps per model; other processes used "
          f"{load['foreign_cores']:.2f} cores on average, this one {load['own_cores']:.2f}")
    print("times in ms: median (min-max)")
    print(f"{'model':<18} {'key':<18} {'n':>3}  {'switched':<18} {'frame':<20} settled")
    for (label, row), values in rows.items():
        switched, frame, settled = zip(*values)
        print(f"{label:<18} {row:<18} {len(values):>3}  {ms(switched):<18} {ms(frame):<20} "
              f"{ms(settled) if settled[0] is not None else '-'}")


if __name__ == "__main__":
    main()
