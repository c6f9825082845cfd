"""Training data: load rows, detect their format, tokenize them with loss masks, and plan batches.

`prepare_data` turns a RunConfig into plain lists of token ids (`Example`s), so the engine never
touches `datasets` and everything after this package is cheap and deterministic: `batch_plan` gives
the same batch order for the same (seed, epoch), which is what lets a run resume mid-epoch by
skipping the batches it already trained on. `datasets` and `torch` are imported inside the
functions that need them, so importing this package (as the app does at start-up) stays light.

One job per module: `sources` (files, `datasets` names, demo sets), `formats` (format detection
and column roles), `encoding` (loss masks for prompt-completion and plain text, and what every
encoder shares), `chat` (chat templates and assistant spans), `labels` (classification labels),
`prepare` (`prepare_data`: split, encode, pack, statistics), `batching` (`batch_plan`, `collate`),
`examples` (the result types). The names below are the package's public interface.
"""

from core.data.batching import batch_plan, collate
from core.data.encoding import CHARS_PER_TOKEN
from core.data.examples import DataStats, Example, PreparedData
from core.data.formats import detect_format
from core.data.prepare import prepare_data
from core.data.sources import DEMO_DATASETS, load_raw
from core.loss import IGNORE_INDEX

__all__ = [
    "CHARS_PER_TOKEN",
    "DEMO_DATASETS",
    "IGNORE_INDEX",
    "DataStats",
    "Example",
    "PreparedData",
    "batch_plan",
    "collate",
    "detect_format",
    "load_raw",
    "prepare_data",
]
