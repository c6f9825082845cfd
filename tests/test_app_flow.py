"""A user's whole path through the app with the keyboard: model, data, freeze map, hyperparameters,
training to completion, results; checked against what is on screen and the run's event log."""

from __future__ import annotations


import yaml
from textual.widgets import Input

from core.events import EvalResult, RunFinished, StepMetrics, read_events
from sft_tui.app import create_app
from sft_tui.widgets.train.progress import RunProgress
from helpers import visible_text, write_jsonl


async def settle(app, pilot, rounds: int = 3) -> None:
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause(0.1)


async def test_model_data_freeze_hyper_train_results(tmp_path, tiny_model_factory):
    rows = [{"prompt": f"Copy {w}:", "completion": f" {w}"} for w in "red green blue cat dog sun moon".split() * 8]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    config = {
        "task": "causal-lm",
        "model": {"name_or_path": str(tiny_model_factory("llama"))},
        "data": {"train": str(tmp_path / "sft.jsonl"), "max_length": 32},
        "optim": {"lr": 1e-3, "batch_size": 8},
        "schedule": {"max_steps": 12},
        "eval": {"every_steps": 6, "num_samples": 1, "max_new_tokens": 4},
        "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "flow"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    app = create_app(tmp_path / "run.yaml")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)  # the model screen loads the configured model by itself
        assert app.model_state == "ready"
        assert "LlamaForCausalLM" in visible_text(app)

        await pilot.press("escape", "2")  # out of the model's path box, to step 2
        await settle(app, pilot)
        assert app.data_state == "ready"
        assert "Copy red:" in visible_text(app)

        await pilot.press("3")
        await settle(app, pilot)
        await pilot.press("t")  # top-N blocks preset (N = 2 of 2 here: everything but embeddings)
        await pilot.press("minus")  # one block fewer
        await pilot.pause(0.2)
        assert app.session.config.freeze.preset == "top-n" and app.session.config.freeze.top_n == 1
        share = app.session.trainable_share
        assert 0 < share < 1

        await pilot.press("4")
        await settle(app, pilot)
        lr = app.screen.query_one("#field-optim-lr Input", Input)
        lr.focus()
        lr.value = "2e-3"
        await pilot.press("tab")
        await pilot.pause(0.2)
        assert app.session.config.optim.lr == 2e-3 and not app.session.invalid

        await pilot.press("escape", "5")
        await settle(app, pilot)
        await pilot.press("enter")
        for _ in range(600):
            await pilot.pause(0.1)
            if app.run_state in ("finished", "failed"):
                break
        await settle(app, pilot)
        assert app.run_state == "finished"

        events = read_events(tmp_path / "runs" / "flow" / "events.jsonl")
        finished = [e for e in events if isinstance(e, RunFinished)][0]
        assert finished.step == 12 and finished.reason == "completed"
        progress = app.screen.query_one(RunProgress)
        assert progress.progress == progress.total == 12
        text = visible_text(app)
        assert "completed at step 12" in text and "runs/flow" in text  # results: run folder, model path
        assert 'pipeline("text-generation"' in text  # how to load it
        for ev in (e for e in events if isinstance(e, EvalResult)):
            assert f"{ev.metrics['loss']:.4f}" in text or f"{ev.metrics['loss']:.3f}" in text
        assert [e.step for e in events if isinstance(e, StepMetrics)][-1] == 12
        resolved = yaml.safe_load((tmp_path / "runs" / "flow" / "config.yaml").read_text())
        assert resolved["optim"]["lr"] == 2e-3 and resolved["freeze"] == {"preset": "top-n", "top_n": 1, "rules": [],
                                                                           "unfreezing": "none", "unfreeze_every": 0}
