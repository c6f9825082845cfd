"""Evaluation speed with the frozen-prefix cache (issue 12): the C2 case of bench/speed_vs_trainer.py
(a SmolLM2-135M-shaped Llama, top 2 blocks with the tied head frozen, chat rows) trained for 3
epochs through core.engine.train with an evaluation each epoch, prefix cache on and off. Prints the
mean training tokens/s of the step reports and each evaluation's tokens/s and loss: the first
evaluation fills the validation rows' cache, the later ones start at the lowest trained block.

    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/eval_cached.py [--rows 240]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    from bench.speed_vs_trainer import prepare_case, run_config
    from core.config import apply_overrides
    from core.engine import train
    from core.events import EvalResult, ListSink, StepMetrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=240)
    args = parser.parse_args()
    spec = prepare_case("c2", argparse.Namespace(seed=42, engine_set=[], rows=args.rows, epochs=3))
    per_epoch = -(-int(args.rows * 0.9) // spec["batch_size"])
    for cache in ("auto", "off"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = apply_overrides(run_config(spec, tmp), [f"compute.prefix_cache='{cache}'",
                                                          f"eval.every_steps={per_epoch}", "eval.batch_size=16"])
            sink = ListSink()
            train(cfg, [sink])
            steps, evals = sink.of_type(StepMetrics), sink.of_type(EvalResult)
            rates = ", ".join(f"{e.tokens_per_s:,.0f}" for e in evals)
            losses = ", ".join(f"{e.metrics['loss']:.4f}" for e in evals)
            print(f"prefix cache {cache}: training {sum(s.tokens_per_s for s in steps) / len(steps):,.0f} tok/s; "
                  f"evaluations {rates} tok/s; eval loss {losses}", flush=True)


if __name__ == "__main__":
    main()
