"""core.models and core.describe: loading for a task, errors that name the model, and the structural
description."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from core.config import ModelConfig
from core.errors import UserError
from core.describe import describe_model
from core.models import build_skeleton, load_model, load_tokenizer, model_max_positions, resolve_model_path
from core.tiny import strings_in_jsonl

LABELS = ["negative", "positive"]

# arch -> (blocks, embeddings, top) of the tiny 2-layer models; the head depends on the task.
STRUCTURE = {
    "gpt2": (["transformer.h.0", "transformer.h.1"], ["transformer.wte", "transformer.wpe"], ["transformer.ln_f"]),
    "llama": (["model.layers.0", "model.layers.1"], ["model.embed_tokens"], ["model.norm"]),
    "qwen2": (["model.layers.0", "model.layers.1"], ["model.embed_tokens"], ["model.norm"]),
    "mistral": (["model.layers.0", "model.layers.1"], ["model.embed_tokens"], ["model.norm"]),
    "bert": (
        ["bert.encoder.layer.0", "bert.encoder.layer.1"],
        ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
         "bert.embeddings.token_type_embeddings"],
        ["bert.pooler"],
    ),
    "roberta": (
        ["roberta.encoder.layer.0", "roberta.encoder.layer.1"],
        ["roberta.embeddings.word_embeddings", "roberta.embeddings.token_type_embeddings",
         "roberta.embeddings.position_embeddings"],
        [],  # RoBERTa's classifier pools itself: the model has no pooler
    ),
    "distilbert": (
        ["distilbert.transformer.layer.0", "distilbert.transformer.layer.1"],
        ["distilbert.embeddings.word_embeddings", "distilbert.embeddings.position_embeddings"],
        [],
    ),
}
CLASSIFICATION_HEAD = {
    "gpt2": ["score"], "llama": ["score"], "qwen2": ["score"], "mistral": ["score"],
    "bert": ["classifier"], "roberta": ["classifier"], "distilbert": ["pre_classifier", "classifier"],
}
CASES = [(arch, "classification") for arch in STRUCTURE] + [
    (arch, "causal-lm") for arch in ("gpt2", "llama", "qwen2", "mistral")
]


def _load(folder, task: str, **kwargs):
    labels = LABELS if task == "classification" else None
    return load_model(ModelConfig(name_or_path=str(folder)), task, labels, **kwargs)


@pytest.fixture(scope="module")
def minilm():
    return load_model(ModelConfig(name_or_path="demo:minilm"), "classification", LABELS)


@pytest.mark.parametrize(("arch", "task"), CASES)
def test_describe_finds_blocks_embeddings_head_and_top(tiny_model_dir, arch, task):
    model = _load(tiny_model_dir(arch), task)
    desc = describe_model(model)
    blocks, embeddings, top = STRUCTURE[arch]
    assert desc.blocks == blocks
    assert desc.embeddings == embeddings
    assert desc.top == top
    assert desc.head == (CLASSIFICATION_HEAD[arch] if task == "classification" else ["lm_head"])
    assert desc.model_type == arch
    assert desc.architecture == type(model).__name__
    assert desc.dtype == "float32"
    json.dumps(asdict(desc))  # JSON-friendly all the way down


@pytest.mark.parametrize(("arch", "task"), [("gpt2", "causal-lm"), ("bert", "classification"), ("llama", "causal-lm")])
def test_param_counts_are_unique_params_in_every_node(tiny_model_dir, arch, task):
    model = _load(tiny_model_dir(arch), task)
    for p in model.get_submodule(describe_model(model).blocks[0]).parameters():
        p.requires_grad_(False)
    desc = describe_model(model)
    assert desc.total_params == sum(p.numel() for p in model.parameters())  # parameters() skips tied copies
    assert desc.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert desc.trainable_params < desc.total_params

    def check(node):
        module = model.get_submodule(node.path)
        assert node.kind == type(module).__name__
        assert node.params == sum(p.numel() for p in module.parameters())
        assert node.trainable == sum(p.numel() for p in module.parameters() if p.requires_grad)
        for child in node.children:
            assert child.path == (f"{node.path}.{child.name}" if node.path else child.name)
            check(child)

    check(desc.root)


def test_tied_lm_head_is_counted_once(tiny_model_dir):
    model = _load(tiny_model_dir("gpt2"), "causal-lm")
    assert model.lm_head.weight is model.transformer.wte.weight
    desc = describe_model(model)
    by_name = {child.name: child for child in desc.root.children}
    assert by_name["lm_head"].params == model.lm_head.weight.numel()
    assert desc.root.params == by_name["transformer"].params  # lm_head adds nothing new


def test_minilm_demo_gets_a_new_labelled_head(minilm):
    assert type(minilm).__name__ == "BertForSequenceClassification"
    assert minilm.config.id2label == {0: "negative", 1: "positive"}
    assert minilm.config.label2id == {"negative": 0, "positive": 1}
    assert minilm.classifier.out_features == 2
    desc = describe_model(minilm)
    assert desc.blocks == [f"bert.encoder.layer.{i}" for i in range(6)]
    assert desc.head == ["classifier"]
    assert desc.top == ["bert.pooler"]
    assert desc.max_positions == 512
    assert 22_000_000 < desc.total_params < 23_000_000


def test_existing_head_of_another_size_is_replaced(tiny_model_dir, tmp_path):
    three = load_model(ModelConfig(name_or_path=str(tiny_model_dir("bert"))), "classification", ["a", "b", "c"])
    three.save_pretrained(tmp_path)
    shutil.copy(tiny_model_dir("bert") / "tokenizer.json", tmp_path)
    two = _load(tmp_path, "classification")
    assert two.classifier.out_features == 2
    assert two.config.id2label == {0: "negative", 1: "positive"}


def test_gpt_classifier_gets_the_pad_id_it_needs(tiny_model_dir, tmp_path):
    import torch

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir("gpt2"), folder)
    config = json.loads((folder / "config.json").read_text())
    del config["pad_token_id"]
    (folder / "config.json").write_text(json.dumps(config))
    model = _load(folder, "classification", pad_token_id=0)
    assert model.config.pad_token_id == 0
    out = model(input_ids=torch.tensor([[7, 8, 9], [7, 8, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert out.logits.shape == (2, 2)


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir("llama"), folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_load_model_prints_nothing_and_logs_the_new_head(tiny_model_dir, capfd, caplog):
    from transformers.utils import logging as hf_logging

    caplog.set_level("INFO", logger="core.models")
    folder = tiny_model_dir("bert")
    hf_logging.enable_default_handler()  # as a fresh process has them
    hf_logging.enable_progress_bar()
    hf_logging.disable_propagation()
    capfd.readouterr()
    load_tokenizer(ModelConfig(name_or_path=str(folder)))
    _load(folder, "classification")
    assert capfd.readouterr() == ("", "")
    assert "LOAD REPORT" not in caplog.text  # the wide table is replaced by one line:
    assert "new task head initialised: classifier.bias, classifier.weight" in caplog.text


@pytest.mark.parametrize("arch,task", [("llama", "causal-lm"), ("bert", "classification")])
def test_models_load_without_hub_kernels(tiny_model_dir, arch, task):
    """transformers 5 turns hub kernels on by default; on a GPU they are fetched at the first forward,
    and an offline server's run failed there."""
    assert _load(tiny_model_dir(arch), task).use_kernels is False


def test_max_positions_from_config_alone(tiny_model_dir):
    assert model_max_positions(ModelConfig(name_or_path=str(tiny_model_dir("gpt2")))) == 256
    assert model_max_positions(ModelConfig(name_or_path="demo:minilm")) == 512


def test_demo_tiny_lm_is_built_once_into_the_cache(monkeypatch, tmp_path, tiny_texts):
    import core.tiny

    monkeypatch.setenv("SFT_TUI_CACHE", str(tmp_path))
    monkeypatch.setattr(core.tiny, "_demo_texts", lambda: tiny_texts)
    folder = resolve_model_path("demo:tiny-lm")
    assert folder == str(tmp_path / "tiny-lm-v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-lm-v1"]  # no half-built leftovers
    monkeypatch.setattr(core.tiny, "build_tiny_model", lambda *a, **k: pytest.fail("rebuilt"))
    assert resolve_model_path("demo:tiny-lm") == folder
    model = load_model(ModelConfig(name_or_path="demo:tiny-lm"), "causal-lm")
    desc = describe_model(model)
    assert desc.model_type == "llama" and len(desc.blocks) == 4


def test_demo_texts_gather_every_string_of_every_row_shape():
    rows = [
        {"prompt": "Say hi.", "completion": "Hi!"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    assert strings_in_jsonl(text) == ["Say hi.", "Hi!", "user", "2+2?", "assistant", "4"]


# ---- errors name the model and say what to do ---------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist") as err:
        load_model(ModelConfig(name_or_path=str(missing)), "causal-lm")
    assert str(missing) in err.value.message


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="not a model folder: no config.json") as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert str(tmp_path) in err.value.message


def test_folder_without_tokenizer_files_is_not_an_empty_tokenizer(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir("bert") / "config.json", tmp_path)
    with pytest.raises(UserError, match="has no tokenizer files") as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert str(tmp_path) in err.value.message


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_folder_without_tokenizer_files_gets_a_whole_message(arch, tiny_model_dir, tmp_path):
    """A llama folder without its tokenizer got "Couldn't instantiate the backend tokenizer from one
    of:", the first line of transformers' message, cut off mid-sentence."""
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir(arch) / name, tmp_path)
    with pytest.raises(UserError) as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert err.value.message == (
        f"model.name_or_path: model folder {tmp_path} has no tokenizer files (tokenizer.json, tokenizer_config.json)"
    )
    assert f"tokenizer.save_pretrained('{tmp_path}')" in err.value.hint


def test_relative_path_that_does_not_exist_is_not_a_hub_id(tmp_path, monkeypatch):
    """`models/x` next to a `models/` folder was looked up on the Hub as owner "models"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path="models/x"), "causal-lm")
    assert err.value.message == "model.name_or_path: model folder models/x does not exist"
    assert "hf download models/x" in err.value.hint
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):  # no such folder: a hub id
        load_tokenizer(ModelConfig(name_or_path="elsewhere/x"))


def test_cached_hub_model_is_not_hidden_by_a_folder_of_its_owners_name(tiny_model_dir, tmp_path, monkeypatch):
    """The path rule gives way to the cache: `owner/name` loads offline even beside an `owner/` folder."""
    from huggingface_hub import constants

    repo = "sft-tui-test/cached-gpt2"
    cached = Path(constants.HF_HUB_CACHE) / "models--sft-tui-test--cached-gpt2"
    shutil.copytree(tiny_model_dir("gpt2"), cached / "snapshots" / ("0" * 40))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("0" * 40)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sft-tui-test").mkdir()
    try:
        assert resolve_model_path(repo) == repo
        assert load_model(ModelConfig(name_or_path=repo), "causal-lm").config.model_type == "gpt2"
    finally:  # the HF cache is the whole session's: the app's model list in later tests must not show it
        shutil.rmtree(cached)


def test_truncated_weights_file_is_named(tiny_model_dir, tmp_path):
    """A model.safetensors cut to half its size (an interrupted copy) gave a SafetensorError traceback."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("gpt2"), folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(folder)), "causal-lm")
    assert err.value.message.startswith(f"model.name_or_path: weights file {weights} is incomplete or corrupt")
    assert "re-download the model, or re-save it" in err.value.hint


def test_file_instead_of_folder(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="is a file, not a model folder"):
        resolve_model_path(str(weights))


def test_architecture_without_the_task(tiny_model_dir):
    folder = str(tiny_model_dir("distilbert"))
    with pytest.raises(UserError, match="has no causal-lm architecture") as err:
        load_model(ModelConfig(name_or_path=folder), "causal-lm")
    assert folder in err.value.message and "distilbert" in err.value.message


def test_unknown_task(tiny_model_dir):
    folder = str(tiny_model_dir("gpt2"))
    with pytest.raises(UserError, match="unknown task 'regression'") as err:
        load_model(ModelConfig(name_or_path=folder), "regression")
    assert folder in err.value.message


def test_classification_needs_two_labels(tiny_model_dir):
    with pytest.raises(UserError, match="at least 2 labels"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir("bert"))), "classification", ["only"])


def test_remote_code_needs_consent(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "homemade",
        "auto_map": {"AutoConfig": "configuration_homemade.HomemadeConfig",
                     "AutoModelForCausalLM": "modeling_homemade.HomemadeModel"},
    }))
    with pytest.raises(UserError, match="needs to run Python code") as err:
        load_model(ModelConfig(name_or_path=str(tmp_path)), "causal-lm")
    assert "model.trust_remote_code: true" in err.value.hint


def test_hub_id_missing_from_the_offline_cache():
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as err:
        load_model(ModelConfig(name_or_path="someone/some-model"), "causal-lm")
    assert "hf download someone/some-model" in err.value.hint


@pytest.mark.parametrize("name", ["demo:nothing", "not a hub id!"])
def test_names_that_are_neither_demo_folder_nor_hub_id(name):
    with pytest.raises(UserError):
        resolve_model_path(name)


@pytest.mark.parametrize(("arch", "task"), [("gpt2", "causal-lm"), ("bert", "classification")])
def test_skeleton_has_the_loaded_models_structure_without_weights(arch, task, tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir(arch)))
    labels = ["a", "b", "c"] if task == "classification" else None
    skeleton = build_skeleton(cfg, task, labels, pad_token_id=0)
    loaded = load_model(cfg, task, labels, pad_token_id=0)
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    a, b = describe_model(skeleton), describe_model(loaded)
    assert (a.total_params, a.blocks, a.embeddings, a.head, a.top) == (b.total_params, b.blocks, b.embeddings, b.head, b.top)


def test_an_encoder_is_refused_as_a_causal_lm(tiny_model_factory):
    """A bare BERT loaded with the task left at causal-lm built BertLMHeadModel, whose attention reads
    the whole row: it trained on the tokens it predicted, without a word."""
    from core.config_sections import ModelConfig

    bert = ModelConfig(name_or_path=str(tiny_model_factory("bert")))
    for load in (load_model, build_skeleton):
        with pytest.raises(UserError, match=r"is an encoder \(bert\): it reads a row both ways") as refused:
            load(bert, "causal-lm")
        assert "set task: classification" in refused.value.hint
    assert build_skeleton(ModelConfig(name_or_path=str(tiny_model_factory("llama"))), "causal-lm") is not None
    assert build_skeleton(bert, "classification") is not None
