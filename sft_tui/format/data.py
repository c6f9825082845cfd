"""The data screen's account of tokenized data: rows as the model sees them, and their statistics.

Pure functions from core.data's PreparedData (and the tokenizer that made it) to rich renderables.
What comes from the data set (its cells, column names, labels) is a file's: it is shown with its
control characters escaped (sft_tui.format.safe) and no markup read from it.
A causal-LM row is decoded run by run, so the tokens without loss (core.loss.trained_positions: the
prompt, chat framing, a row's first token) show dim and the tokens the model learns to produce show bold: a wrong column mapping
or a template that masks everything is visible before any training starts.
"""

from __future__ import annotations

from itertools import groupby

from rich.cells import cell_len
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from core.loss import trained_positions, trained_tokens
from sft_tui.format.safe import safe_text

MASKED_STYLE = "dim"
"""Tokens that carry no loss."""
TRAINED_STYLE = "bold"
"""Tokens the loss is computed on."""
ANSWER_MARK = "▸"
"""Drawn where trained tokens follow tokens without loss, for terminals that do not show dim."""
CELL_CHARS = 240
"""Longest text shown in a preview cell; the rest is cut with an ellipsis (the row detail shows it all)."""
BAR_WIDTH = 20


def _flat(text: str, one_line: bool) -> str:
    text = text.replace("\r", "")
    return safe_text(text.replace("\n", "⏎") if one_line else text)


def lm_row(tokenizer, example, one_line: bool = True, folded: int = 0) -> Text:
    """A causal-LM row decoded in runs of masked and trained tokens, styled by which they are; the
    first `folded` tokens (a chat row's system prompt, Example.system_tokens) show as their count
    only, so that the turns, not a long default system prompt, fill the few lines there are."""
    text = Text()
    if folded:
        text.append(f"[system prompt: {folded} tokens]", "dim italic")
        text.append(" " if one_line else "\n")
    pairs = list(zip(example.input_ids, trained_positions(example.labels)))[folded:]
    for masked, run in groupby(pairs, key=lambda pair: not pair[1]):
        if not masked and text:
            text.append(ANSWER_MARK, style="cyan")
        piece = tokenizer.decode([token for token, _ in run])
        text.append(_flat(piece, one_line), style=MASKED_STYLE if masked else TRAINED_STYLE)
    return text


def classification_row(tokenizer, example, one_line: bool = True) -> Text:
    """The text as the classifier reads it (special tokens left out)."""
    return Text(_flat(tokenizer.decode(example.input_ids, skip_special_tokens=True), one_line))


def preview(data, tokenizer, limit: int = 20) -> tuple[list[tuple[str, int]], list[tuple]]:
    """The first `limit` training rows: (column label, width) pairs and the rows' cells, the text
    cut at CELL_CHARS.

    Widths are measured here rather than left to the DataTable, so a table refilled while it is
    on screen never shows a frame with the widths of the previous contents.
    """
    rows: list[tuple] = []
    for i, example in enumerate(data.train[:limit], 1):
        if data.labels is not None:
            text = classification_row(tokenizer, example)
            label = escape(safe_text(data.labels[example.labels], one_line=True))  # a str cell is markup
            rows.append((str(i), label, str(len(example.input_ids)), text))
        else:
            text = lm_row(tokenizer, example, folded=example.system_tokens)
            rows.append((str(i), str(len(example.input_ids)), str(trained_tokens(example.labels)), text))
        text.truncate(CELL_CHARS, overflow="ellipsis")
    if data.labels is not None:
        labels = ("#", "label", "tokens", "text")
    else:
        labels = ("#", "tokens", "trained", f"row: no loss dim {ANSWER_MARK} trained bold")
    widths = [max([cell_len(label)] + [_width(row[i]) for row in rows]) for i, label in enumerate(labels)]
    return list(zip(labels, widths)), rows


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def row_detail(data, tokenizer, index: int) -> tuple[Text, int]:
    """One training row in full, line breaks kept, under a heading with its label or token counts;
    and where in it the first trained token starts (0 when no masked token comes before it), which
    the preview scrolls to."""
    example = data.train[index]
    if data.labels is not None:
        label = safe_text(data.labels[example.labels], one_line=True)
        heading = f"row {index + 1} · label {label} · {len(example.input_ids)} tokens\n"
        body = classification_row(tokenizer, example, one_line=False)
    else:
        heading = f"row {index + 1} · {len(example.input_ids)} tokens, {trained_tokens(example.labels)} trained\n"
        body = lm_row(tokenizer, example, one_line=False, folded=example.system_tokens)
    mark = body.plain.find(ANSWER_MARK) if data.labels is None else -1
    return Text.assemble((heading, "italic"), body), len(heading) + mark if mark > 0 else 0


def label_bars(counts: dict[str, int]) -> Table:
    """Rows per label as bars scaled to the most frequent label."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    most = max(counts.values(), default=0) or 1
    for label, count in counts.items():
        width = max(1, round(BAR_WIDTH * count / most)) if count else 0
        table.add_row(Text(safe_text(label, one_line=True)), Text("█" * width, style="cyan"), f"{count:,}")
    return table


def _validation_source(data_config, rows: int) -> str:
    if data_config.validation:
        return f"from {data_config.validation}"
    if data_config.validation_split:
        return f"split {data_config.validation_split!r}"
    if rows:
        return f"held out of train (val_ratio {data_config.val_ratio:g})"
    return "none: evaluation is skipped"


def data_stats(data, data_config) -> Group:
    """Format and columns, rows per split, token lengths, truncation, labels and warnings."""
    stats = data.stats
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    detected = "" if data_config.format != "auto" else " (detected)"
    columns = ", ".join(f"{role} → {column}" for role, column in data.columns.model_dump(exclude_none=True).items())
    grid.add_row("Format", f"{data.format}{detected}")
    grid.add_row("Columns", Text(safe_text(columns)))
    train_rows, val_rows = stats.rows_out["train"], stats.rows_out["validation"]
    grid.add_row("Train", f"{train_rows:,} rows" + (" (packed blocks)" if data_config.packing else ""))
    grid.add_row("Validation", Text(safe_text(f"{val_rows:,} rows, "
                                              f"{_validation_source(data_config, stats.rows_in['validation'])}")))
    grid.add_row("Tokens", f"min {stats.length_min} · mean {stats.length_mean:.1f} · p50 {stats.length_p50} · "
                           f"p95 {stats.length_p95} · max {stats.length_max}")
    if data.labels is None and stats.tokens_total:
        share = stats.loss_tokens / stats.tokens_total
        grid.add_row("Trained", f"{stats.loss_tokens:,} of {stats.tokens_total:,} tokens ({share:.0%})")
    truncated = stats.rows_truncated["train"]
    grid.add_row("Truncated", Text(f"{truncated:,} of {stats.rows_in['train']:,} rows at max_length "
                                   f"{data_config.max_length}", style="yellow" if truncated else ""))
    dropped = stats.rows_dropped["train"] + stats.rows_dropped["validation"]
    grid.add_row("Dropped", Text(f"{dropped:,} rows", style="yellow" if dropped else ""))
    parts: list = [grid]
    if stats.label_counts:
        parts += [Text(), Text("Labels (training rows)", style="bold"), label_bars(stats.label_counts)]
    if data.warnings:
        parts += [Text(), Text("Warnings", style="bold yellow")]
        parts += [Text(f"• {safe_text(warning)}", style="yellow") for warning in data.warnings]
    return Group(*parts)
