"""The model screen's account of a loaded model: what it is, where its parts are, what it costs.

Pure functions from a core.models.ModelDescription to rich renderables, so they can be read (and
tested) without a terminal, and never need torch: the description is plain data.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from core.memory import MemoryEstimate, estimate_training_memory, format_bytes
from sft_tui.format.numbers import format_count

PARAM_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
"""Bytes per parameter of the dtypes a checkpoint comes in (others are estimated as float32)."""


def _find(node, path: str):
    """The ModuleNode at a dotted path (None if there is none)."""
    for name in path.split(".") if path else []:
        node = next((child for child in node.children if child.name == name), None)
        if node is None:
            return None
    return node


def _paths(paths: list[str]) -> str:
    """Module paths one per line, siblings together: `bert.embeddings: word_embeddings, position_embeddings`."""
    if not paths:
        return "none found"
    siblings: dict[str, list[str]] = {}
    for path in paths:
        parent, _, name = path.rpartition(".")
        siblings.setdefault(parent, []).append(name)
    lines = []
    for parent, names in siblings.items():
        if len(names) > 1 and parent:
            lines.append(f"{parent}: {', '.join(names)}")
        else:
            lines += [f"{parent}.{name}" if parent else name for name in names]
    return "\n".join(lines)


def tied_modules(root) -> list:
    """The modules whose parameters all belong to another module (a tied lm_head), highest first:
    their children are tied too and are not listed again."""
    found = []

    def visit(node) -> None:
        for child in node.children:
            if child.tied_with:
                found.append(child)
            else:
                visit(child)

    visit(root)
    return found


def _blocks(description) -> str:
    blocks = description.blocks
    if not blocks:
        return "no stack of repeated blocks found"
    first = _find(description.root, blocks[0])
    kind = f" × {first.kind}" if first is not None else ""
    span = blocks[0] if len(blocks) == 1 else f"{blocks[0]} …\n{blocks[-1]}"
    return f"{len(blocks)}{kind}\n{span}"


def overview(description) -> Group:
    """Architecture, then size, dtype, positions, blocks, embeddings and head, one labelled row each."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    total, trainable = description.total_params, description.trainable_params
    params = Text(format_count(total), style="bold")
    params.append(f" ({total:,}", style="dim")
    params.append(")" if trainable == total else f", {format_count(trainable)} trainable)", style="dim")
    rows = [
        ("Parameters", params),
        ("dtype", description.dtype),
        ("Max positions", str(description.max_positions) if description.max_positions else "not set"),
        ("Blocks", _blocks(description)),
        ("Embeddings", _paths(description.embeddings)),
        ("Head", _paths(description.head) if description.head else "none (a base model without a task head)"),
        ("After blocks", _paths(description.top) if description.top else "nothing"),
    ]
    if tied := tied_modules(description.root):
        rows.append(("Tied", "\n".join(f"{node.path} = {node.tied_with} (counted once)" for node in tied)))
    for label, value in rows:
        grid.add_row(label, value)
    title = Text.assemble((description.architecture, "bold cyan"), (f" ({description.model_type})", "dim"))
    return Group(title, grid)


def top_modules(description, depth: int = 2) -> Table:
    """The first levels of the module tree (modules with parameters only), with their sizes; a tied
    module names its owner instead of counting the shared parameters a second time."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    table.add_column("module", no_wrap=True, overflow="ellipsis")
    table.add_column("kind", style="dim", no_wrap=True, overflow="ellipsis")
    table.add_column("params", justify="right", no_wrap=True)

    def add(node, level: int) -> None:
        for child in node.children:
            if not child.params:
                continue
            if child.tied_with:
                table.add_row("  " * (level - 1) + child.name, child.kind,
                              Text(f"tied with {child.tied_with}", style="dim italic"))
                continue
            table.add_row("  " * (level - 1) + child.name, child.kind, format_count(child.params))
            if level < depth:
                add(child, level + 1)

    add(description.root, 1)
    return table


def memory(description) -> Table:
    """Weights, gradients and AdamW state for training every parameter (activations come on top)."""
    sizes = estimate_training_memory(
        description.total_params, description.total_params, PARAM_BYTES.get(description.dtype, 4)
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for name in ("weights", "gradients", "optimizer"):
        grid.add_row(name, format_bytes(sizes[name]))
    grid.add_row(Text("total", style="bold"), Text(format_bytes(sizes["total"]), style="bold"))
    return grid


PARTS_WIDTH = 72
"""Characters of the memory's parts on one line of the freeze summary, which is 80 columns wide at
the smallest terminal, less its indent and border; a part that does not fit starts the next line."""


def training_memory(estimate: MemoryEstimate, other: MemoryEstimate, checkpointing: bool, batch: int, length: int,
                    device: str) -> Text:
    """The freeze summary's memory, in lines that fit 80 columns: the peak of a step, its parts (and
    L2-SP's reference copy, when it keeps one), then the batch it is for and the peak with gradient
    checkpointing switched the other way (`other`)."""
    text = Text()
    text.append("memory ", "bold")
    text.append(format_bytes(estimate.total) + (" per GPU\n" if device == "cuda" else " + process\n"))
    parts = [("weights", estimate.weights), ("grads", estimate.gradients), ("AdamW", estimate.optimizer),
             ("activations", estimate.activations)] + ([("logits", estimate.logits)] if estimate.logits else [])
    parts += [("half weights", estimate.weight_copies)] if estimate.weight_copies else []
    parts += [("freed, kept by malloc", estimate.allocator_kept)] if estimate.allocator_kept else []
    lines: list[str] = []
    for part in (f"{name} {format_bytes(size)}" for name, size in parts):
        if lines and len(lines[-1]) + 3 + len(part) <= PARTS_WIDTH:
            lines[-1] += f" · {part}"
        else:
            lines.append(part)  # a part is never cut between its name and its size
    text.append("".join(f"  {line}\n" for line in lines), "dim")
    if estimate.reference:  # a line of its own: the parts above fill 80 columns already
        text.append(f"  L2-SP's copy of the starting weights {format_bytes(estimate.reference)}\n", "dim")
    # Checkpointing costs memory where the whole blocks it recomputes outweigh what the run keeps
    # (a small model, a few trained blocks): said in a word, or the higher figure read as an error.
    more = ""
    if not checkpointing and other.total > estimate.total:
        more = " (no saving here)"
    elif checkpointing and other.total < estimate.total:
        more = " (less here)"
    text.append(f"  batch {batch} x {length} · {'without' if checkpointing else 'with'} gradient "
                f"checkpointing: {format_bytes(other.total)}{more}\n", "dim")
    return text


def learning_rate(value: float) -> str:
    """A learning rate as people write it: 5.0e-5, not 5.0e-05."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def lr_spread(scales, lr: float) -> str:
    """The learning rates the trainable parameters get (`scales`: their lr_scale values, as layer-wise
    decay spreads them): `lr x0.26-x1 (1.3e-5 - 5.0e-5)`, or `lr 5.0e-5` when all train at the base."""
    low, high = min(scales, default=1.0), max(scales, default=1.0)
    if low == high == 1.0:
        return f"lr {learning_rate(lr)}"
    if low == high:
        return f"lr x{low:.2g} ({learning_rate(lr * low)})"
    return f"lr x{low:.2g}-x{high:.2g} ({learning_rate(lr * low)} - {learning_rate(lr * high)})"


def stage_start(stage: int, every: int) -> str:
    """When unfreezing stage `stage` starts: after `every` optimizer steps per stage (freeze.unfreeze_every,
    as the engine's log counts them), or, when `every` is 0, at the start of epoch stage + 1."""
    return f"from step {stage * every}" if every else f"from epoch {stage + 1}"


def unfreezing_text(kind: str, every: int, stages: int) -> str:
    """freeze.unfreezing in a few words: `gradual: 8 stages of 1 epoch`; `stages`: the schedule's
    count for the current map, 1 when the map has nothing to stage (it trains one part only)."""
    if kind == "none":
        return "none"
    if stages < 2:
        return f"{kind}: one stage (the map trains one part)"
    return f"{kind}: {stages} stages of {f'{every} steps' if every else '1 epoch'}"


def head_note(checkpoint, task: str, description, labels: list[str] | None) -> Text | None:
    """Say when loading for `task` gives the model a new, untrained head, and which task the
    checkpoint (core.models.Checkpoint, from its config.json) was made for when that is another one.
    None when the checkpoint's own head is used, or nothing is known about it."""
    if checkpoint is None:
        return None
    made_for = checkpoint.task
    saved = checkpoint.architectures[0] if checkpoint.architectures else "the checkpoint"
    head = ", ".join(description.head) or "head"
    if task == "classification":
        count = len(labels) if labels else None
        if made_for == "classification" and checkpoint.num_labels in (count, None):
            return None
        if made_for == "classification":
            what = f"replaces the checkpoint's head of {checkpoint.num_labels} labels"
        else:
            what = f"is created: {saved} has no classification head"
        size = f" of {count} labels" if count else ""
        text = Text(f"classification: a new head{size} ({head}) {what}")
    elif made_for == "classification":
        text = Text(f"{task}: a new LM head ({head}) replaces the classification head of {saved}")
    else:
        return None
    if made_for is not None and made_for != task:
        text.append(f"\n{saved} is made for {made_for}: choose that task and Load to keep its head", "yellow")
    return text


def model_summary(description) -> Group:
    """Everything the model screen shows about a loaded model, top to bottom."""
    return Group(
        overview(description),
        Text(),
        Text.assemble(("Memory for a full fine-tune with AdamW", "bold"), (" (activations come on top)", "dim")),
        memory(description),
        Text(),
        Text("Top modules", style="bold"),
        top_modules(description),
    )
