"""Long paths on the Train step's setup keep their file name and their row's one line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from core.config import example_config
from sft_tui.format.paths import TailPath, tail
from sft_tui.format.train import draft_summary

DEEP = "/home/alice/projects/support-bot/experiments/2026-12/cleaned/train-with-system-prompts.jsonl"


def rendered(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_tail_keeps_the_end_of_a_path_and_its_width():
    assert tail("runs/a", 20) == "runs/a"
    cut = tail(DEEP, 30)
    assert len(cut) == 30 and cut.startswith("…") and cut.endswith("/train-with-system-prompts.jsonl"[-29:])


def test_a_path_too_long_for_its_row_loses_its_start_and_the_row_stays_one_line():
    after = " · format auto · max length 512"
    assert rendered(TailPath(DEEP, after), 64) == ["…" + DEEP[-(64 - len(after) - 1):] + after]
    assert rendered(TailPath("data/train.jsonl", after), 64) == ["data/train.jsonl" + after]


def test_a_path_with_no_room_beside_its_words_keeps_a_line_and_the_words_wrap():
    after = " · " + "word " * 10
    lines = rendered(TailPath(DEEP, after.rstrip()), 50)
    assert lines[0] == tail(DEEP, 50) and lines[0].endswith("prompts.jsonl")
    assert "word" in lines[1]


def test_the_setup_shows_the_file_names_of_deep_paths_at_80_columns():
    """As the panel draws it (sft_tui/widgets/train/setup.py): a label column, then the values."""
    config = example_config("causal-lm")
    config.model.name_or_path = "/mnt/shared/models/checkpoints/2026/smollm2-135m-instruct-finetuned-v3"
    config.data.train = DEEP
    config.output.runs_dir = "/scratch/alice/projects/support-bot/experiments/2026-12/runs"
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column()
    rows = draft_summary(config, 0.5, [])
    for label, value in rows:
        table.add_row(label, value)
    lines = rendered(table, 78)
    assert len(lines) == len(rows)  # no row wraps
    assert lines[0].endswith("finetuned-v3  (causal-lm)")
    assert lines[1].split(" · ")[0].endswith("/train-with-system-prompts.jsonl")
    assert lines[-1].split(" · ")[0].endswith("/runs/<time>-<model>")
