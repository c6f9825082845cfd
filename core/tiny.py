"""Tiny models with tokenizers trained on the spot: the causal-LM demo model and the test fixtures.

Nothing can be downloaded at run time, so a "pretrained" causal LM for the demo and for tests is
built here from a config: a byte-level BPE tokenizer trained on the given texts (with a ChatML chat
template), and a randomly initialised model of the requested architecture, saved with
save_pretrained so that it loads through the same Auto-class path as any real model. The demo
model (`demo:tiny-lm`) is built once into the user's cache, its tokenizer trained on the demo
instruction data.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.atomic import atomic_folder
from core.errors import UserError
from core.logs import quiet_libraries

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML: each turn is a fixed prefix, the content and `<|im_end|>`; prefix-stable, which the
assistant-only loss mask in core.data relies on."""

SPECIAL = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama", "qwen2", "mistral")
ARCHITECTURES = DECODERS + ENCODERS
TINY_LM_FOLDER = "tiny-lm-v1"
"""Cache folder of the built demo:tiny-lm; bump the version when its recipe or data change."""


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, encoder: bool = False):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a transformers fast tokenizer.

    Encoders get BERT-style [CLS] ... [SEP] framing (through bos/eos), decoders a chat template
    whose end-of-turn token is the eos token, so generation stops at the end of an answer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL.values()) + CHAT_TOKENS
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if encoder:
        bos, eos = SPECIAL["bos"], SPECIAL["eos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} $B {eos}",
            special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        bos_token=SPECIAL["bos"],
        eos_token=CHAT_TOKENS[1] if not encoder else SPECIAL["eos"],
        additional_special_tokens=CHAT_TOKENS,
    )
    if not encoder:
        wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def tiny_config(arch: str, tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, positions: int = 256):
    """A transformers config of `arch` scaled down to a few hundred thousand parameters."""
    from transformers import AutoConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **ids)
    if arch == "distilbert":
        return AutoConfig.for_model(
            "distilbert", dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=hidden * 2,
            max_position_embeddings=positions, **ids,
        )
    common = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, max_position_embeddings=positions, **ids,
    )
    if arch in ("llama", "qwen2", "mistral"):
        common.update(num_key_value_heads=heads // 2 or 1, tie_word_embeddings=True)
    if arch == "roberta":
        common["max_position_embeddings"] = positions + 2  # RoBERTa offsets positions by the pad id
    return AutoConfig.for_model(arch, **common)


def build_tiny_model(
    arch: str,
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    positions: int = 256,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny `arch` model plus its trained tokenizer into `out_dir`.

    Decoders are saved with a causal-LM head, encoders as a bare base model, so that loading them
    for classification goes through the same "new head" path as a real pretrained encoder.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, encoder=arch in ENCODERS)
    config = tiny_config(arch, tokenizer, hidden=hidden, layers=layers, positions=positions)
    tokenizer.model_max_length = positions
    torch.manual_seed(seed)
    auto = AutoModel if arch in ENCODERS else AutoModelForCausalLM
    model = auto.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def demo_tiny_lm() -> Path:
    """The folder of demo:tiny-lm, built on first use. It is written through atomic_folder, so a
    crash never leaves half a model where the next start would take it for a whole one, and under a
    lock on the cache folder, so two processes starting at once build it once between them."""
    root = _cache_root()
    final = root / TINY_LM_FOLDER
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if not (final / "config.json").is_file():  # not built by the process that held the lock
            quiet_libraries()
            with atomic_folder(final) as building:
                build_tiny_model("llama", building, _demo_texts(), hidden=128, layers=4, vocab_size=1024)
    return final


def _cache_root() -> Path:
    return Path(os.environ.get("SFT_TUI_CACHE") or Path.home() / ".cache" / "sft-tui")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself: no lock file is left behind, and the kernel drops
    the lock when the process dies, however it dies."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _demo_texts() -> list[str]:
    """The demo instruction data: the corpus the demo tiny model's tokenizer learns."""
    from core.data.sources import DEMO_DATASETS

    source = DEMO_DATASETS["demo:instructions"]
    if not source.is_file():
        raise UserError("the demo instruction data is missing from this installation", hint="reinstall sft-tui")
    return strings_in_jsonl(source.read_text(encoding="utf-8"))


def strings_in_jsonl(text: str) -> list[str]:
    """Every string value in JSON lines of any shape ({prompt, completion}, {messages: [...]})."""
    texts: list[str] = []

    def gather(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                gather(item)
        elif isinstance(value, list):
            for item in value:
                gather(item)

    for line in text.splitlines():
        if line.strip():
            gather(json.loads(line))
    return texts
