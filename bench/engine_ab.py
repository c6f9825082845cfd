"""Benchmark: the engine against itself with an option changed, on a case of bench/speed_vs_trainer.py.

Each variant trains the case's engine side in fresh processes, variants alternating (A B, B A, ...),
so drift on the machine hits both alike; prints each run's training seconds, real tokens/s, eval
loss, steps and peak RSS. A variant is a name and `--set`-style overrides (`data.packing=true`) or an
environment variable (`env:MALLOC_MMAP_THRESHOLD_=1048576`).

Usage (2 CPU cores; see BENCHMARKS.md for the runs):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_ab.py --case c2 --rows 240 --epochs 1 --b packed data.packing=true
    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_ab.py --case c1-full --rows 1500 --epochs 2 \\
        --b returned env:MALLOC_MMAP_THRESHOLD_=1048576
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.speed_vs_trainer import engine_case_arguments, prepare_case, spawn  # noqa: E402


def variant(changes: list[str], case: str, args) -> tuple[dict, dict]:
    """(the engine side's spec, extra environment) of one variant's changes."""
    env = dict(change[4:].split("=", 1) for change in changes if change.startswith("env:"))
    sets = [change for change in changes if not change.startswith("env:")]
    spec = prepare_case(case, types.SimpleNamespace(seed=args.seed, engine_set=sets, rows=args.rows, epochs=args.epochs))
    return spec | {"side": "engine"}, env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine_case_arguments(p, "c2")
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant")
    p.add_argument("--a", nargs="*", default=["default"], metavar="NAME [CHANGE ...]",
                   help="the baseline: a name and its changes (none: the engine's defaults)")
    p.add_argument("--b", nargs="+", required=True, metavar="NAME CHANGE", help="the variant: a name and its changes")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = tempfile.mkdtemp(prefix="bench-ab-")
    base_env = dict(os.environ, SFT_TUI_CACHE=f"{scratch}/cache", PYTHONPATH=str(ROOT))
    base_env.setdefault("HF_HOME", f"{scratch}/hf-home")
    variants = {names[0]: variant(names[1:], args.case, args) for names in (args.a, args.b)}
    for repeat in range(args.repeats):
        for name in variants if repeat % 2 == 0 else list(variants)[::-1]:
            spec, env = variants[name]
            out = spawn(spec, base_env | env, 0)
            print(f"{name}: {out['train_s']:.1f} s, {out['real_tokens_per_s']:,.0f} real tok/s, eval loss "
                  f"{out['eval_loss']:.4f}, {out['steps']} steps, {out['train_rows']} training rows, peak RSS "
                  f"{out['peak_rss_bytes'] / 2**20:,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
