"""The hyperparameter step: the generated form validates every field through pydantic in place, the
preview counts steps as the engine does and draws transformers' LR schedules, and the config
round-trips through YAML from the screen."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch
from transformers import get_scheduler  # imported up front: the app then never imports it from two threads at once

from core.config import load_config
from sft_tui.app import create_app
from sft_tui.screens.dialogs import ConfirmDialog, PathDialog
from sft_tui.screens.hyper import HyperScreen, form_sections
from sft_tui.widgets.draft_bar import DraftBar
from sft_tui.widgets.hyper.form import ConfigField, field_spec
from sft_tui.widgets.hyper.preview import NO_DATA, SchedulePreview
from sft_tui.widgets.hyper.schedule import lr_curve

# A typed value that breaks each field's constraint, a fragment of pydantic's message for it, and a
# valid value that fixes it. Select fields cannot hold a bad value and are tested separately.
BAD_VALUES = {
    "optim.lr": ("0", "greater than 0", "0.1"),
    "optim.weight_decay": ("-1", "greater than or equal to 0", "1"),
    "optim.l2sp_alpha": ("-1", "greater than or equal to 0", "0.01"),
    "optim.l2sp_beta": ("-0.5", "greater than or equal to 0", "0.01"),
    "optim.beta1": ("1.5", "less than 1", "0"),
    "optim.beta2": ("1", "less than 1", "0"),
    "optim.eps": ("0", "greater than 0", "1"),
    "optim.max_grad_norm": ("-1", "greater than or equal to 0", "2"),
    "optim.batch_size": ("0", "greater than or equal to 1", "8"),
    "optim.grad_accum": ("0", "greater than or equal to 1", "2"),
    "schedule.warmup_ratio": ("1.5", "less than 1", "0"),
    "schedule.warmup_steps": ("-1", "greater than or equal to 0", "5"),
    "schedule.epochs": ("0", "greater than 0", "2"),
    "schedule.max_steps": ("0", "greater than or equal to 1", "9"),
    "eval.every_steps": ("-1", "greater than or equal to 0", "5"),
    "eval.patience": ("-1", "greater than or equal to 0", "3"),
    "eval.batch_size": ("0", "greater than or equal to 1", "8"),
    "eval.num_samples": ("-1", "greater than or equal to 0", "1"),
    "eval.max_new_tokens": ("0", "greater than or equal to 1", "9"),
    "checkpoint.every_steps": ("-1", "greater than or equal to 0", "5"),
    "checkpoint.keep_last": ("0", "greater than or equal to 1", "3"),
    "checkpoint.every_minutes": ("-1", "greater than or equal to 0", "10"),
    "seed": ("-", "valid integer", "7"),
    "output.run_name": ("../x", "single folder name", "my-run"),
    "lora.r": ("0", "greater than or equal to 1", "8"),
    "lora.alpha": ("0", "greater than 0", "16"),
    "lora.dropout": ("1", "less than 1", "0.1"),
    "lora.targets": ("", "at least 1 item", "attention"),
    "compute.nproc": ("0", "greater than or equal to 1", "1"),
    "compute.devices": ("gpu0", "must be auto, cpu or distinct GPU indices", "cpu"),
    "compute.prefix_cache_max_gb": ("0", "greater than 0", "2"),
}
CHOICES = {"schedule.scheduler": "cosine", "eval.metric": "f1", "precision": "fp32", "lora.quantize": "4bit",
           "compute.distributed": "fsdp", "compute.prefix_cache": "off", "compute.compact_vocab": "off",
           "compute.fast_dropout": "off"}
BLOCKS = re.compile("[\u2580-\u259f]+")
"""The block characters a scrollbar is drawn with."""
TOGGLES = {"compute.gradient_checkpointing": True, "compute.oom_recovery": False,
           "compute.labelled_logits_only": False, "compute.last_block_cls_only": False, "compute.unpadded_encoder": False,
           "eval.before_training": False,
           "compute.frozen_eval_mode": True, "lora.enabled": True,
           "lora.use_dora": True, "lora.use_rslora": True, "lora.merge_on_export": True}
"""Checkbox fields and the value a press of space gives them (the opposite of the default)."""
AUTO_OR_BOOL = {"data.group_by_length": True}
"""Fields of auto, true or false, and a value other than their default."""


def value_at(config, dotted):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


async def open_hyper(pilot) -> HyperScreen:
    await pilot.pause()  # the app shows its first step before it takes keys
    await pilot.press("escape", "4")  # out of the model's path box, to step 4
    await pilot.pause()
    assert isinstance(pilot.app.screen, HyperScreen)
    return pilot.app.screen


async def settle(pilot) -> None:
    """Wait until every worker (warm-up, model and data loads, and loads they start) is done."""
    app = pilot.app
    while any(w.is_running for w in app.workers):
        await app.workers.wait_for_complete()
        await pilot.pause()


async def load_demo_data(pilot) -> None:
    await settle(pilot)  # let the warm-up import transformers before a loader does
    pilot.app.load_data()
    await settle(pilot)
    assert pilot.app.data_state == "ready", pilot.app.session.load_errors


async def type_into(pilot, field: ConfigField, text: str) -> None:
    """Type over the field's text, as a user does after tabbing into it (focus selects the text);
    empty text is a backspace."""
    if field.control.has_focus:
        await pilot.press("end", "shift+home")
    else:
        field.control.focus()
    await pilot.press(*(text or ["backspace"]))
    await pilot.pause()


def draft_bar_text(app) -> str:
    return str(app.screen.query_one(DraftBar).content)


# ---- the schedule arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize(("scheduler", "warmup", "total"), [
    ("linear", 0, 10), ("linear", 3, 20), ("linear", 30, 20), ("cosine", 5, 50), ("cosine", 0, 7),
    ("constant", 4, 12), ("constant", 0, 5),
])
def test_lr_curve_matches_transformers(scheduler, warmup, total):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=3e-4)
    name = "constant_with_warmup" if scheduler == "constant" and warmup else scheduler  # as core.plan names it
    schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total + 1):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    ours = [lr for _, lr in lr_curve(name, 3e-4, warmup, total)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


def test_lr_curve_thins_long_runs_but_keeps_warmup_end_and_last_step():
    points = lr_curve("cosine", 1e-3, 137, 10_000, points=200)
    steps = [s for s, _ in points]
    assert len(points) <= 202 and steps[0] == 0 and steps[-1] == 10_000 and 137 in steps
    assert dict(points)[137] == pytest.approx(1e-3)


def test_field_specs_come_from_the_pydantic_models():
    from core.config import OutputConfig, RunConfig, ScheduleConfig

    max_steps = field_spec(ScheduleConfig, "max_steps", "schedule")
    assert (max_steps.dotted, max_steps.kind, max_steps.optional, max_steps.limits) == (
        "schedule.max_steps", "int", True, "≥ 1 or empty")
    assert "overrides epochs" in max_steps.help
    assert field_spec(RunConfig, "precision").choices == ("auto", "fp32", "bf16", "fp16")
    assert field_spec(OutputConfig, "save_final", "output").kind == "bool"
    metrics = {task: [spec.choices for _, specs in form_sections(task) for spec in specs
                      if spec.dotted == "eval.metric"] for task in ("classification", "causal-lm")}
    assert metrics == {"classification": [("loss", "accuracy", "f1")], "causal-lm": [("loss", "perplexity")]}


# ---- inline validation -------------------------------------------------------------------------

async def test_every_field_shows_pydantic_message_inline_and_clears_when_fixed():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_hyper(pilot)
        fields = screen.fields
        assert set(fields) == set(BAD_VALUES) | set(CHOICES) | set(TOGGLES) | set(AUTO_OR_BOOL), "every field of the screen is covered"
        before = app.session.config
        for count, (dotted, (bad, allowed, _)) in enumerate(BAD_VALUES.items(), 1):
            field = fields[dotted]
            await type_into(pilot, field, bad)
            assert field.control.value == bad, "the form keeps what was typed"
            assert allowed in field.error, field.error  # UserError.fields: the problem, without its field
            assert field.query_one(".field-error").display
            assert app.session.invalid[dotted] == field.error and len(app.session.invalid) == count
            assert f"{count} problem(s): " in draft_bar_text(app)
        assert app.session.config == before, "invalid values are not applied"
        assert app.is_running and app.screen is screen

        for count, (dotted, (_, _, good)) in reversed(list(enumerate(BAD_VALUES.items()))):
            field = fields[dotted]
            await type_into(pilot, field, good)
            assert field.error == "" and not field.query_one(".field-error").display
            assert dotted not in app.session.invalid and len(app.session.invalid) == count
            texts = {"lora.targets": [good], "compute.devices": good, "output.run_name": good}  # lists, text
            expected = texts[dotted] if dotted in texts else pytest.approx(float(good))
            assert value_at(app.session.config, dotted) == expected
        assert "ready" in draft_bar_text(app)


async def test_typing_is_restricted_to_numbers_pydantic_names_what_is_wrong_and_empty_means_none():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        fields = (await open_hyper(pilot)).fields
        await type_into(pilot, fields["optim.batch_size"], "abc")
        assert fields["optim.batch_size"].control.value == "16"  # letters never reach a number field
        assert fields["optim.batch_size"].error == "" and app.session.invalid == {}
        await type_into(pilot, fields["optim.batch_size"], "-")
        assert fields["optim.batch_size"].error.startswith("Input should be a valid integer")
        await type_into(pilot, fields["optim.lr"], "1e")
        assert fields["optim.lr"].error.startswith("Input should be a valid number")
        assert set(app.session.invalid) == {"optim.batch_size", "optim.lr"}
        assert "2 problem(s): optim.batch_size, optim.lr ·" in draft_bar_text(app)

        await type_into(pilot, fields["eval.batch_size"], "48")
        assert app.session.config.eval.batch_size == 48
        await type_into(pilot, fields["eval.batch_size"], "")
        assert app.session.config.eval.batch_size is None and fields["eval.batch_size"].error == ""


async def test_select_fields_offer_what_pydantic_allows_and_cross_field_errors_show_in_place():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_hyper(pilot)
        overlay = screen.fields["eval.metric"].query_one("SelectOverlay")
        options = [str(overlay.get_option_at_index(i).prompt) for i in range(overlay.option_count)]
        assert options == ["loss", "accuracy", "f1"]  # the metrics of the classification task
        for dotted, choice in CHOICES.items():
            screen.fields[dotted].control.focus()
            await pilot.press("enter", *choice, "enter")  # open the list, type to search, pick
            await pilot.pause()
            assert value_at(app.session.config, dotted) == choice
        for dotted, value in AUTO_OR_BOOL.items():
            overlay = screen.fields[dotted].query_one("SelectOverlay")
            assert [str(overlay.get_option_at_index(i).prompt) for i in range(overlay.option_count)] == [
                "auto", "true", "false"]  # as YAML writes them
            screen.fields[dotted].control.focus()
            await pilot.press("enter", *str(value).lower(), "enter")
            await pilot.pause()
            assert value_at(app.session.config, dotted) is value

        field = screen.fields["eval.metric"]
        field.post_message(ConfigField.Edited(field, "perplexity"))  # a causal-LM metric
        await pilot.pause()
        assert field.error == ("eval.metric 'perplexity' is not available for task 'classification'; "
                               "use one of: loss, accuracy, f1")
        assert app.session.invalid == {"eval.metric": field.error}
        assert app.session.config.eval.metric == "f1"


async def test_checkbox_fields_toggle_with_space():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_hyper(pilot)
        for dotted, toggled in TOGGLES.items():
            assert value_at(app.session.config, dotted) is not toggled
            screen.fields[dotted].control.focus()
            await pilot.press("space")
            await pilot.pause()
            assert value_at(app.session.config, dotted) is toggled


# ---- the preview -------------------------------------------------------------------------------

async def test_step_preview_counts_like_the_engine_and_follows_the_form():
    from core.data import batch_plan

    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_hyper(pilot)
        preview = screen.query_one(SchedulePreview)
        await settle(pilot)  # the demo data loads after the model: the steps show without a visit to step 2
        assert app.data_state == "ready" and preview.plan is not None
        data = app.session.data
        lengths = [len(ex.input_ids) for ex in data.train]
        for batch, accum, max_steps in [("16", "1", ""), ("7", "3", ""), ("16", "2", "11")]:
            await type_into(pilot, screen.fields["optim.batch_size"], batch)
            await type_into(pilot, screen.fields["optim.grad_accum"], accum)
            await type_into(pilot, screen.fields["schedule.max_steps"], max_steps)
            cfg = app.session.config
            # core/engine.py: micro-batches from batch_plan, steps rounded up, warmup from the ratio
            micro = len(batch_plan(lengths, cfg.optim.batch_size, cfg.seed, 0, cfg.data.group_by_length))
            per_epoch = math.ceil(micro / cfg.optim.grad_accum)
            total = cfg.schedule.max_steps or math.ceil(cfg.schedule.epochs * per_epoch)
            plan = preview.plan
            assert plan.train_rows == data.stats.rows_out["train"] == len(data.train)
            assert (plan.effective_batch, plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (
                cfg.optim.batch_size * cfg.optim.grad_accum, per_epoch, total, round(cfg.schedule.warmup_ratio * total))
            assert plan.eval_steps == [*range(15, total + 1, 15), *([total] if total % 15 else [])]
            assert plan.checkpoint_steps == plan.eval_steps[:-1]
            shown = dict(preview.lines)
            assert shown["steps / epoch"] == f"{per_epoch:,}" and shown["total steps"].startswith(f"{total:,} (")
        screen.fields["data.group_by_length"].control.focus()  # which rows share a step: the rows stay loaded
        await pilot.press("enter", "down", "down", "enter")  # auto, true, false
        await pilot.pause()
        assert app.session.config.data.group_by_length is False and app.session.data is data
        assert preview.plan is not None and app.data_state == "ready"
        app.session.update({"data.max_length": 48})  # as step 2's form does: the rows must be tokenized again
        app.changed()
        await pilot.pause()
        assert preview.plan is None and dict(preview.lines)["steps"] == NO_DATA


# ---- YAML --------------------------------------------------------------------------------------

async def submit_path(pilot, path) -> PathDialog:
    dialog = pilot.app.screen
    assert isinstance(dialog, PathDialog)
    dialog.query_one("#path-input").value = str(path)
    await pilot.press("enter")
    await pilot.pause()
    return dialog


async def test_save_then_load_round_trips_and_bad_yaml_shows_in_the_dialog(tmp_path):
    app = create_app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        screen = await open_hyper(pilot)
        await type_into(pilot, screen.fields["optim.lr"], "0")
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert app.screen is screen, "no saving while a field is invalid"
        toasts = [str(toast.render()) for toast in app.screen.query("Toast")]
        assert any("Not saved" in text and "optim.lr" in text for text in toasts), toasts

        await type_into(pilot, screen.fields["optim.lr"], "2e-4")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.query_one("#path-input").value == "sft.yaml"
        await submit_path(pilot, tmp_path / "run.yaml")
        assert app.screen is screen
        saved = load_config(tmp_path / "run.yaml")
        assert saved == app.session.config and saved.optim.lr == 2e-4

        await type_into(pilot, screen.fields["optim.lr"], "3e-4")  # saving over a file asks first
        await pilot.press("escape", "ctrl+s")
        await submit_path(pilot, tmp_path / "run.yaml")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("enter")  # the focused answer is "Keep it"
        await pilot.pause()
        assert isinstance(app.screen, PathDialog) and load_config(tmp_path / "run.yaml") == saved
        await pilot.press("enter")
        await pilot.pause()
        await pilot.click("#yes")
        await pilot.pause()
        saved = load_config(tmp_path / "run.yaml")
        assert app.screen is screen and saved == app.session.config and saved.optim.lr == 3e-4

        await type_into(pilot, screen.fields["optim.lr"], "0")  # loading replaces what was typed
        await pilot.press("escape", "ctrl+o")
        await pilot.pause()
        assert app.screen.query_one("#path-input").value == str(tmp_path / "run.yaml")
        await submit_path(pilot, tmp_path / "run.yaml")
        assert app.session.config == saved and app.session.invalid == {}
        assert screen.fields["optim.lr"].control.value == "0.0003" and screen.fields["optim.lr"].error == ""

        (tmp_path / "broken.yaml").write_text("optim:\n  lr: [0.1\n  batch_size: 4\n")
        await pilot.press("ctrl+o")
        dialog = await submit_path(pilot, tmp_path / "broken.yaml")
        assert app.screen is dialog and "YAML syntax error" in dialog.error and "at line 2," in dialog.error  # the open `[`
        (tmp_path / "typo.yaml").write_text("optim:\n  lrr: 0.1\n")
        await submit_path(pilot, tmp_path / "typo.yaml")
        assert "optim.lrr: unknown field" in dialog.error
        await pilot.press("escape")
        assert app.screen is screen and app.session.config == saved


async def test_at_80x24_every_field_shows_its_range_and_the_focused_one_its_whole_help():
    """At 80 columns the limits column was dropped, so the range hints were gone; the help line
    showed 4 lines of a docstring (L2-SP's has 8 there)."""
    from helpers import visible_text

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_hyper(pilot)
        for name, limits in (("lr", "> 0, < 1"), ("weight_decay", "≥ 0"), ("l2sp_alpha", "≥ 0"), ("l2sp_beta", "≥ 0"),
                             ("batch_size", "≥ 1"), ("max_grad_norm", "≥ 0"), ("epochs", "> 0, ≤ 10000")):
            screen.query_one(f"#field-{'schedule' if name == 'epochs' else 'optim'}-{name}").scroll_visible(animate=False)
            await pilot.pause()
            line = next(line for line in visible_text(app).splitlines() if line.startswith(f"│ {name} "))
            cells = [word for word in line.split("│")[1].split() if not BLOCKS.fullmatch(word)]  # not the scrollbar
            assert cells[-len(limits.split()):] == limits.split(), line
        screen.query_one("#hyper-form").scroll_home(animate=False)
        await pilot.press("tab")
        help_line = screen.query_one("#hyper-help")
        assert str(help_line.content).startswith("optim.lr (> 0, < 1): Base learning rate of AdamW")
        assert help_line.region.height and "optim.lr (> 0, < 1): Base" in visible_text(app)
        for dotted in ("optim.l2sp_alpha", "eval.before_training", "compute.labelled_logits_only"):  # the longest
            field = screen.fields[dotted]
            field.control.focus()

            limits = f" ({field.spec.limits})" if field.spec.limits else ""
            expected = f"{dotted}{limits}: {field.spec.help}"

            def in_view() -> bool:  # scrolled back into view (after a refresh or more on a loaded machine)
                return any(row.startswith(f"│ {field.spec.name[:15]}") for row in visible_text(app).splitlines())

            deadline = time.monotonic() + 15  # a loaded machine (CI, the suite's other workers) repaints late
            while time.monotonic() < deadline and not (in_view() and shown_help(app) == expected):
                await pilot.pause(0.05)
            assert shown_help(app) == expected
            assert in_view(), dotted


def shown_help(app) -> str:
    """The help line as the terminal shows it: its rows under the form, joined."""
    from helpers import visible_text

    region = app.screen.query_one("#hyper-help").region
    rows = visible_text(app).splitlines()[region.y:region.bottom]
    return " ".join(" ".join(row[region.x:region.right].split()) for row in rows).strip()

async def test_l2sp_and_the_evaluation_before_training_show_in_the_preview():
    """The form still shows optim.weight_decay under L2-SP: the preview says L2-SP replaces it. The
    evaluation before training (eval.before_training, on by default) is one of the preview's."""
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_hyper(pilot)
        await load_demo_data(pilot)
        preview = screen.query_one(SchedulePreview)
        assert dict(preview.lines)["evaluation"] == "before training, then every 15 steps: 15, 30, 45 (3×)"
        assert "regulariser" not in dict(preview.lines)

        await type_into(pilot, screen.fields["optim.l2sp_alpha"], "0.01")
        assert app.session.config.optim.l2sp_alpha == 0.01
        assert dict(preview.lines)["regulariser"] == "L2-SP alpha 0.01 beta 0 (replaces weight decay)"
        assert "Not applied under L2-SP" in screen.fields["optim.weight_decay"].spec.help
        await type_into(pilot, screen.fields["optim.l2sp_alpha"], "0")
        assert "regulariser" not in dict(preview.lines)

        screen.fields["eval.before_training"].control.focus()
        await pilot.press("space")
        await pilot.pause()
        assert app.session.config.eval.before_training is False
        assert dict(preview.lines)["evaluation"] == "every 15 steps: 15, 30, 45 (3×)"
