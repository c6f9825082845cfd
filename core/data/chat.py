"""Chat data: conversations rendered with the chat template, loss on the assistant turns only.

The trained tokens are found by rendering the conversation up to each assistant turn and mapping
those character spans onto tokens. That logic is the largest of the encoders and the only one
that runs the tokenizer's template, so it has a module of its own; it shares `Encoded`,
`Context` and the truncation of `encoding`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from core.data.encoding import Context, Encoded, is_blank, lm_example, token_ids
from core.data.examples import Example
from core.errors import UserError
from core.loss import IGNORE_INDEX

if TYPE_CHECKING:
    import datasets

# ShareGPT-style turns ({"from": "human", "value": ...}) are mapped onto role/content; its role
# names are mapped under either key.
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _turns(value: Any, row: int) -> list[dict[str, Any]]:
    """A row's messages as [{role, content}], accepting ShareGPT's {from, value} spelling and
    content given as a list of text parts (OpenAI's [{"type": "text", "text": ...}]), joined."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise UserError(
            f"data.columns.messages: row {row}: expected a non-empty list of {{role, content}} turns, "
            f"got {str(value)[:80]!r}",
            "point data.columns.messages at a column of chat turns",
        )
    turns = []
    for message in value:
        role = message.get("role") or message.get("from")
        role = _SHAREGPT_ROLES.get(role, role)
        # Arrow gives every turn every key seen in the column, the absent ones as None.
        content = message.get("content") if message.get("content") is not None else message.get("value")
        if role is None or content is None:
            raise UserError(f"data.columns.messages: row {row}: a turn lacks its role or content: "
                            f"{str(message)[:80]!r}", "give every turn a role and a content, or drop the row")
        turns.append({"role": role, "content": _text_of(content, row)})
    return turns


def _text_of(content: Any, row: int) -> Any:
    """A turn's content; a list of parts becomes the text of its text parts, one after another."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type", "text") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise UserError(f"data.columns.messages: row {row}: a turn holds a {kind!r} part: {str(part)[:80]!r}",
                            "sft-tui trains on text: keep the text parts ({\"type\": \"text\", \"text\": ...}) only")
        texts.append(part["text"])
    return "".join(texts)


def encode_chat(ds: datasets.Dataset, ctx: Context, split: str) -> Encoded:
    """Render each conversation with the chat template and train on the assistant turns only."""
    tok = ctx.tokenizer
    if not getattr(tok, "chat_template", None) and not ctx.chat_template:
        raise UserError(
            "the chat format needs a chat template, and the tokenizer has none",
            "set data.chat_template to a Jinja chat template (e.g. ChatML), or use prompt-completion data",
        )
    template = None if getattr(tok, "chat_template", None) else ctx.chat_template
    out = Encoded()
    system_tokens: dict[tuple, int] = {}  # by the row's system turns: the same prompt, the same count
    silent = "the conversation has no assistant turn with content"
    reason = f"no assistant token within data.max_length ({ctx.max_length} tokens)"
    for row, value in enumerate(ds[ctx.columns.messages], start=1):
        turns = _turns(value, row)
        if not any(turn["role"] == "assistant" and not is_blank(turn["content"]) for turn in turns):
            out.dropped[silent] += 1
            continue
        cut = out.cut
        turns = ctx.cut_turns(out, turns)
        text, spans = _assistant_spans(tok, turns, template)
        if not spans:
            out.dropped[reason if out.cut > cut else "the conversation has no assistant turn after a prompt"] += 1
            continue
        ids, trained = _tokenize_spans(tok, text, [(start, end) for _, start, end in spans])
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]
        example = lm_example(ids, labels, ctx, out, reason)
        if example is None:
            continue
        system = tuple(str(turn["content"]) for turn in _leading_system(turns))
        if system not in system_tokens:
            chars = _system_chars(tok, turns, template)
            system_tokens[system] = len(token_ids(tok, [text[:chars]], special=False)[0]) if chars else 0
        example.system_tokens = min(system_tokens[system], trained.index(True) if True in trained else 0)
        if split == "validation":
            _set_chat_sample(example, tok, turns, text, spans, ctx.max_length)
        out.examples.append(example)
    if split == "train" and out.dropped[silent] == len(ds):
        raise UserError(
            f"data.columns.messages: no conversation in column {ctx.columns.messages!r} of {ctx.sources[split]} "
            "has an assistant turn with content, and the loss is taken on assistant turns only",
            "point data.columns.messages at conversations with assistant replies, or fill the replies in",
        )
    return out


def _set_chat_sample(example: Example, tokenizer: Any, turns: list[dict[str, Any]], text: str,
                     spans: list[tuple[int, int, int]], max_length: int) -> None:
    """Sample the last assistant turn whose prompt fits in max_length (else the first one, its
    prompt cut to the last max_length - 1 tokens). A turn's prompt is the rendered text up to where
    the turn starts, which prefix stability makes equal to rendering the turns before it with the
    generation prompt."""
    for turn, start, _ in reversed(spans):
        prompt_ids = token_ids(tokenizer, [text[:start]], special=False)[0]
        if len(prompt_ids) < max_length:
            break
    example.prompt_ids = prompt_ids[-(max_length - 1):]
    example.prompt_text = str(turns[turn - 1]["content"])
    example.reference = str(turns[turn]["content"])


def _render(tokenizer: Any, turns: list[dict[str, Any]], template: str | None, generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as err:
        raise UserError(
            f"the chat template failed on a conversation ({err}): {str(turns)[:120]!r}",
            "fix the conversation (e.g. roles in the order the template expects) or data.chat_template",
        ) from None


def _leading_system(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(itertools.takewhile(lambda turn: turn["role"] == "system", turns))


_PLACEHOLDERS = ("sft-tui-first-question", "sft-tui-answer", "sft-tui-next-question")


def _system_chars(tokenizer: Any, turns: list[dict[str, Any]], template: str | None) -> int:
    """How many characters at the start of a rendered conversation are its system prompt: the row's
    system turns, or the default prompt the template adds when there are none.

    Rendered with placeholder turns, the text before the first question is the system prompt
    followed by the header that opens every user turn; that header is what comes between an
    answer's end-of-turn text and the next question. 0 when nothing comes before the first header,
    or when the template does not render the placeholders that way (the preview then folds nothing).
    """
    question, answer, follow_up = _PLACEHOLDERS
    system = _leading_system(turns)
    first = [*system, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    try:
        one = _render(tokenizer, first[:-1], template, generation_prompt=False)
        two = _render(tokenizer, first, template, generation_prompt=False)
        three = _render(tokenizer, [*first, {"role": "user", "content": follow_up}], template, generation_prompt=False)
    except UserError:
        return 0
    if question not in one or answer not in two or follow_up not in three:
        return 0
    before = one[: one.index(question)]
    end_of_answer = two[two.index(answer) + len(answer):]
    between = three[three.index(answer) + len(answer): three.index(follow_up)]
    if not between.startswith(end_of_answer) or not before.endswith(between[len(end_of_answer):]):
        return 0
    chars = len(before) - len(between) + len(end_of_answer)
    return chars if before[:chars].strip() else 0


def _assistant_spans(tokenizer: Any, turns: list[dict[str, Any]], template: str | None
                     ) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and (turn index, start, end) character spans of the trained turns.

    A turn's span starts where the conversation before it, rendered with the generation prompt,
    ends, and stops where the conversation up to it ends, less trailing whitespace (formatting after
    the end-of-turn token that generation never produces). This needs a prefix-stable template:
    rendering a shorter conversation must give a prefix of the longer one. An assistant turn with
    nothing before it has no prompt to answer, and an empty one would train the end-of-turn token
    alone; both are kept as context only.
    """
    full = _render(tokenizer, turns, template, generation_prompt=False)
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant" or i == 0 or is_blank(turn["content"]):
            continue
        before = _render(tokenizer, turns[:i], template, generation_prompt=True)
        upto = _render(tokenizer, turns[: i + 1], template, generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise UserError(
                "the chat template is not prefix-stable: rendering a conversation up to an assistant turn does not "
                "give the start of the whole conversation, so the assistant tokens cannot be located",
                "convert the data to prompt-completion, or use a model whose chat template renders each turn "
                "on its own (e.g. ChatML)",
            )
        spans.append((i, len(before), len(before) + len(upto[len(before):].rstrip())))
    return full, spans


def _tokenize_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of `text` (no added special tokens: the template wrote them) and, per token,
    whether it lies in a trained span.

    Fast tokenizers tokenize the whole text once and place tokens by their character offsets, so
    the ids are exactly those the model sees for this text; tokenizers without offsets tokenize
    the text piece by piece between span boundaries.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        trained = [any(s < end and start < e for s, e in spans) for start, end in enc["offset_mapping"]]
        return list(enc["input_ids"]), trained
    ids: list[int] = []
    trained: list[bool] = []
    cuts = [0, *(b for span in spans for b in span), len(text)]
    for k, (start, end) in enumerate(zip(cuts, cuts[1:])):
        piece = token_ids(tokenizer, [text[start:end]], special=False)[0] if end > start else []
        ids += piece
        trained += [k % 2 == 1] * len(piece)
    return ids, trained
