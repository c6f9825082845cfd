"""Gradual unfreezing (ULMFiT) and LP-FT: when each part of the freeze map starts training.

The freeze map says what trains by the end; freeze.unfreezing says from which step. Its stages, from
the top of the model down: first what lies above the block stack (the head, the final norm, a
pooler: what only feeds the head), then under `gradual` one trained block at a time from the top,
the embeddings last; under `lp-ft` everything else at once (linear probing, then fine-tuning).
Stages with nothing to train are skipped, so each starts something new. A stage starts every
`unfreeze_every` optimizer steps (one epoch when 0).

Which stage a run is in is a function of its step alone: a resumed run applies the stage of its
step and continues exactly as if never stopped. The optimizer is built over the whole map from the
start; a parameter that has not started yet has no gradient, so AdamW neither moves it nor keeps
state for it, and the groups already training keep their state when the next one joins.

Plain Python on parameter names and the model description, so the freeze-map screen shows the same
schedule on its meta skeleton without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.describe import embedding_parts, within
from core.freeze import base_name

ABOVE_BLOCKS = "the head and the top modules"
"""The first stage: the head and the modules after the block stack (final norm, pooler: core.describe's top)."""
EMBEDDINGS = "embeddings"
REST = "the rest of the map"
"""LP-FT's second stage."""
WHOLE_MAP = "the whole map"
"""The one stage of a run without unfreezing (or whose map has one part only)."""


@dataclass(frozen=True)
class UnfreezeSchedule:
    """The stages of one run: `stages[i]` says what starts training in stage i (a block's path,
    ABOVE_BLOCKS, EMBEDDINGS, or REST under lp-ft), which begins after `every` x i optimizer steps."""

    every: int
    stages: tuple[str, ...]
    group_stage: dict[str, int]
    """The stage of each part of the model (a block's path, ABOVE_BLOCKS, EMBEDDINGS) that trains."""
    blocks: tuple[str, ...]
    embeddings: tuple[str, ...]

    def stage_of(self, names: Iterable[str]) -> int:
        """The stage in which a tensor known by `names` (a tied one has several) starts training: the
        earliest of its names', so a head tied to the embedding trains with the head."""
        return min(self.group_stage.get(_group(base_name(name), self.blocks, self.embeddings), 0) for name in names)

    def stage_at(self, step: int) -> int:
        """The stage a run is in after `step` optimizer steps (before it takes the next)."""
        return min(step // self.every, len(self.stages) - 1)

    def start_step(self, stage: int) -> int:
        """The optimizer steps taken before `stage` starts training."""
        return stage * self.every

    @property
    def staged(self) -> bool:
        """Whether anything starts training later than the first step."""
        return len(self.stages) > 1


def plan_unfreezing(kind: str, every: int, trainable: Iterable[Iterable[str]], blocks: list[str],
                    embeddings: list[str]) -> UnfreezeSchedule:
    """The schedule of freeze.unfreezing `kind` for a map that trains `trainable`: the names of each
    trained tensor (a tied one has several: core.freeze.tensors), on a model with these blocks and
    embeddings (core.describe). `every`: steps per stage, freeze.unfreeze_every or, where that is 0,
    the run's steps per epoch."""
    trainable = [[names] if isinstance(names, str) else list(names) for names in trainable]  # a name: a tensor of one
    embeddings = embedding_parts(blocks, embeddings)  # BERT's embedding LayerNorm unfreezes with the tables
    order = [ABOVE_BLOCKS, *reversed(blocks), EMBEDDINGS]
    rank = {group: i for i, group in enumerate(order)}
    groups = {min((_group(base_name(name), blocks, embeddings) for name in names), key=rank.__getitem__)
              for names in trainable}  # a tensor starts with the earliest of its names' parts
    present = [group for group in order if group in groups]
    if kind == "gradual" and len(present) > 1:
        stages, group_stage = tuple(present), {group: i for i, group in enumerate(present)}
    elif kind == "lp-ft" and len(present) > 1 and present[0] == ABOVE_BLOCKS:
        stages, group_stage = (ABOVE_BLOCKS, REST), {group: int(group != ABOVE_BLOCKS) for group in present}
    else:
        stages, group_stage = (WHOLE_MAP,), dict.fromkeys(present, 0)
    return UnfreezeSchedule(max(every, 1), stages, group_stage, tuple(blocks), tuple(embeddings))


def _group(name: str, blocks, embeddings) -> str:
    """The part of the model that parameter or module path `name` lies in."""
    block = next((b for b in blocks if within(name, [b])), None)
    if block is not None:
        return block
    return EMBEDDINGS if within(name, embeddings) else ABOVE_BLOCKS


class Unfreezer:
    """Sets requires_grad by the stage of a run's step (`enter`), over the tensors the whole map
    trains, as they were when the run was built (peft's names map to the base model's)."""

    def __init__(self, schedule: UnfreezeSchedule, model) -> None:
        from core.freeze import tensors

        self.schedule = schedule
        self.tensors = [(schedule.stage_of(names), param) for names, param in tensors(model) if param.requires_grad]
        self.stage: int | None = None

    @classmethod
    def for_run(cls, config, model, steps_per_epoch: int) -> Unfreezer | None:
        """The run's unfreezer, None under freeze.unfreezing none or when the map has one stage only."""
        from core.describe import describe_model
        from core.freeze import tensors
        from core.prefix_cache import inner_model

        if config.freeze.unfreezing == "none":
            return None
        inner = inner_model(model)
        description = describe_model(inner)
        trainable = [names for names, param in tensors(inner) if param.requires_grad]
        schedule = plan_unfreezing(config.freeze.unfreezing, config.freeze.unfreeze_every or steps_per_epoch,
                                   trainable, description.blocks, description.embeddings)
        return cls(schedule, inner) if schedule.staged else None

    def enter(self, step: int) -> str | None:
        """Train what the stage of `step` trains; what started training, when that changed."""
        stage = self.schedule.stage_at(step)
        if stage == self.stage:
            return None
        for start, param in self.tensors:
            param.requires_grad_(start <= stage)
        started = self.schedule.stages[self.stage + 1 if self.stage is not None else 0: stage + 1]
        self.stage = stage
        return ", ".join(started)
