"""Tokenization with loss masks for causal-LM prompt-completion and plain-text rows, and what
every encoder (here, in `chat` and in `labels`) shares: the per-split result
(`Encoded`), the settings (`Context`), and the character cut that keeps a huge field from being
tokenized whole.

Each encoder turns one split's rows into `Example`s and counts the rows it truncated, cut or
dropped (with the reason), so that `prepare_data` can say what happened to the data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import ColumnMap
from core.data.examples import Example
from core.errors import UserError
from core.loss import IGNORE_INDEX, trained_tokens

if TYPE_CHECKING:
    import datasets

CHARS_PER_TOKEN = 32
"""Characters kept per token of data.max_length when a text field is cut before tokenizing.

Tokenizing a 50 MB field costs minutes and gigabytes, all for tokens that truncation then throws
away. English averages about 4 characters a token, code and other languages fewer; 32 leaves room
for runs of long tokens (indentation, "-----" rules, whitespace a BERT tokenizer drops), so for any
normal text the cut never reaches what truncation to max_length tokens would keep.
"""


@dataclass
class Encoded:
    """Examples of one split plus what happened to the rows that did not make it."""

    examples: list[Example] = field(default_factory=list)
    truncated: int = 0
    cut: int = 0
    """Rows with a field cut to `Context.max_chars` before tokenizing."""
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass
class Context:
    """What an encoder needs besides the rows: the tokenizer, the limits and the columns."""

    tokenizer: Any
    max_length: int
    columns: ColumnMap
    labels: list[str] | None
    chat_template: str | None
    held_out: bool
    """Validation was carved off the training rows (changes the hint of an unknown-label error)."""
    sources: dict[str, str]
    """Where each split's rows come from ("train", "validation"), for messages."""

    @property
    def max_chars(self) -> int:
        return CHARS_PER_TOKEN * self.max_length

    def cut(self, out: Encoded, *texts: str) -> list[str]:
        """A row's text fields, each cut to max_chars; `out` counts the row if any was cut."""
        if all(len(text) <= self.max_chars for text in texts):
            return list(texts)
        out.cut += 1
        return [text[: self.max_chars] for text in texts]

    def cut_turns(self, out: Encoded, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The turns within max_chars characters of content, the last one cut to fit; `out` counts
        a cut row. Turns past that budget start beyond data.max_length tokens, so dropping them
        also bounds the work of rendering a conversation of thousands of turns."""
        budget = self.max_chars
        for i, turn in enumerate(turns):
            content = turn["content"]
            if not isinstance(content, str):
                continue
            if len(content) > budget:
                out.cut += 1
                return turns[:i] + ([{**turn, "content": content[:budget]}] if budget else [])
            budget -= len(content)
        return turns

def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_blank(value: Any) -> bool:
    """Missing, or a string of whitespace only: a target made of it trains on the end token alone."""
    return is_missing(value) or (isinstance(value, str) and not value.strip())

def token_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Batched token ids; verbose=False because rows longer than the model are truncated later."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]


def lm_example(ids: list[int], labels: list[int], ctx: Context, out: Encoded, reason: str) -> Example | None:
    """Truncate to max_length; None (counted under `reason`) when no token is left to train on."""
    if len(ids) > ctx.max_length:
        ids, labels = ids[: ctx.max_length], labels[: ctx.max_length]
        out.truncated += 1
    if not trained_tokens(labels):
        out.dropped[reason] += 1
        return None
    return Example(ids, labels)


def encode_prompt_completion(ds: datasets.Dataset, ctx: Context, split: str) -> Encoded:
    """Prompt (with the tokenizer's special-token framing, e.g. BOS) + completion + EOS; loss on
    the completion and EOS only.

    Plain concatenation is used even when the tokenizer has a chat template: the engine generates
    samples from exactly these prompt ids, so training and sampling see the same framing, and many
    base models ship a template they were never trained with. Data meant for the template belongs
    in the chat format.
    """
    out = Encoded()
    rows = []
    for prompt, completion in zip(ds[ctx.columns.prompt], ds[ctx.columns.completion]):
        if is_blank(completion):
            out.dropped["the completion is empty"] += 1
        elif is_missing(prompt):
            out.dropped["the prompt is empty"] += 1
        else:
            prompt, completion = ctx.cut(out, str(prompt), str(completion))
            rows.append((prompt, completion))
    if split == "train" and out.dropped["the completion is empty"] == len(ds):
        raise UserError(
            f"data.columns.completion: every completion in column {ctx.columns.completion!r} of {ctx.sources[split]} "
            "is empty, so the model would learn nothing but to end its answer at once",
            "point data.columns.completion at the column that holds the answers, or fill them in",
        )
    prompts = token_ids(ctx.tokenizer, [p for p, _ in rows], special=True)
    answers = token_ids(ctx.tokenizer, [c for _, c in rows], special=False)
    eos = [] if ctx.tokenizer.eos_token_id is None else [ctx.tokenizer.eos_token_id]
    reason = f"the prompt fills data.max_length ({ctx.max_length} tokens)"
    for (prompt, answer), p_ids, c_ids in zip(rows, prompts, answers):
        target = c_ids + eos
        example = lm_example(p_ids + target, [IGNORE_INDEX] * len(p_ids) + target, ctx, out, reason)
        if example is not None:
            if split == "validation":
                example.prompt_ids, example.prompt_text, example.reference = p_ids, prompt, answer
            out.examples.append(example)
    return out


def encode_text(ds: datasets.Dataset, ctx: Context, split: str) -> Encoded:
    """Every token trained; an EOS closes each text so packed documents stay apart. Validation rows
    use their first half as the sample prompt and the second half as the reference."""
    out = Encoded()
    texts = []
    for text in ds[ctx.columns.text]:
        if is_blank(text):
            out.dropped["the text is empty"] += 1
        else:
            texts.append(ctx.cut(out, str(text))[0])
    eos = ctx.tokenizer.eos_token_id
    for ids in token_ids(ctx.tokenizer, texts, special=True):
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        example = lm_example(ids, list(ids), ctx, out, "the text has fewer than two tokens")
        if example is not None:
            if split == "validation":
                half = len(example.input_ids) // 2
                example.prompt_ids = example.input_ids[:half]
                example.prompt_text = ctx.tokenizer.decode(example.prompt_ids, skip_special_tokens=True)
                example.reference = ctx.tokenizer.decode(example.input_ids[half:], skip_special_tokens=True)
            out.examples.append(example)
    return out
