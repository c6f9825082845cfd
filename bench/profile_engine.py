"""Profile: where an engine run of a bench/speed_vs_trainer.py case spends its CPU time, by operator.

Runs the case's engine side once under torch.profiler (the whole run: steps and evaluation) and
prints the operators with the most self CPU time, with their share; `--set` changes the config as
`sft-tui train --set` does, so one optimisation's before and after are two invocations.

Usage (2 CPU cores; see BENCHMARKS.md for the runs):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_engine.py --case c1-full --rows 1500 --epochs 1 \\
        --set compute.compact_vocab=off
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.speed_vs_trainer import engine_case_arguments, prepare_case, run_config  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine_case_arguments(p, "c1-full")
    p.add_argument("--set", dest="engine_set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--top", type=int, default=14, help="operators listed")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from torch.profiler import ProfilerActivity, profile

    from core.config import apply_overrides
    from core.engine import train

    spec = prepare_case(args.case, args)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        config = apply_overrides(run_config(spec, tmp), args.engine_set)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = train(config, report_interval_s=1.0)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.case}, {result.step} steps, --set {args.engine_set}; self CPU time {total / 1e6:.1f} s, "
          f"torch {torch.__version__}")
    print("| op | self CPU s | share | calls |\n|---|---:|---:|---:|")
    for e in events[: args.top]:
        print(f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / total:.1%} | {e.count:,} |")


if __name__ == "__main__":
    main()
