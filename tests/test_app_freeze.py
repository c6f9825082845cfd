"""The freeze-map screen (step 3), driven through the real app: presets, toggles, the rule dialog and
the rule list, checked against core.freeze on the same model skeleton."""

from __future__ import annotations

from textual.widgets import Input, Static

from core.config import FreezeRule, example_config, save_config
from core.freeze import effective_rules, summarize_freeze
from sft_tui.app import create_app
from sft_tui.format.numbers import format_count
from sft_tui.screens.dialogs.freeze_rule import RuleDialog
from sft_tui.screens.help import help_rows
from sft_tui.widgets.freeze.rules import RuleTable
from sft_tui.widgets.freeze.tree import ModuleTree
from helpers import visible_text

BLOCK = "bert.encoder.layer.{}"


async def open_freeze(pilot) -> None:
    """Go to step 3 and wait until the model structure has loaded and the screen shows it."""
    app = pilot.app
    await pilot.press("escape", "3")  # out of the model's path box, to step 3
    for _ in range(100):  # a load may start another (e.g. labels size the head): wait for all of them
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
        if app.model_state in ("ready", "failed") and all(w.is_finished for w in app.workers):
            break
    await pilot.pause(0.2)  # the tree's cursor highlight marks the deciding rule a moment later


def labels(app) -> dict[str, str]:
    """Module path -> plain label of every node in the tree (collapsed ones included)."""
    out = {}

    def walk(node) -> None:
        out[node.data.path] = str(node.label)
        for child in node.children:
            walk(child)

    walk(app.screen.query_one(ModuleTree).root)
    return out


def state(app, path: str) -> str:
    """`train`, `frozen` or `partial`: the word after the module's name in its label."""
    return labels(app)[path].split()[1]


def summary(app) -> str:
    return str(app.screen.query_one("#freeze-summary", Static).content)


def expected(app):
    """What core.freeze says about the session's freeze map, on the very skeleton the screen shows."""
    model, freeze = app.session.model, app.session.config.freeze
    return summarize_freeze(model.skeleton, effective_rules(freeze, model.description))


async def select(pilot, path: str) -> None:
    tree = pilot.app.screen.query_one(ModuleTree)
    tree.select_path(path)
    tree.focus()
    await pilot.pause()
    assert tree.cursor_node.data.path == path


async def test_head_only_preset_trains_the_classifier_and_the_pooler_and_marks_the_deciding_rules():
    """MiniLM's pooler only feeds the classifier: head-only trains it too, and its name says so."""
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert state(app, "") == "train" and "22,713,986 of 22,713,986" in summary(app)
        assert "h head+pooler " in summary(app)
        assert ("Freeze", "h", "Preset: head + final norm/pooler") in help_rows(app.keymap)
        await pilot.press("h")
        await pilot.pause()
        assert app.session.config.freeze.preset == "head-only"
        assert state(app, "classifier") == "train" and state(app, "bert.pooler") == "train"
        assert {state(app, path) for path in ("bert.embeddings", BLOCK.format(0))} == {"frozen"}
        truth = expected(app)
        assert truth.trainable_params == 770 + 147_840  # the classifier and the pooler's dense layer
        assert f"Trainable {truth.trainable_params:,} of {truth.total_params:,}" in summary(app)
        # the rule list marks the rules that decided the selected module: "*" frozen, then the pooler, "classifier"
        table = app.screen.query_one(RuleTable)
        await select(pilot, "classifier")
        assert table.deciding == {2}
        assert str(table.get_cell("2", "index")).startswith("▶") and str(table.get_cell("0", "index")).strip() == ""
        await select(pilot, BLOCK.format(0))
        assert table.deciding == {0}
        await select(pilot, "")
        assert table.deciding == {0, 1, 2}
        await pilot.press("a")  # another preset undoes it
        await pilot.pause()
        assert app.session.config.freeze.preset == "all" and state(app, "bert") == "train"


async def test_top_n_preset_trains_the_top_blocks():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert app.session.config.freeze.top_n == 2
        await pilot.press("t")
        await pilot.pause()
        assert app.session.config.freeze.preset == "top-n"
        assert [state(app, BLOCK.format(i)) for i in range(6)] == ["frozen"] * 4 + ["train"] * 2
        assert "top-2" in summary(app)
        await pilot.press("plus")
        await pilot.pause()
        assert app.session.config.freeze.top_n == 3
        assert [state(app, BLOCK.format(i)) for i in range(6)] == ["frozen"] * 3 + ["train"] * 3
        assert f"Trainable {expected(app).trainable_params:,}" in summary(app)


async def test_space_toggles_a_block_and_toggling_back_leaves_no_rule():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        await select(pilot, BLOCK.format(0))
        await pilot.press("space")
        await pilot.pause()
        rules = app.session.config.freeze.rules
        assert [(r.match, r.train) for r in rules] == [(BLOCK.format(0), False)]
        assert state(app, BLOCK.format(0)) == "frozen" and state(app, BLOCK.format(1)) == "train"
        assert state(app, "bert.encoder") == "partial"
        assert f"Trainable {expected(app).trainable_params:,}" in summary(app)
        await pilot.press("space")
        await pilot.pause()
        assert app.session.config.freeze.rules == [] and state(app, BLOCK.format(0)) == "train"


async def test_rule_added_in_the_dialog_with_lr_scale_shows_on_matched_modules():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        await select(pilot, BLOCK.format(1))
        await pilot.press("n")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, RuleDialog)
        assert dialog.query_one("#rule-match", Input).value == BLOCK.format(1)
        dialog.query_one("#rule-lr", Input).value = "0.5"
        await pilot.pause()
        assert "decides 16 tensors" in str(dialog.query_one("#rule-preview", Static).content)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, RuleDialog)
        [rule] = app.session.config.freeze.rules
        assert (rule.match, rule.train, rule.lr_scale) == (BLOCK.format(1), True, 0.5)
        shown = labels(app)
        assert "train lr x0.5" in shown[BLOCK.format(1)]
        assert "lr x0.5" in shown[BLOCK.format(1) + ".attention.self.query"]
        assert "lr x" not in shown[BLOCK.format(0)]
        assert "lr mixed" in shown["bert.encoder"]


async def test_invalid_values_keep_the_dialog_open_with_a_message():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        await pilot.press("n")
        await pilot.pause()
        dialog = app.screen
        lr, lr_error = dialog.query_one("#rule-lr", Input), dialog.query_one("#lr-error", Static)
        for bad, message in [("abc", "valid number"), ("0", "greater than 0"), ("-1", "greater than 0")]:
            lr.value = bad
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is dialog, bad
            assert lr_error.display and message in str(lr_error.content), bad
            assert lr.value == bad  # what the user typed stays
        lr.value = "1"
        dialog.query_one("#rule-match", Input).value = "re:("
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        match_error = dialog.query_one("#match-error", Static)
        assert app.screen is dialog and not lr_error.display
        assert "not a valid regular expression" in str(match_error.content)
        lr.value = "abc"  # both fields wrong: both say so
        await pilot.pause()
        assert lr_error.display and match_error.display
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not dialog and app.session.config.freeze.rules == []


async def test_rules_are_edited_moved_and_deleted_in_the_list():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        for i in (0, 1):
            await select(pilot, BLOCK.format(i))
            await pilot.press("space")
            await pilot.pause()
        table = app.screen.query_one(RuleTable)
        assert table.row_count == 3  # the preset's "*" then the two rules
        # numbered as messages name them (freeze.rules.N, from 0); the preset's rule has no number
        assert [str(table.get_cell_at((row, 0))).strip(" ▶") for row in range(3)] == ["", "0", "1"]
        table.focus()
        table.move_cursor(row=2)
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert [r.match for r in app.session.config.freeze.rules] == [BLOCK.format(1), BLOCK.format(0)]
        assert table.cursor_row == 1
        await pilot.press("enter")  # edit: freeze -> train at half the lr
        await pilot.pause()
        dialog = app.screen
        assert dialog.title_text == "Edit freeze.rules.0"
        dialog.query_one("#rule-train").value = True
        dialog.query_one("#rule-lr", Input).value = "0.5"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (app.session.config.freeze.rules[0].train, app.session.config.freeze.rules[0].lr_scale) == (True, 0.5)
        assert "lr x0.5" in labels(app)[BLOCK.format(1)]
        table.move_cursor(row=2)
        await pilot.press("x")
        await pilot.pause()
        assert [r.match for r in app.session.config.freeze.rules] == [BLOCK.format(1)]
        assert state(app, BLOCK.format(0)) == "train"  # deleting the rule restored the block
        table.move_cursor(row=0)
        await pilot.press("x")  # the preset's rule is not the user's to delete
        await pilot.pause()
        assert len(app.session.config.freeze.rules) == 1


async def test_a_reloaded_model_keeps_the_map_and_the_selected_module():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        await select(pilot, BLOCK.format(3) + ".attention")
        await pilot.press("space")
        before = app.session.model
        app.load_model()  # as after new labels from the data
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert app.session.model is not before
        assert app.screen.query_one(ModuleTree).cursor_node.data.path == BLOCK.format(3) + ".attention"
        assert state(app, BLOCK.format(3) + ".attention") == "frozen" and state(app, BLOCK.format(3)) == "partial"


async def test_an_invalid_regex_from_a_config_file_is_shown_and_can_be_deleted(tmp_path):
    config = example_config("classification")
    config.freeze.rules = [FreezeRule(match="re:(", train=False)]
    save_config(config, tmp_path / "run.yaml")
    app = create_app(tmp_path / "run.yaml")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert "not a valid regular expression" in summary(app)
        assert state(app, "bert") == "22.7M"  # no state shown while the map cannot be resolved
        table = app.screen.query_one(RuleTable)
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("x")
        await pilot.pause()
        assert app.session.config.freeze.rules == []
        assert state(app, "bert") == "train" and "Trainable 22,713,986" in summary(app)


async def test_a_model_that_fails_to_load_is_explained_in_place(tmp_path):
    config = example_config("classification")
    config.model.name_or_path = str(tmp_path / "no-such-model")
    save_config(config, tmp_path / "run.yaml")
    app = create_app(tmp_path / "run.yaml")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        assert app.model_state == "failed"
        shown = str(app.screen.query_one("#freeze-failed", Static).content)
        assert "Cannot show the freeze map" in shown and "no-such-model" in shown


def causal_lm_app(tmp_path, model_dir):
    """The app on the causal-LM demo's config with the model in `model_dir`."""
    config = example_config("causal-lm")
    config.model.name_or_path = str(model_dir)
    save_config(config, tmp_path / "run.yaml")
    return create_app(tmp_path / "run.yaml", task="causal-lm")


async def test_tied_gpt2_embeddings_toggle_with_the_lm_head(tmp_path, tiny_model_dir):
    app = causal_lm_app(tmp_path, tiny_model_dir("gpt2"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert app.session.model.description.head == ["lm_head"]
        await select(pilot, "transformer.wte")
        await pilot.press("space")
        await pilot.pause()
        assert [(r.match, r.train) for r in app.session.config.freeze.rules] == [("transformer.wte", False)]
        # lm_head.weight is transformer.wte.weight: one tensor, frozen under either name
        assert state(app, "transformer.wte") == "frozen" and state(app, "lm_head") == "frozen"
        assert state(app, "transformer.h.0") == "train"
        truth = expected(app)
        assert 0 < truth.trainable_params < truth.total_params
        assert f"Trainable {truth.trainable_params:,} of {truth.total_params:,}" in summary(app)
        await pilot.press("h")  # head only: the tied head trains, and so do the embeddings with it
        await pilot.pause()
        assert state(app, "lm_head") == "train" and state(app, "transformer.wte") == "train"
        assert state(app, "transformer.h.0") == "frozen"
        assert f"Trainable {expected(app).trainable_params:,}" in summary(app)


def test_trainable_share_is_recomputed_only_when_the_model_or_the_freeze_map_changes(tiny_model_factory,
                                                                                     monkeypatch):
    """The draft bar asks for it on every keystroke; walking every tensor each time is wasted."""
    import sft_tui.session
    from core.config import example_config
    from sft_tui.session import Session
    from sft_tui.worker import load_model_info

    session = Session(example_config("causal-lm"))
    session.update({"model.name_or_path": str(tiny_model_factory("gpt2"))})
    session.model = load_model_info(session.config)
    walks = []
    real = sft_tui.session.summarize_freeze
    monkeypatch.setattr(sft_tui.session, "summarize_freeze", lambda *a: walks.append(1) or real(*a))

    everything = session.trainable_share
    session.update({"optim.lr": 1e-4, "schedule.max_steps": 7})
    assert session.trainable_share == everything == 1.0 and len(walks) == 1
    session.update({"freeze.preset": "head-only"})
    head = session.trainable_share
    assert 0 < head < everything and len(walks) == 2
    session.model = load_model_info(session.config)
    assert session.trainable_share == head and len(walks) == 3


async def test_at_80_columns_the_tree_shows_whole_module_names():
    """Side by side with the rules the tree had 38 columns: blocks read "0 train 1.8M BertLay". (The
    bar's vocabulary line leaves room for two blocks; the tree scrolls to the rest.)"""
    from helpers import visible_text

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        text = visible_text(app)
        for i in range(2):
            assert f"{i} train 1.8M BertLayer" in text
        assert "rules · later ones win" in text and "preset" in text  # the rules stay on screen, below


async def test_a_tied_lm_head_names_its_owner_in_the_tree(tmp_path, tiny_model_dir):
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert labels(app)["lm_head"] == "lm_head train tied with model.embed_tokens Linear"
        embeddings = app.session.model.skeleton.model.embed_tokens.weight.numel()
        assert labels(app)["model.embed_tokens"] == f"embed_tokens train {format_count(embeddings)} Embedding"


async def test_lora_targets_are_picked_from_the_tree_and_the_summary_counts_the_adapters(tmp_path, tiny_model_dir):
    from core.lora import preview

    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert "+lora" not in labels(app)[""]
        await pilot.press("L")  # the all-linear preset turns LoRA on
        await pilot.pause()
        lora = app.session.config.lora
        assert lora.enabled and lora.targets == ["all-linear"]
        assert "+lora" in labels(app)["model.layers.0.mlp.up_proj"] and "+lora" not in labels(app)["lm_head"]
        model = app.session.model
        truth, plan, _ = preview(model.skeleton, model.description, app.session.config)
        assert 0 < truth.trainable_params < truth.total_params
        assert f"Trainable {truth.trainable_params:,} of {truth.total_params:,}" in summary(app)
        assert state(app, "model.layers.0") == "frozen"  # the base freezes under LoRA

        await select(pilot, "model.layers.1.mlp")
        await pilot.press("l")  # all its layers have adapters: take them away
        await pilot.pause()
        targets = app.session.config.lora.targets
        assert len(targets) == len(plan.targets) - 3 and not any(t.startswith("model.layers.1.mlp") for t in targets)
        assert "+lora" not in labels(app)["model.layers.1.mlp"] and "+lora" in labels(app)["model.layers.1"]
        fewer = preview(model.skeleton, model.description, app.session.config)[0].trainable_params
        assert fewer < truth.trainable_params and f"Trainable {fewer:,} of" in summary(app)
        await pilot.press("l")  # and back
        await pilot.pause()
        assert "+lora" in labels(app)["model.layers.1.mlp.down_proj"]

        await pilot.press("A")  # the attention preset
        await pilot.pause()
        assert app.session.config.lora.targets == ["attention"]
        assert "+lora" in labels(app)["model.layers.0.self_attn"] and "+lora" not in labels(app)["model.layers.0.mlp"]

        # A stray `l` that turned LoRA on is undone by a second one: it was refused ("turn LoRA off in
        # the hyperparameters instead"), and the map stayed as the stray key left it.
        await pilot.press("a")  # the all preset, LoRA off
        app.session.update({"lora.enabled": False})
        await pilot.pause()
        await select(pilot, "model.layers.1")
        await pilot.press("l", "l")
        await pilot.pause()
        assert not app.session.config.lora.enabled and "+lora" not in labels(app)["model.layers.1"]
        assert state(app, "model.layers.0") == "train"


def data_share(app) -> float:
    """The share of positions whose logits the run computes, from the data the app loaded after
    the model (core.memory.labelled_share); 1 while the data is unknown (a data setting changed)."""
    from core.memory import labelled_share

    data, config = app.session.data, app.session.config
    if data is None:
        return 1.0
    return labelled_share(data.stats.tokens_total, data.stats.loss_tokens, config.compute.labelled_logits_only)


def memory_line(app, checkpointing: bool) -> tuple[str, str]:
    """The freeze summary's memory and the batch it is for, computed from core.memory on the
    session's model, data and form."""
    from core.freeze import resolve
    from core.memory import blocks_in_backward, estimate_peak, format_bytes, model_shape

    model, config = app.session.model, app.session.config
    names = [n for n, s in resolve(model.skeleton, effective_rules(config.freeze, model.description)).items() if s.train]
    truth = expected(app)
    blocks = blocks_in_backward(model.description.blocks, model.description.embeddings, names)
    length = min(config.data.max_length, model.max_positions)
    sizes = [estimate_peak(truth.total_params, truth.trainable_params, model_shape(model.skeleton.config), blocks,
                           batch=config.optim.batch_size, length=length, task=config.task, checkpointing=on,
                           labelled_share=data_share(app)).total for on in (checkpointing, not checkpointing)]
    return (f"memory {format_bytes(sizes[0])} + process", f"batch {config.optim.batch_size} x {length} · "
            f"{'without' if checkpointing else 'with'} gradient checkpointing: {format_bytes(sizes[1])}")


async def test_the_memory_estimate_follows_the_freeze_map_and_the_form(tmp_path, tiny_model_dir):
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        text = summary(app)
        assert all(part in text for part in memory_line(app, False)) and "logits" in text
        before = text
        app.session.update({"optim.batch_size": 64, "data.max_length": 128})  # as the form's fields do
        app.changed()
        await pilot.pause()
        assert all(part in summary(app) for part in memory_line(app, False)) and "batch 64 x 128 ·" in summary(app)
        assert summary(app) != before
        app.session.update({"compute.gradient_checkpointing": True})
        app.changed()
        await pilot.pause()
        assert all(part in summary(app) for part in memory_line(app, True))
        await pilot.press("h")  # head only: a tied head still sends backward through every block
        await pilot.pause()
        assert all(part in summary(app) for part in memory_line(app, True))


async def test_an_estimate_over_the_machines_memory_says_so_and_what_needs_less(tmp_path, tiny_model_dir, monkeypatch):
    """A 70B model's full fine-tune on a 24 GB machine read "memory 1005.9 GB + process" and nothing
    more, and Start said ready: the run was found out at its first step. On a machine whose RAM the
    estimate exceeds (here, RAM reported as 1 MB) the summary says so under the estimate, at 80x24,
    in one line that leaves the presets on the screen, with what the draft has not tried or that the
    weights alone are too many; with the RAM back it says nothing."""
    import psutil

    real = psutil.virtual_memory
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        assert "run out of memory" not in summary(app)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: real()._replace(total=2**20))
        app.changed()
        await pilot.pause()
        lines = summary(app).splitlines()
        warning = next(i for i, line in enumerate(lines) if line.startswith("! more than"))
        assert lines[warning] == "! more than this machine's RAM (1.0 MB): try LoRA or gradient checkpointing"
        assert lines[warning - 1].startswith("  batch ") and max(map(len, lines)) <= 78  # under the estimate; fits
        assert "Presets" in visible_text(app)  # the keys below it stay on the screen
        app.session.update({"lora.enabled": True})  # what it suggests is what the draft has not tried
        app.changed()
        await pilot.pause()
        assert "! more than this machine's RAM (1.0 MB): try gradient checkpointing" in summary(app)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: real()._replace(total=1024))
        app.changed()
        await pilot.pause()
        assert "! more than this machine's RAM (1.0 KB): the weights alone are more" in summary(app)
        await pilot.press("5")  # and where Start is
        await pilot.pause()
        shown = " ".join(visible_text(app).split())
        assert "more than this machine's RAM (1.0 KB), see step 3" in shown
        await pilot.press("3")
        await pilot.pause()
        monkeypatch.setattr(psutil, "virtual_memory", real)
        app.changed()
        await pilot.pause()
        assert "run out of memory" not in summary(app)


async def test_under_lora_the_draft_bar_and_the_estimate_are_the_wrapped_models(tmp_path, tiny_model_dir):
    """The session's summary used to ignore LoRA: the draft bar said 100.0% trainable, and the
    estimate counted the map's full modules and no adapter outputs. Now both are what the engine's
    dry run computes (core.memory.estimate_model) on the model core.lora wraps, here on the meta
    skeleton, dropout on so that the adapters' copies of their inputs count."""
    import copy

    from core.lora import apply_lora
    from core.memory import estimate_model, format_bytes
    from sft_tui.format.numbers import format_share

    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        app.session.update({"lora.dropout": 0.1})
        await pilot.press("L")  # LoRA on every linear layer
        await pilot.pause()
        model, config = app.session.model, app.session.config
        wrapped, _, truth = apply_lora(copy.deepcopy(model.skeleton), model.description, config)
        assert 0 < truth.trainable_share < 0.5
        bar = str(app.screen.query_one("DraftBar", Static).content)
        assert f"{format_share(truth.trainable_share)} trainable" in bar
        length = min(config.data.max_length, model.max_positions)
        estimate = estimate_model(wrapped, batch=config.optim.batch_size, length=length, task=config.task,
                                  checkpointing=False, labelled_share=data_share(app))
        parts = [estimate.gradients, estimate.optimizer, estimate.activations, estimate.allocator_kept, estimate.total]
        assert estimate.allocator_kept  # a LoRA run on the CPU keeps what peft's forward frees
        shown = summary(app)
        assert all(format_bytes(part) in shown for part in parts), (shown, [format_bytes(p) for p in parts])
        app.session.update({"freeze.top_n": 1})
        await pilot.press("t")  # top-1: peft trains the top block in full (modules_to_save), block 0 through adapters
        await pilot.pause()
        wrapped, _, _ = apply_lora(copy.deepcopy(model.skeleton), model.description, app.session.config)
        topn = estimate_model(wrapped, batch=config.optim.batch_size, length=length, task=config.task,
                              checkpointing=False, labelled_share=data_share(app))
        assert topn.gradients > estimate.gradients
        parts = [topn.weights, topn.gradients, topn.activations, topn.total]  # weights: with peft's originals
        shown = summary(app)
        assert all(format_bytes(part) in shown for part in parts), (shown, [format_bytes(p) for p in parts])


def prefix_line(app) -> str | None:
    lines = [line for line in summary(app).splitlines() if line.startswith("prefix cache")]
    assert len(lines) <= 1
    return lines[0] if lines else None


async def test_the_summary_shows_the_prefix_caches_speedup_for_the_map(tmp_path, tiny_model_dir):
    """On a dropout-free tiny Llama (2 blocks, tied head): top-1 leaves block 0 below the lowest
    trained block, but the tied head trains the embedding, which the line says how to fix; with the
    head frozen the line gives core.prefix_cache's expected speed-up and the cache's size (a hidden
    state per training token), and follows the map."""
    from core.memory import format_bytes, model_shape
    from core.prefix_plan import expected_speedup

    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert prefix_line(app) is None  # full fine-tune: no frozen prefix, nothing said
        app.session.update({"freeze.preset": "top-n", "freeze.top_n": 1})
        app.changed()
        await pilot.pause()
        assert prefix_line(app) == "prefix cache off: the tied LM head is the embedding and trains; freeze lm_head"
        app.session.update({"freeze.rules": [{"match": "lm_head", "train": False}]})
        app.changed()
        await pilot.pause()
        model, config = app.session.model, app.session.config
        description, length = model.description, min(config.data.max_length, model.max_positions)

        def speedup(trainable):
            return expected_speedup(model_shape(model.skeleton.config), description.blocks, description.embeddings,
                                    trainable, epochs=config.schedule.epochs, length=length,
                                    head_positions=data_share(app)).later_epochs

        one = speedup(["model.layers.1", "model.norm"])
        size = format_bytes(app.session.data.stats.tokens_total * model.skeleton.config.hidden_size * 4)
        assert prefix_line(app) == f"prefix cache block 0 run once · ~{one:.1f}x faster from epoch 2 · {size}"
        app.session.update({"freeze.preset": "head-only"})  # the rule still freezes lm_head: both blocks run once
        app.changed()
        await pilot.pause()
        both = speedup(["model.norm"])
        assert both > one
        assert prefix_line(app).startswith(f"prefix cache blocks 0-1 run once · ~{both:.1f}x faster")
        app.session.update({"compute.prefix_cache": "off"})
        app.changed()
        await pilot.pause()
        assert prefix_line(app) == "prefix cache off: compute.prefix_cache is off"
        await pilot.press("a")
        await pilot.pause()
        assert prefix_line(app) is None


def vocab_line(app) -> str | None:
    lines = [line for line in summary(app).splitlines() if line.startswith("vocabulary")]
    assert len(lines) <= 1
    return lines[0] if lines else None


async def test_the_demo_full_fine_tune_counts_state_for_the_embedding_rows_its_data_uses():
    """MiniLM on demo:sentiment: the engine trains only the word-embedding rows the rows use
    (core.compact_vocab), and the bar counts gradients for those and says why they are fewer."""
    from core.memory import format_bytes

    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        used, total = len(app.session.data.token_ids), 22_713_986
        assert 0 < used < 30_522 // 2
        assert vocab_line(app) == f"vocabulary {used:,} of 30,522 embedding rows train: those the data uses"
        assert f"grads {format_bytes((total - (30_522 - used) * 384) * 4)}" in summary(app)
        await pilot.press("e")  # freeze-emb: the embeddings are frozen, every trained tensor has state
        await pilot.pause()
        assert vocab_line(app) is None
        await pilot.press("a")
        await pilot.pause()
        assert vocab_line(app) is not None
        app.session.update({"compute.compact_vocab": "off"})
        app.changed()
        await pilot.pause()
        assert vocab_line(app) is None and f"grads {format_bytes(total * 4)}" in summary(app)


async def test_the_demo_encoders_dropout_is_named_with_its_setting():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        await pilot.press("t")
        await pilot.pause()
        assert prefix_line(app) == "prefix cache off: blocks 0-3 draw dropout; set compute.frozen_eval_mode"
        app.session.update({"compute.frozen_eval_mode": True})
        app.changed()
        await pilot.pause()
        assert prefix_line(app).startswith("prefix cache blocks 0-3 run once · no gain in one epoch · ")
        app.session.update({"schedule.epochs": 3})
        app.changed()
        await pilot.pause()
        assert prefix_line(app).startswith("prefix cache blocks 0-3 run once · ~")
        assert "faster from epoch 2 · " in prefix_line(app)


# ---- the transfer-learning methods of the map (issue 13) --------------------------------------------
def subtitles(app) -> tuple[str, str]:
    """The bottom borders of the tree (unfreezing) and of the rule list (the lr spread)."""
    screen = app.screen
    return str(screen.query_one(ModuleTree).border_subtitle), str(screen.query_one(RuleTable).border_subtitle)


async def decay_dialog(pilot, text: str):
    """Type `text` into the open layer-wise decay dialog and press Enter; the dialog, or None once it closed."""
    from sft_tui.screens.dialogs.freeze_methods import DecayDialog

    dialog = pilot.app.screen
    assert isinstance(dialog, DecayDialog)
    dialog.query_one(Input).value = text
    await pilot.press("enter")
    await pilot.pause()
    return pilot.app.screen if isinstance(pilot.app.screen, DecayDialog) else None


async def test_layerwise_decay_writes_rules_for_the_trained_blocks_and_shows_the_lr_spread():
    from core.lr_decay import layerwise_lr_rules

    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert subtitles(app)[1] == "lr 5.0e-5 · d lr decay"
        await pilot.press("d")
        await pilot.pause()
        dialog = pilot.app.screen
        assert str(dialog.query_one("#decay-effect").content) == "block 0 x0.328 of the base lr · embeddings x0.262"  # 0.8
        dialog = await decay_dialog(pilot, "1.5")
        assert "layer-wise lr decay must be in (0, 1], not 1.5" in dialog.error
        assert str(dialog.query_one("#decay-effect").content) == ""  # no effect shown for a refused value
        dialog = await decay_dialog(pilot, "abc")
        assert "must be a number in (0, 1]" in dialog.error and "'abc'" in dialog.error
        assert app.session.config.freeze.rules == []  # nothing written while the value is refused
        assert await decay_dialog(pilot, "0.5") is None
        blocks = [BLOCK.format(i) for i in range(6)]
        written = [(r.match, r.train, r.lr_scale) for r in app.session.config.freeze.rules]
        assert written == ([(block, True, 0.5 ** (5 - i)) for i, block in enumerate(blocks)]
                           + [("bert.embeddings", True, 0.5**6)])  # the tables with their LayerNorm
        assert labels(app)[BLOCK.format(0)].startswith("0 train lr x0.0312 ")
        assert labels(app)[BLOCK.format(5)].startswith("5 train 1.8M")  # the top block at the base lr
        # the spread over the trainable parameters, at optim.lr 5e-5: the embeddings' 1/64 to the head's 1
        assert subtitles(app)[1] == "lr x0.016-x1 (7.8e-7 - 5.0e-5) · d lr decay"
        app.session.update({"optim.lr": 1e-4})  # as the hyperparameter form does
        app.changed()
        await pilot.pause()
        assert subtitles(app)[1] == "lr x0.016-x1 (1.6e-6 - 1.0e-4) · d lr decay"

        # freeze block 0, then decay again: the old decay rules go, the toggle stays, block 0 gets none
        await select(pilot, BLOCK.format(0))
        await pilot.press("space")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        assert app.screen.query_one(Input).value == "0.5"  # the last decay is offered again
        assert await decay_dialog(pilot, "0.8") is None
        model = app.session.model
        again = layerwise_lr_rules(model.description, 0.8, lambda path: path != BLOCK.format(0))
        assert app.session.config.freeze.rules == [FreezeRule(match=BLOCK.format(0), train=False)] + again
        assert [r.lr_scale for r in again][:2] == [0.4096, 0.512] and state(app, BLOCK.format(0)) == "frozen"
        assert subtitles(app)[1] == "lr x0.26-x1 (2.6e-5 - 1.0e-4) · d lr decay"


async def unfreeze_dialog(pilot, kind: str, every: str):
    """Set the open unfreezing dialog's fields and press Enter in `every`; the dialog, or None once it closed."""
    from textual.widgets import Select

    from sft_tui.screens.dialogs.freeze_methods import UnfreezeDialog

    dialog = pilot.app.screen
    assert isinstance(dialog, UnfreezeDialog)
    dialog.query_one(Select).value = kind
    field = dialog.query_one(Input)
    field.value = every
    field.focus()
    await pilot.press("enter")
    await pilot.pause()
    return pilot.app.screen if isinstance(pilot.app.screen, UnfreezeDialog) else None


def starts(app) -> dict[str, str]:
    """Module path -> `from step N` / `from epoch k`, for the modules whose label says when they start."""
    out = {}
    for path, label in labels(app).items():
        words = label.split()
        if "from" in words:
            at = words.index("from")
            out[path] = " ".join(words[at:at + 3])
    return out


async def test_unfreezing_controls_set_the_config_and_the_tree_shows_when_each_part_starts():
    from core.unfreezing import ABOVE_BLOCKS, EMBEDDINGS, plan_unfreezing

    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        assert starts(app) == {} and subtitles(app)[0] == "u unfreezing none · p LP-FT"
        await pilot.press("u")
        await pilot.pause()
        dialog = await unfreeze_dialog(pilot, "gradual", "ten")
        assert "freeze.unfreeze_every" in dialog.error and "valid integer" in dialog.error
        dialog = await unfreeze_dialog(pilot, "gradual", "-5")
        assert "freeze.unfreeze_every" in dialog.error and "greater than or equal to 0" in dialog.error
        assert app.session.config.freeze.unfreezing == "none"  # a refused value changes nothing
        assert await unfreeze_dialog(pilot, "gradual", "100") is None
        freeze = app.session.config.freeze
        assert (freeze.unfreezing, freeze.unfreeze_every) == ("gradual", 100)
        # the head and the pooler first, then one block from the top every 100 steps, the embeddings last
        model = app.session.model
        schedule = plan_unfreezing("gradual", 100, list(model.skeleton.state_dict()),
                                   model.description.blocks, model.description.embeddings)
        assert schedule.stages == (ABOVE_BLOCKS, *reversed(model.description.blocks), EMBEDDINGS)
        shown = starts(app)
        assert shown["classifier"] == shown["bert.pooler"] == "from step 0"
        assert [shown[BLOCK.format(i)] for i in range(6)] == [f"from step {100 * (6 - i)}" for i in range(6)]
        # the bottom part is the whole bert.embeddings (tables and LayerNorm), said once on it
        assert shown["bert.embeddings"] == "from step 700" and "bert.embeddings.word_embeddings" not in shown
        assert "bert.encoder" not in shown and "" not in shown  # mixed: said on the parts
        assert subtitles(app)[0] == "u unfreezing gradual: 8 stages of 100 steps · p LP-FT"

        # LP-FT as a preset over the user's map (top-2): the head and the pooler, then both blocks
        await pilot.press("t")
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        freeze = app.session.config.freeze
        assert (freeze.preset, freeze.unfreezing, freeze.unfreeze_every) == ("top-n", "lp-ft", 100)
        assert starts(app) == {"classifier": "from step 0", "bert.pooler": "from step 0",
                               BLOCK.format(4): "from step 100", BLOCK.format(5): "from step 100"}
        await pilot.press("u")
        await pilot.pause()
        assert await unfreeze_dialog(pilot, "lp-ft", "0") is None  # a stage of one epoch
        assert starts(app)[BLOCK.format(4)] == "from epoch 2" and starts(app)["classifier"] == "from epoch 1"
        assert subtitles(app)[0] == "u unfreezing lp-ft: 2 stages of 1 epoch · p LP-FT"
        await pilot.press("h")  # head-only: one part, nothing starts later
        await pilot.pause()
        assert starts(app) == {} and "one stage" in subtitles(app)[0]
        await pilot.press("a", "u")
        await pilot.pause()
        assert await unfreeze_dialog(pilot, "none", "0") is None
        assert starts(app) == {} and app.session.config.freeze.unfreezing == "none"


async def test_at_80x24_the_methods_and_their_dialogs_fit():
    from helpers import visible_text

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        await pilot.press("d")
        await pilot.pause()
        text = visible_text(app)
        assert "Layer-wise learning-rate decay" in text and "Write rules" in text and "Cancel" in text
        assert await decay_dialog(pilot, "0.8") is None
        await pilot.press("u")
        await pilot.pause()
        text = visible_text(app)
        assert "Gradual unfreezing / LP-FT" in text and "every" in text and "Apply" in text and "Cancel" in text
        assert await unfreeze_dialog(pilot, "gradual", "0") is None
        await select(pilot, BLOCK.format(0))
        text = visible_text(app)
        assert "u unfreezing gradual: 8 stages of 1 epoch · p LP-FT" in text
        assert "lr x0.26-x1 (1.3e-5 - 5.0e-5) · d lr decay" in text
        assert "0 train lr x0.328 from epoch 7 1.8M BertLayer" in text


def l2sp_part(app) -> int | None:
    """The bytes the estimate's L2-SP line shows, None when it shows none."""
    import re

    found = re.search(r"L2-SP's copy of the starting weights ([\d.]+ [KMG]?B)", summary(app))
    return found.group(1) if found else None


def shown_peak(app) -> float:
    """The estimate's peak in bytes, to the 0.1 of its unit that it shows."""
    import re

    value, unit = re.search(r"memory ([\d.]+) ([KMG]?B)", summary(app)).groups()
    return float(value) * 1024 ** ["B", "KB", "MB", "GB"].index(unit)


async def test_the_memory_estimate_counts_l2sps_copy_of_the_trained_pretrained_weights():
    """L2-SP keeps a 4-byte starting copy of each trained pretrained weight: not of the classifier,
    which is new, so under head-only only of the pooler's; of the word embedding, only the rows the
    data uses (core.compact_vocab trains those alone)."""
    from core.memory import format_bytes

    total = shown_peak
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        without = total(app)
        assert l2sp_part(app) is None
        app.session.update({"optim.l2sp_alpha": 0.01})
        app.changed()
        await pilot.pause()
        left_out = (30_522 - len(app.session.data.token_ids)) * 384
        reference = 4 * (22_713_986 - 770 - left_out)
        assert l2sp_part(app) == format_bytes(reference)
        assert abs(total(app) - without - reference) <= 0.1 * 1024**2  # the peak grows by the copy
        await pilot.press("h")
        await pilot.pause()
        assert l2sp_part(app) == format_bytes(4 * 147_840)
        app.session.update({"optim.l2sp_alpha": 0.0, "optim.l2sp_beta": 0.01})  # beta keeps no copy
        app.changed()
        await pilot.pause()
        assert l2sp_part(app) is None


async def test_the_demo_classifiers_last_block_is_counted_at_the_first_token():
    """compute.last_block_cls_only, on by default: MiniLM's last block keeps its keys and values at
    every position and the rest at the first token only (core.cls_only). Counted whole, the estimate
    of the demo's full fine-tune was 15-18% above the measured peak; with the option off it is whole."""
    from core.memory import estimate_peak, model_shape

    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        on = shown_peak(app)
        app.session.update({"compute.last_block_cls_only": False})
        app.changed()
        await pilot.pause()
        off = shown_peak(app)
        model, config = app.session.model, app.session.config
        args = {"batch": config.optim.batch_size, "length": min(config.data.max_length, model.max_positions),
                "task": "classification"}
        shape, blocks = model_shape(model.skeleton.config), (len(model.description.blocks), 0)
        whole = estimate_peak(1, 1, shape, blocks, **args).activations
        at_cls = estimate_peak(1, 1, shape, blocks, first_token_top="trained", **args).activations
        assert whole - at_cls > 0.05 * on
        assert abs((off - on) - (whole - at_cls)) <= 0.1 * 1024**2


async def test_a_causal_lms_head_is_pretrained_and_counted_once_with_its_tied_embedding(tmp_path, tiny_model_dir):
    from core.memory import format_bytes

    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        app.session.update({"optim.l2sp_alpha": 0.1, "freeze.preset": "head-only"})
        app.changed()
        await pilot.pause()
        skeleton = app.session.model.skeleton
        tied_head = skeleton.model.embed_tokens.weight.numel() + skeleton.model.norm.weight.numel()
        assert l2sp_part(app) == format_bytes(4 * tied_head)


async def test_a_tied_lm_head_starts_with_its_embedding_and_makes_no_stage_of_its_own(tmp_path, tiny_model_dir):
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_freeze(pilot)
        app.session.update({"freeze.unfreezing": "gradual", "freeze.unfreeze_every": 10})
        app.changed()
        await pilot.pause()
        assert starts(app) == {"lm_head": "from step 0", "model.embed_tokens": "from step 0", "model.norm": "from step 0",
                               "model.layers.1": "from step 10", "model.layers.0": "from step 20"}
        assert subtitles(app)[0] == "u unfreezing gradual: 3 stages of 10 steps · p LP-FT"


def test_the_memory_parts_break_between_parts_at_80_columns():
    """A causal LM's five parts were one line too wide for 80 columns: `logits` ended one line and
    its size began the next. Parts now go whole to the next line."""
    from core.memory import MemoryEstimate
    from sft_tui.format.model import PARTS_WIDTH, training_memory

    estimate = MemoryEstimate(4_500_000, 4_500_000, 9_000_000, 33_500_000, 1_250_000)
    lines = training_memory(estimate, estimate, False, 8, 32, "cpu").plain.splitlines()
    assert lines[1:3] == ["  weights 4.3 MB · grads 4.3 MB · AdamW 8.6 MB · activations 31.9 MB", "  logits 1.2 MB"]
    assert all(len(line) <= PARTS_WIDTH + 2 for line in lines[1:3])


def test_checkpointing_that_would_take_more_memory_says_why():
    """A small BERT's top 2 blocks: 5.5 MB, and 8.7 MB with gradient checkpointing, with no word,
    read as an error. The line says why either way round."""
    from core.memory import MemoryEstimate
    from sft_tui.format.model import training_memory

    small, recomputing = MemoryEstimate(1, 1, 2, 3, 0), MemoryEstimate(1, 1, 2, 3, 0, allocator_kept=9)
    off = training_memory(small, recomputing, False, 8, 32, "cpu").plain
    assert "  batch 8 x 32 · with gradient checkpointing: 16 B (no saving here)\n" in off
    on = training_memory(recomputing, small, True, 8, 32, "cpu").plain
    assert "  batch 8 x 32 · without gradient checkpointing: 7 B (less here)\n" in on
    assert "here" not in training_memory(recomputing, small, False, 8, 32, "cpu").plain  # it saves: nothing to say


async def test_a_preset_key_pressed_while_the_model_loads_is_kept(monkeypatch, tmp_path, tiny_model_dir):
    """The first visit to step 3 shows a spinner while the model's structure loads (seconds, with
    torch and transformers imported then); a preset key pressed meanwhile used to be dropped."""
    import threading

    import sft_tui.loading

    release = threading.Event()
    real = sft_tui.loading.load_model_info

    def slow(config, labels=None):
        release.wait(30)
        return real(config, labels)

    monkeypatch.setattr(sft_tui.loading, "load_model_info", slow)
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape", "3")
        await pilot.pause()
        assert app.model_state == "loading"
        assert "reading the model's structure" in visible_text(app)  # says what the dots wait for
        await pilot.press("h")
        assert app.session.config.freeze.preset == "head-only"
        release.set()
        await open_freeze(pilot)
        assert app.session.config.freeze.preset == "head-only"
        assert summary(app).startswith(f"Trainable {expected(app).trainable_params:,} of")


async def test_right_opens_a_module_and_left_closes_it_or_goes_to_its_parent(tmp_path, tiny_model_dir):
    """Only an undocumented Enter opened a module; at 80x24 the tree shows 7 rows, and one opened on
    the last of them seemed not to open."""
    app = causal_lm_app(tmp_path, tiny_model_dir("llama"))
    async with app.run_test(size=(80, 24)) as pilot:
        await open_freeze(pilot)
        tree = app.screen.query_one(ModuleTree)
        assert "→ open" in app.screen.query_one("#freeze-tree").border_title
        await select(pilot, "model.layers.1")
        block = tree.cursor_node
        assert not block.is_expanded
        await pilot.press("right")
        await pilot.pause()
        assert block.is_expanded and "self_attn" in visible_text(app)
        await pilot.press("down", "left")  # on a closed child: to its parent
        assert tree.cursor_node is block
        await pilot.press("left")
        assert not block.is_expanded
