"""Numbers as the screens write them: parameter counts, shares, durations and metrics."""

from __future__ import annotations


def format_count(n: int) -> str:
    """`770`, `147.8K`, `22.7M`, `6.7B`: parameter counts the way model cards write them, short
    enough for a tree label."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def format_share(share: float) -> str:
    """A percentage that stays informative when tiny: a head-only map trains 0.0034%, not 0.0%."""
    percent = 100 * share
    if 0 < percent < 0.1:
        return f"{percent:.2g}%"
    return f"{percent:.1f}%"


def format_duration(seconds: float | None) -> str:
    """`0:41`, `12:05`, `1:02:03`; `-:--` while unknown."""
    if seconds is None:
        return "-:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_metric(value: float, name: str = "") -> str:
    """Four decimals for losses and scores; a perplexity, which runs from thousands before training
    to a few units, two throughout, so that its column reads alike (`1,044.3` stood beside `71.2210`)."""
    if name == "perplexity":
        return f"{value:,.2f}"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"


def format_metrics(metrics: dict[str, float]) -> str:
    return " · ".join(f"{name} {format_metric(value, name)}" for name, value in metrics.items()) or "-"
