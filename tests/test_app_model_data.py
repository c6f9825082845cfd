"""The model (step 1) and data (step 2) screens, driven through the real app: what a user sees after
opening the demo, pointing at a folder, a cached hub model or a data file, and typing bad values."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from textual.widgets import DataTable, Input, OptionList, Static

from sft_tui.app import create_app
from helpers import settle, visible_text
from core.memory import format_bytes
from sft_tui.format.numbers import format_count
from sft_tui.format.data import ANSWER_MARK, MASKED_STYLE, TRAINED_STYLE


def shown(app, selector: str) -> str:
    """The plain text of a Static on the current screen, as it is rendered."""
    widget = app.screen.query_one(selector, Static)
    if not widget.display:
        return ""
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(widget.content)
    return console.file.getvalue()


async def load_model_from(pilot, name: str) -> None:
    """Type a folder or hub id into the model input and press Enter."""
    path_input = pilot.app.screen.query_one("#model-path", Input)
    path_input.value = name
    path_input.focus()
    await pilot.press("enter")
    await settle(pilot)


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


# ---- start-up -------------------------------------------------------------------------------------


def test_app_and_its_first_screens_import_neither_torch_nor_transformers():
    code = (
        "import sys\n"
        "from sft_tui.app import create_app\n"
        "import sft_tui.screens.model, sft_tui.screens.data\n"
        "create_app()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_screen_draws_with_the_demo_preselected_before_torch_is_imported():
    """Run the app with the warm-up (which imports torch on purpose) and the loader stubbed out: the
    model screen is drawn, the demo is preselected and its load requested, and nothing drawn so far
    needed torch or transformers."""
    code = """
import asyncio, sys
import sft_tui.app
sft_tui.app.warm_up = lambda: None
from textual.widgets import Input, OptionList

async def main():
    app = sft_tui.app.create_app()
    requested = []

    def load_model():  # what SftApp.load_model does, less the worker that imports torch
        requested.append(app.session.config.model.name_or_path)
        app.model_state = "loading"

    app.load_model = load_model
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        sources = app.screen.query_one("#model-sources", OptionList)
        print(type(app.screen).__name__, app.screen.query_one("#model-path", Input).value,
              sources.highlighted_option.id, requested, "torch" in sys.modules, "transformers" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ModelScreen demo:minilm demo:minilm ['demo:minilm'] False False"


# ---- the model screen -----------------------------------------------------------------------------


async def test_demo_minilm_loads_by_itself_and_shows_its_structure():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.model_state == "ready"
        text = shown(app, "#model-description")
        assert "BertForSequenceClassification" in text
        assert "22.7M (22,713,986)" in text
        assert "6 × BertLayer" in text and "bert.encoder.layer.0 …" in text and "bert.encoder.layer.5" in text
        assert "bert.embeddings: word_embeddings, position_embeddings, token_type_embeddings" in text
        assert "classifier" in text and "bert.pooler" in text
        assert "Max positions  512" in text
        assert "86.6 MB" in text and "346.6 MB" in text  # fp32 weights, and weights + gradients + AdamW
        assert "✓ demo:minilm" in shown(app, "#model-status")


async def test_tiny_gpt2_from_a_local_folder_as_a_causal_lm(tiny_model_factory):
    folder = str(tiny_model_factory("gpt2"))
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.click("#task-causal-lm")
        await load_model_from(pilot, folder)
        config = app.session.config
        assert (config.model.name_or_path, config.task) == (folder, "causal-lm")
        assert config.eval.metric == "loss"  # the demo's "accuracy" is no causal-LM metric
        text = shown(app, "#model-description")
        assert "GPT2LMHeadModel" in text and "2 × GPT2Block" in text and "lm_head" in text
        assert "transformer.h.0 …" in text and "transformer.h.1" in text


@pytest.mark.parametrize("make_name, message", [
    (lambda tmp: str(tmp), "is not a model folder: no config.json"),
    (lambda tmp: "sft-tui-test/not-cached", "is not in the local Hugging Face cache"),
])
async def test_a_model_that_cannot_load_shows_the_error_in_place(tmp_path, make_name, message):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await load_model_from(pilot, make_name(tmp_path))
        assert app.model_state == "failed"
        assert type(app.screen).__name__ == "ModelScreen"  # no error dialog: the error is on the screen
        error = shown(app, "#model-error")
        assert message in error and "hint:" in error
        assert shown(app, "#model-description").strip() == ""
        # The app keeps working: the demo loads again from the list.
        sources = app.screen.query_one("#model-sources", OptionList)
        sources.focus()
        sources.highlighted = sources.get_option_index("demo:minilm")
        await pilot.press("enter")
        await settle(pilot)
        assert app.model_state == "ready" and shown(app, "#model-error") == ""


@pytest.fixture
def cached_tiny_gpt2(tiny_model_factory):
    """The tiny GPT-2 laid out in the offline hub cache as a download leaves it (blobs, a snapshot of
    links, refs/main); removed afterwards so that other tests and the snapshots see an empty cache."""
    yield from _cached(tiny_model_factory("gpt2"), "tiny-gpt2")


@pytest.fixture
def cached_tiny_llama(tiny_model_factory):
    """A tiny LlamaForCausalLM (tied embeddings) in the offline hub cache, as cached_tiny_gpt2."""
    yield from _cached(tiny_model_factory("llama"), "tiny-llama")


def _cached(folder: Path, name: str):
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--sft-tui-test--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    yield f"sft-tui-test/{name}"
    shutil.rmtree(repo)


async def test_cached_models_are_listed_and_one_loads_by_its_repo_id(cached_tiny_gpt2):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        sources = app.screen.query_one("#model-sources", OptionList)
        index = sources.get_option_index(f"hf:{cached_tiny_gpt2}")
        sources.focus()
        sources.highlighted = index
        await pilot.press("enter")
        await settle(pilot)
        assert app.session.config.model.name_or_path == cached_tiny_gpt2
        assert app.model_state == "ready"
        # GPT2LMHeadModel in config.json: the task follows it, rather than a classifier with a new head
        assert "GPT2LMHeadModel" in shown(app, "#model-description")


async def test_cached_models_show_bytes_with_a_unit_and_their_parameters(cached_tiny_llama, tiny_model_factory):
    """Sizes read "541.6M" before, like a parameter count: now bytes have a unit, and the parameters
    (from the safetensors headers, tied weights once) come beside them."""
    from transformers import AutoModelForCausalLM

    params = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama")).num_parameters()
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        sources = app.screen.query_one("#model-sources", OptionList)
        prompt = str(sources.get_option_at_index(sources.get_option_index(f"hf:{cached_tiny_llama}")).prompt)
        size = sum(f.stat().st_size for f in tiny_model_factory("llama").iterdir())
        assert prompt == f"{cached_tiny_llama}\n{format_bytes(size)} · {format_count(params)} params"
        assert " KB · " in prompt


async def test_picking_a_cached_causal_lm_while_on_classification_switches_the_task(cached_tiny_llama):
    app = create_app()  # the demo: classification
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.session.config.task == "classification"
        sources = app.screen.query_one("#model-sources", OptionList)
        sources.focus()
        sources.highlighted = sources.get_option_index(f"hf:{cached_tiny_llama}")
        await pilot.press("enter")
        await settle(pilot)
        assert app.session.config.task == "causal-lm"
        assert "LlamaForCausalLM" in shown(app, "#model-description")
        assert shown(app, "#model-head-note").strip() == "task set to causal-lm: LlamaForCausalLM is made for it"
        assert "task set to causal-lm" in visible_text(app)
        # Choosing classification on purpose loads it so, and says that the head is new.
        app.screen.query_one("#task-classification").value = True
        app.screen.query_one("#model-path", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.session.config.task == "classification"
        note = " ".join(shown(app, "#model-head-note").split())
        # (the data is loaded for this task after the model, without a visit to step 2: the head's size is known)
        assert "classification: a new head of 2 labels (score) is created: LlamaForCausalLM has no classification head" in note
        assert "LlamaForCausalLM is made for causal-lm: choose that task and Load to keep its head" in note
        assert "a new head of 2 labels (score)" in " ".join(visible_text(app).split())


async def test_a_model_that_switches_the_task_checks_the_data_for_it_before_step_2(tiny_model_factory):
    """A causal LM typed over the classification demo switched the task, and step 5 said "ready to
    start" for the sentiment rows until step 2 loaded them again; the run then failed."""
    app = create_app()  # the demo: classification on demo:sentiment
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await load_model_from(pilot, str(tiny_model_factory("llama")))
        assert app.session.config.task == "causal-lm"
        await pilot.press("escape", "5")
        await settle(pilot)
        problem = app.session.problems()["data"]
        assert "the detected format 'text-label' does not fit task 'causal-lm'" in problem
        assert "the bundled demo: demo:instructions" in problem  # the hint, as on step 2
        assert "ready to start" not in visible_text(app)


async def test_picking_the_tiny_lm_demo_switches_to_its_task_and_data():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        sources = app.screen.query_one("#model-sources", OptionList)
        sources.focus()
        sources.highlighted = sources.get_option_index("demo:tiny-lm")
        await pilot.press("enter")
        await settle(pilot)
        config = app.session.config
        assert (config.model.name_or_path, config.task, config.data.train) == (
            "demo:tiny-lm", "causal-lm", "demo:instructions")
        assert app.screen.query_one("#model-path", Input).value == "demo:tiny-lm"
        assert "LlamaForCausalLM" in shown(app, "#model-description")


async def test_typing_a_demo_name_is_picking_it():
    """Typed into the path box, demo:tiny-lm once loaded as a classifier (the task left as it was)."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        path = app.screen.query_one("#model-path", Input)
        path.value = "demo:tiny-lm"
        path.focus()
        await pilot.press("enter")
        await settle(pilot)
        config = app.session.config
        assert (config.model.name_or_path, config.task, config.data.train) == (
            "demo:tiny-lm", "causal-lm", "demo:instructions")
        assert "LlamaForCausalLM" in shown(app, "#model-description")


async def test_the_model_step_gives_its_path_box_the_focus_on_every_visit():
    """A Tab to Load, then 2 and 1: the focus stayed on Load, a model id typed went nowhere and Enter
    loaded the old model again."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab")
        assert app.focused.id == "model-load"
        await pilot.press("escape", "2")
        await settle(pilot)
        await pilot.press("1")
        await settle(pilot)
        assert app.focused.id == "model-path"


async def test_typing_a_path_after_a_tab_on_the_data_step_lands_in_the_train_box_and_never_quits(tmp_path):
    """The first Tab reached the preview, not the Train box, and the q of `qa.jsonl` typed there quit
    the app; a draft with edits that no file keeps asks before it quits, and so does a form that
    holds text not applied yet (ctrl+s does not save it either)."""
    from sft_tui.screens.dialogs import ConfirmDialog

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_data(pilot)
        await pilot.press("tab", *"qa.jsonl")
        assert app.is_running and app.screen.query_one("#data-train", Input).value.endswith("qa.jsonl")
        assert not app.session.unsaved  # typed, not applied: the draft is as it was opened
        await pilot.press("escape", "4")
        await settle(pilot)
        app.session.update({"optim.lr": 1e-4})  # as the form does
        await pilot.press("q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and "not saved" in dialog.question and "ctrl+s" in dialog.question
        assert "opens again" in " ".join(visible_text(app).split())  # the whole question: a Label cut it at one line
        await pilot.press("enter")  # Cancel has the focus: an Enter does not lose the draft
        await pilot.pause()
        assert app.is_running and app.session.config.optim.lr == 1e-4
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one(Input).value = str(tmp_path / "kept.yaml")
        await pilot.press("enter")  # saved: nothing left to lose
        await pilot.pause()
        assert (tmp_path / "kept.yaml").exists() and not app.session.unsaved
        await pilot.press("q")
        await pilot.pause()
        dialog = app.screen  # the draft is kept, but qa.jsonl is still only typed in step 2's form
        assert isinstance(dialog, ConfirmDialog) and "not saved" not in dialog.question
        assert "Typed but not applied: step 2's data form (Enter loads it)" in dialog.question
        await pilot.click("#yes")
        await pilot.pause()
    assert not app.is_running


async def test_quitting_asks_about_a_model_typed_but_not_loaded_and_not_once_it_is_loaded(tmp_path):
    """A model id typed in step 1 and not loaded is work the draft does not have: q asks. Typed
    back to the draft's model, the form holds nothing new and q quits at once."""
    from sft_tui.screens.dialogs import ConfirmDialog

    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        box = app.screen.query_one("#model-path", Input)
        loaded = box.value
        box.value = "my-org/my-model"
        await pilot.press("escape", "q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and "step 1's model form (Enter loads it)" in dialog.question
        assert "not saved" not in dialog.question
        await pilot.press("enter")  # Cancel
        await pilot.pause()
        assert app.is_running and box.value == "my-org/my-model"
        box.value = loaded
        await pilot.press("escape", "q")
        await pilot.pause()
    assert not app.is_running


# ---- the data screen ------------------------------------------------------------------------------


async def open_data(pilot) -> None:
    await pilot.press("escape", "2")  # out of the model's path box, to step 2
    await settle(pilot)


async def test_demo_sentiment_preview_shows_labels_and_statistics():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_data(pilot)
        data = app.session.data
        table = app.screen.query_one("#data-preview", DataTable)
        assert table.row_count == 20
        assert [str(c.label) for c in table.columns.values()] == ["#", "label", "tokens", "text"]
        first = table.get_row_at(0)
        assert first[1] == data.labels[data.train[0].labels] and first[2] == str(len(data.train[0].input_ids))
        assert "went to the new restaurant" in str(first[3])
        stats = shown(app, "#data-stats")
        s = data.stats
        assert "text-label (detected)" in stats and "text → text, label → label" in stats
        assert f"min {s.length_min} · mean {s.length_mean:.1f} · p50 {s.length_p50}" in stats
        assert "720 rows" in stats and "80 rows, held out of train (val_ratio 0.1)" in stats
        assert "0 of 720 rows at max_length 64" in stats
        for label, count in s.label_counts.items():
            assert label in stats and f"█ {count}" in stats
        # the columns found are shown in the empty (auto) column fields
        assert app.screen.query_one("#col-label", Input).placeholder == "label"


def write_prompt_completion(path: Path) -> Path:
    rows = [{"prompt": f"Question: what is {i} plus {i}?", "completion": f" The answer is {2 * i}."}
            for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


async def test_prompt_completion_rows_show_the_prompt_dim_and_the_answer_bold(tmp_path, tiny_model_factory):
    train = write_prompt_completion(tmp_path / "train.jsonl")
    config = write_config(tmp_path / "run.yaml", task="causal-lm", eval={"metric": "loss"},
                          model={"name_or_path": str(tiny_model_factory("gpt2"))},
                          data={"train": str(train), "max_length": 64})
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_data(pilot)
        table = app.screen.query_one("#data-preview", DataTable)
        assert table.row_count == 20
        row = table.get_row_at(0)[-1]
        parts = {str(span.style): row.plain[span.start:span.end] for span in row.spans}
        question, answer = parts[MASKED_STYLE], parts[TRAINED_STYLE]
        assert "what is" in question and "plus" in question and "answer" not in question
        assert "answer is" in answer and "what is" not in answer
        assert ANSWER_MARK in row.plain
        stats = shown(app, "#data-stats")
        assert "prompt-completion (detected)" in stats and "36 rows" in stats and "4 rows, held out" in stats
        assert "Trained" in stats


async def test_an_unknown_column_shows_the_error_naming_the_columns():
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_data(pilot)
        column = app.screen.query_one("#col-text", Input)
        column.value = "review_text"
        column.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.data_state == "failed" and type(app.screen).__name__ == "DataScreen"
        error = shown(app, "#data-error")
        assert "column 'review_text' not found; columns are: text, label" in error and "hint:" in error
        assert app.screen.query_one("#data-preview", DataTable).row_count == 0


async def test_a_missing_file_shows_the_error_in_place(tmp_path):
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_data(pilot)
        train = app.screen.query_one("#data-train", Input)
        train.value = str(tmp_path / "nowhere.jsonl")
        train.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert "does not exist" in shown(app, "#data-error")


BAD_NUMBERS = [
    ("max-length", "abc", "max_length: Input should be a valid integer"),
    ("max-length", "3", "max_length: Input should be greater than or equal to 8"),
    ("val-ratio", "1.5", "val_ratio: Input should be less than 1"),
]


async def test_a_load_whose_settings_change_meanwhile_is_cancelled_not_applied(monkeypatch):
    """The data's settings change while it tokenizes: that load is about settings the draft has
    left, so it is cancelled and its result never becomes session.data (nor stays "loading")."""
    import threading

    import sft_tui.loading

    release, done = threading.Event(), threading.Event()
    real = sft_tui.loading.load_data

    def slow(config, info):
        release.wait(30)
        try:
            return real(config, info)
        finally:
            done.set()

    monkeypatch.setattr(sft_tui.loading, "load_data", slow)
    app = create_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)  # the model screen loaded the demo model
        app.load_data()
        await pilot.pause()
        assert app.data_state == "loading"
        app.session.update({"data.max_length": 32})
        app.changed()
        assert app.data_state == "none"
        release.set()
        assert await asyncio.to_thread(done.wait, 60)
        await pilot.pause(0.2)
        assert app.data_state == "none" and app.session.data is None and "data" not in app.session.load_errors


async def test_bad_numbers_are_marked_next_to_their_field_and_keep_start_off():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_data(pilot)
        before = app.session.config.data
        for field, typed, message in BAD_NUMBERS:
            widget = app.screen.query_one(f"#data-{field}", Input)
            widget.focus()
            good = widget.value
            await pilot.press("ctrl+a", "ctrl+k", *typed)
            await pilot.pause()
            key = "data." + field.replace("-", "_")
            assert message in shown(app, "#data-field-errors")
            assert key in app.session.invalid and widget.has_class("-invalid")
            assert f"1 problem(s): {key} ·" in str(app.screen.query_one("DraftBar", Static).content)
            await pilot.press("enter")  # not applied while invalid; the text stays as typed
            await pilot.pause()
            assert app.session.config.data == before and widget.value == typed
            assert "fix the fields marked in red first" in shown(app, "#data-error")
            await pilot.press("ctrl+a", "ctrl+k", *good)
            await pilot.pause()
            assert key not in app.session.invalid and shown(app, "#data-field-errors") == ""
            assert not widget.has_class("-invalid")
        widget = app.screen.query_one("#data-max-length", Input)
        widget.focus()
        await pilot.press("ctrl+a", "ctrl+k", "3", "2", "enter")
        await settle(pilot)
        assert app.data_state == "ready" and app.session.config.data.max_length == 32
        assert "at max_length 32" in shown(app, "#data-stats")


def test_the_preview_styles_as_trained_exactly_the_tokens_the_loss_counts():
    """A plain-text row trains every label but its first position, which nothing predicts: the
    preview showed that token bold while its count (core.loss.trained_tokens) left it out."""
    from types import SimpleNamespace

    from core.loss import IGNORE_INDEX, trained_tokens
    from sft_tui.format.data import lm_row

    class OneCharTokenizer:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    for labels in ([0, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 2, 3], [0, IGNORE_INDEX, 2, IGNORE_INDEX]):
        row = lm_row(OneCharTokenizer(), SimpleNamespace(input_ids=[0, 1, 2, 3], labels=labels))
        bold = sum(span.end - span.start for span in row.spans if span.style == TRAINED_STYLE)
        assert bold == trained_tokens(labels), (labels, row.plain)
        assert row.plain.replace(ANSWER_MARK, "") == "abcd"


# ---- 80x24: the status line, the model screen's hints (issue 10, item 2) ---------------------------


async def test_at_80_columns_the_status_line_keeps_state_model_task_share_and_lr_and_the_hints_show():
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        top = visible_text(app).splitlines()[0]
        assert "ready · minilm · classification" in top and "100.0% trainable · lr 5e-05" in top
        assert "ctrl+r rescans the HF cache" in visible_text(app)  # hidden at 80 columns before


def test_the_status_line_gives_up_details_before_essentials():
    """A long model name, two problems and 80 columns (78 inside the padding): the batch size and the
    data name go, the problems become a count and names are shortened, but state, model, task,
    trainable share and lr stay."""
    from types import SimpleNamespace

    from core.config import example_config
    from sft_tui.messages import RunState
    from sft_tui.widgets.draft_bar import status_line

    config = example_config("classification")
    config.model.name_or_path = "/models/HuggingFaceTB/SmolLM2-135M-Instruct"
    config.data.train = "/data/a-rather-long-training-file-name.jsonl"
    session = SimpleNamespace(config=config, trainable_share=0.25,
                              problems=lambda: {"optim.batch_size": "not a number", "optim.lr": "not a number"})
    wide = status_line(session, RunState.IDLE, 200).plain
    assert wide == ("sft-tui 2 problem(s): optim.batch_size, optim.lr · SmolLM2-135M-Instruct · classification · "
                    "a-rather-long-training-file-name.jsonl · 25.0% trainable · lr 5e-05 · bs 16x1")
    narrow = status_line(session, RunState.IDLE, 78).plain
    assert len(narrow) <= 78
    assert narrow.startswith("2 problem(s): optim.…")
    assert status_line(session, RunState.IDLE, 60).plain.startswith("2 problem(s) · ")
    for essential in ("SmolLM2", "classif", "25.0% train", "lr 5e-05"):
        assert essential in narrow
    running = status_line(session, RunState.RUNNING, 78).plain
    assert running.startswith("RUNNING · ") and "lr 5e-05" in running and len(running) <= 78


def test_a_continued_runs_model_is_named_by_its_parent_run_not_final(tmp_path):
    """A continued run trains `<parent>/final`: the status line said `RUNNING · final`."""
    from types import SimpleNamespace

    from core.config import example_config
    from sft_tui.messages import RunState
    from sft_tui.widgets.draft_bar import status_line

    parent = tmp_path / "runs" / "20261205-020726-tiny-lm"
    (parent / "final").mkdir(parents=True)
    (parent / "config.yaml").write_text("task: causal-lm\n")
    config = example_config("causal-lm")
    config.model.name_or_path = str(parent / "final")
    session = SimpleNamespace(config=config, trainable_share=1.0, problems=dict)
    assert " · tiny-lm/final · " in status_line(session, RunState.RUNNING, 200).plain


def test_before_the_model_loads_the_status_line_says_what_the_preset_trains():
    """Until the model is loaded the trainable share cannot be counted; the line showed `freeze all`
    for the preset that trains everything."""
    from types import SimpleNamespace

    from core.config import example_config
    from core.config_sections import FreezeRule
    from sft_tui.messages import RunState
    from sft_tui.widgets.draft_bar import status_line

    config = example_config("causal-lm")
    session = SimpleNamespace(config=config, trainable_share=None, problems=dict)
    shown = {}
    for preset in ("all", "head-only", "top-n", "freeze-embeddings"):
        config.freeze.preset = preset
        shown[preset] = status_line(session, RunState.IDLE, 78).plain.split(" · ")[4]
    assert shown == {"all": "train all", "head-only": "train head", "top-n": "train top-2",
                     "freeze-embeddings": "embeddings frozen"}
    config.freeze.rules = [FreezeRule(match="lm_head", train=True)]
    assert " · embeddings frozen +1 rule(s) · " in status_line(session, RunState.IDLE, 200).plain
    assert " · emb frozen +1 · " in status_line(session, RunState.IDLE, 60).plain  # shortened to fit


async def test_at_80_columns_deep_model_and_data_paths_show_their_names(tiny_model_factory, tmp_path):
    """Textual's Input shows a value from its start, so a server's deep paths showed their first
    folders and no file name; the path boxes show the end."""
    from core.config import parse_config, save_config
    from helpers import tiny_lm_config, write_jsonl

    deep = tmp_path / "home" / "alice" / "projects" / "support-bot" / "experiments" / "2026-12"
    model = shutil.copytree(tiny_model_factory("llama"), deep / "models" / "smollm2-135m-instruct-v3")
    data = write_jsonl(deep / "train-with-system-prompts.jsonl", [{"prompt": "Say a:", "completion": " a"}] * 20)
    config = tmp_path / "deep.yaml"
    save_config(parse_config(tiny_lm_config(model, data, tmp_path / "runs")), config)
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)

        def box_line(selector: str) -> str:
            box = app.screen.query_one(selector, Input)
            return visible_text(app).splitlines()[box.region.y][box.region.x:box.region.right]

        assert "instruct-v3" in box_line("#model-path")  # then the suggester's "/", as the box has focus
        await pilot.press("escape", "2")
        await settle(pilot)
        assert box_line("#data-train").rstrip().endswith("prompts.jsonl")
        assert app.screen.query_one("#data-train", Input).value == str(data)  # shown from its end, whole


async def test_a_tied_lm_head_is_marked_and_counted_once_in_the_summary(tiny_model_factory):
    """Top modules listed lm_head and embed_tokens with the same count each: rows summed to more than
    the total. Now the tied head names its owner instead, and the overview says it is counted once."""
    app = create_app(task="causal-lm")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await load_model_from(pilot, str(tiny_model_factory("llama")))
        description = app.session.model.description
        text = shown(app, "#model-description")
        assert "Tied           lm_head = model.embed_tokens (counted once)" in text
        top = text[text.index("Top modules"):]
        lm_head = next(line for line in top.splitlines() if line.strip().startswith("lm_head"))
        assert "tied with model.embed_tokens" in lm_head
        first_level = [child for child in description.root.children if child.params and not child.tied_with]
        assert sum(child.params for child in first_level) == description.total_params


# ---- the data screen: every panel reachable at 80x24, chat rows open at the answer (item 2, item 10) ---


async def test_at_80x24_tab_brings_the_row_detail_and_the_label_bars_into_view():
    """At 80x24 the data screen showed five rows, and neither the row detail nor the label bars."""
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_data(pilot)
        app.screen.query_one("#data-preview").focus()
        await pilot.pause()
        assert "7   negative  27" in visible_text(app)  # seven rows of the table
        await pilot.press("tab")
        assert app.focused.id == "data-row-detail"
        assert "row 1 · label positive · 21 tokens" in visible_text(app)
        await pilot.press("tab")
        assert app.focused.id == "data-stats-scroll"
        text = visible_text(app)
        assert "Labels (training rows)" in text and "negative ████" in text and "positive ████" in text


async def test_at_80x24_other_rows_show_from_their_top(tmp_path):
    """The results scroll as one at 80 columns: loading another file kept the offset of the last,
    the header and the first rows above the view."""
    rows = [{"text": f"row {i} says good things", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    app = create_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_data(pilot)
        results = app.screen.query_one("#data-results")
        results.scroll_to(y=results.max_scroll_y, animate=False)
        await pilot.pause()
        assert results.scroll_y > 0
        app.screen.query_one("#data-train", Input).value = str(other)
        await pilot.press("ctrl+l")
        deadline = asyncio.get_running_loop().time() + 60
        while app.session.data is None or app.session.data.stats.rows_out["train"] != 36:
            assert asyncio.get_running_loop().time() < deadline, "the data did not load"
            await pilot.pause(0.1)
        await settle(pilot)
        assert results.scroll_y == 0 and "row " in visible_text(app)


SYSTEM_PROMPT = ("You are a careful assistant. Answer the question about the story in a few words, "
                 "and say when the story does not tell.")
SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML that adds a default system prompt, as SmolLM2-Instruct's template does."""


def system_prompt_chat(tmp_path, tiny_model_factory, conversations: list[list[dict]]):
    """(tokenizer, config file) of a tiny Llama whose chat template adds SYSTEM_PROMPT, trained on
    `conversations` (a chat JSONL file of them, max_length 256)."""
    from transformers import AutoTokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_factory("llama"), model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = SYSTEM_TEMPLATE
    tokenizer.save_pretrained(model)
    train = tmp_path / "chat.jsonl"
    train.write_text("".join(json.dumps({"messages": turns}) + "\n" for turns in conversations), encoding="utf-8")
    return tokenizer, write_config(tmp_path / "run.yaml", task="causal-lm", eval={"metric": "loss"},
                                   model={"name_or_path": str(model)}, data={"train": str(train), "max_length": 256})


async def test_a_chat_row_folds_the_system_prompt_and_opens_at_the_answer(tmp_path, tiny_model_factory, tiny_texts):
    """With a template that adds a system prompt, the 8-line row detail showed the system prompt and
    part of the question, never the answer."""
    story = "\n".join(tiny_texts[:14])
    tokenizer, config = system_prompt_chat(tmp_path, tiny_model_factory, [
        [{"role": "user", "content": f"{story}\nWho paints the red ball?"},
         {"role": "assistant", "content": "The old teacher does."}]] * 6)
    app = create_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_data(pilot)
        system_tokens = len(tokenizer(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n",
                                      add_special_tokens=False)["input_ids"])
        assert app.session.data.train[0].system_tokens == system_tokens
        folded = f"[system prompt: {system_tokens} tokens]"
        cell = app.screen.query_one("#data-preview", DataTable).get_row_at(0)[-1]
        assert cell.plain.startswith(f"{folded} <|im_start|>user⏎")
        detail = app.screen.query_one("#data-row-detail")
        assert detail.max_scroll_y > 0  # longer than its box: it scrolls
        assert detail.scroll_y > 0  # and opens scrolled down to the answer
        text = visible_text(app)
        assert f"{ANSWER_MARK}The old teacher does." in text
        assert "Who paints the red ball?" in text  # the line before the answer, for context
        await pilot.press("tab")  # the first Tab reaches the form's first box, not the preview
        assert app.focused.id == "data-train"
        detail.focus()
        await pilot.press("home")
        assert folded in visible_text(app) and SYSTEM_PROMPT[:30] not in visible_text(app)


async def test_at_80x24_a_chat_rows_answer_is_on_screen(tmp_path, tiny_model_factory):
    """At 80x24 the nine-row table pushed the row detail's last five rows, the answer among them,
    below the screen: a newcomer saw the system prompt and the question, and no answer."""
    _, config = system_prompt_chat(tmp_path, tiny_model_factory, [
        [{"role": "user", "content": f"What does itertools function {i} do, and when would I use it?"},
         {"role": "assistant", "content": "It yields items lazily."}] for i in range(6)])
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_data(pilot)
        text = visible_text(app)
        assert f"{ANSWER_MARK}It yields items lazily." in text and "<|im_start|>user" in text
        assert text.count("[system prompt: ") >= 3  # table rows above the detail, besides its own


def test_while_a_run_is_shown_the_status_line_describes_that_run_not_the_draft():
    """A live run opened from step 6 was described by the draft's model, task and lr; once it ended,
    FINISHED stood beside the draft's model until an edit made the draft the subject again (IDLE)."""
    from types import SimpleNamespace

    from core.config import example_config
    from sft_tui.messages import RunState
    from sft_tui.widgets.draft_bar import status_line

    draft, run = example_config("classification"), example_config("causal-lm")
    run.model.name_or_path, run.optim.lr = "/models/deep-llama", 5e-4
    session = SimpleNamespace(config=draft, trainable_share=1.0, problems=dict)
    line = status_line(session, RunState.RUNNING, 200, run).plain
    assert line.startswith("sft-tui RUNNING · deep-llama · causal-lm · instructions · ") and "lr 0.0005" in line
    for state in (RunState.FINISHED, RunState.FAILED):
        assert status_line(session, state, 200, run).plain.startswith(f"sft-tui {state.value.upper()} · deep-llama · ")
    assert status_line(session, RunState.IDLE, 200, run).plain.startswith("sft-tui ready · minilm")  # the draft again
