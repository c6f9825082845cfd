"""Comparing runs as plain data: their curves from events.jsonl and the config keys that differ.

The runs screen draws these; nothing here knows a widget, so the rules are tested without a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from core.events import Event

MISSING = "-"
"""How the diff shows a key a run's config does not have (a config of another version)."""
MAX_VALUE_CHARS = 200
"""A longer value is cut: a diff cell is read at a glance, and a run's config may come from anyone."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists (freeze rules, trackers) stay one value."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def format_value(value: Any) -> str:
    """A config value as YAML would write it inline: strings bare, the rest as JSON (null, true, [..];
    what JSON has no form for, such as a YAML date, as its text), cut at MAX_VALUE_CHARS."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except TypeError:  # a mapping keyed by what JSON cannot key by (a date)
        text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"


NOT_DIFFED = ("output.run_name",)
"""Keys that differ between any two runs and say nothing of how they trained: the run's name is
the column's header already."""


def config_diff(configs: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(dotted key, each config's value) for every key whose values are not all equal, in the order
    the keys first appear; a key one config lacks shows MISSING there."""
    flats = [flatten(config) for config in configs]
    keys = [key for key in dict.fromkeys(key for flat in flats for key in flat) if key not in NOT_DIFFED]
    absent = object()
    diff = []
    for key in keys:
        values = [flat.get(key, absent) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            diff.append((key, [MISSING if value is absent else format_value(value) for value in values]))
    return diff


def loss_curve(events: Iterable[Event]) -> list[tuple[int, float]]:
    """(step, train loss) by step. Steps a resume trained again (after the checkpoint it went back
    to) keep the later value, so the curve is what the final weights went through."""
    points = {event.step: event.loss for event in events if event.type == "step"}
    return sorted(points.items())


def eval_curve(events: Iterable[Event], metric: str) -> list[tuple[int, float]]:
    """(step, metric) of every evaluation that reported `metric`, the later one for a repeated step."""
    points = {event.step: event.metrics[metric] for event in events
              if event.type == "eval" and metric in event.metrics}
    return sorted(points.items())


def eval_metrics(events: Iterable[Event]) -> list[str]:
    """The metric names a run's evaluations reported, in the order first seen."""
    return list(dict.fromkeys(name for event in events if event.type == "eval" for name in event.metrics))


def shared_metrics(runs: list[list[str]]) -> list[str]:
    """The metrics every run reported (the first run's order): the ones a comparison can plot.
    `loss` comes first when all have it, as the default a user compares."""
    if not runs:
        return []
    names = [name for name in runs[0] if all(name in other for other in runs[1:])]
    return sorted(names, key=lambda name: name != "loss")
