"""Small helpers several test modules share (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from core.control import Control

WORDS = "red green blue cat dog bird sun moon tree rock".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_lm_config(model_dir: Path, data: Path, runs_dir: Path, **sections: dict) -> dict:
    """The causal-LM config the engine and app tests train: a tiny model on prompt/completion rows,
    thirty steps. `sections` update fields section by section: schedule={"max_steps": 20}."""
    config = {
        "task": "causal-lm", "seed": 3,
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 32, "val_ratio": 0.2},
        "optim": {"lr": 3e-3, "batch_size": 8, "weight_decay": 0.0},
        "schedule": {"max_steps": 30, "warmup_steps": 2},
        "eval": {"every_steps": 10, "num_samples": 2, "max_new_tokens": 6},
        "checkpoint": {"every_steps": 0, "keep_last": 2},
        "output": {"runs_dir": str(runs_dir), "run_name": "lm"},
    }
    for name, fields in sections.items():
        config.setdefault(name, {}).update(fields)
    return config


class StopAt(Control):
    """A Control that stops the run after optimizer step `at`, as a Ctrl+C at that moment would."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def should_stop(self, step: int) -> bool:
        return step >= self.at or super().should_stop(step)


def visible_text(app) -> str:
    """The current screen as the terminal shows it, in plain text (as Textual's own screenshots
    render it): what scrolled or was clipped away is not in it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def settle(pilot) -> None:
    """Wait until every worker has finished: the warm-up, the screens' deferred starts (which start
    the loaders only after the warm-up) and the loaders themselves."""
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not len(app.workers) and "loading" not in (app.model_state, app.data_state):
            return
    raise AssertionError("workers did not finish")
