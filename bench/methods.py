"""Benchmark (issue 13): transfer-learning methods against plain full fine-tuning on C1.

C1 (bench/_cases.py, as in bench/speed_vs_trainer.py): all-MiniLM-L6-v2 (demo:minilm, pretrained)
with a new 16-label head, on first sentences of installed packages' docstrings labelled by package;
batch 32, max_length 64, fp32, AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01), gradient
clipping at 1.0, a linear schedule with 10% warmup, 3 epochs, length-grouped batches.

Fixed data: the rows are bench._cases.c1_data(--rows, seed 0), split once into a training and a
validation file (10% of each label's rows, at least one, held out: a stratified split, so every
label counts in macro-F1) and given to the engine as data.train and data.validation. The run's
seed therefore changes the new head's initialisation, dropout and the batch order, never the rows:
every method and seed is evaluated on the same validation rows.

Methods and their hyperparameters (METHODS; the chosen values are printed and written out):
- full: every weight at lr 5e-5 (C1's lr in speed_vs_trainer; BERT's recommended 2e-5..5e-5).
- l2sp (Li et al., 2018): full, with optim.l2sp_alpha 100 and l2sp_beta 0.01. The pull is decoupled,
  w <- w - lr * alpha * (w - w0) each step, so it acts through alpha x lr: the paper's penalty with
  SGD at lr 0.01 and alpha 0.1 pulls 1e-3 a step; at lr 5e-5 a "textbook" alpha of 0.01 would pull
  5e-7 a step, 6e-5 over the whole run: nothing. What matters is the pull summed over the run,
  alpha x sum(lr) (about alpha x lr x steps / 2 under warmup and linear decay): an offset from the
  start made early shrinks by exp(-alpha x sum(lr)) by the end. alpha 100 gives 5e-3 a step at the
  peak lr and alpha x sum(lr) = 0.63 on the full-size run (252 steps): early drift halves, while
  Adam's steps (up to lr a step, sum(lr) = 6.3e-3 in all) can still move a weight as far as plain
  fine-tuning's typical drift; the bench prints alpha x sum(lr) for the run's actual steps. beta
  0.01 equals the baseline's weight decay, so the new head is treated as under full (L2-SP replaces
  weight decay) and alpha is the only change.
- llrd (Howard & Ruder 2018; ELECTRA's recipe): core.lr_decay.layerwise_lr_rules with decay 0.8
  (ELECTRA's for small and base models; 0.9 for large) and base lr 1e-4: the head, the pooler and
  the top block at 1e-4, block i of 6 at 1e-4 x 0.8^(5-i) (block 2: 5.1e-5, near full's lr; block
  0: 3.3e-5), the embeddings 2.6e-5. ELECTRA raises the base lr with the decay (1e-4 for base
  models, 3e-4 for small); with full's 5e-5 as the base every block would train slower than under
  full, and LLRD would only be a smaller lr.
- lp-ft (Kumar et al., 2022): freeze.unfreezing lp-ft with unfreeze_every 0 (one epoch): the head
  and the pooler train alone for the first epoch, then everything for the other two, at lr 5e-5
  with the head and the pooler at 20 x (rules with lr_scale 20: 1e-3, head-only's lr, so the first
  epoch is head-only's). The engine's stages share one schedule, and at 5e-5 a new head moves at
  most 5e-5 a weight a step, too little to learn a probe in an epoch. Kumar et al. train the probe
  to convergence and fine-tune with one small lr; here the head and the pooler keep 1e-3 in the
  fine-tuning stage too, a difference to bear in mind.
- gradual (ULMFiT): freeze.unfreezing gradual, lr 5e-5: the head and the pooler first, then one more
  block from the top every K = total steps // 12 steps, so that all 6 blocks train from half-way
  (block 0 starts at step 6K), the embeddings from step 7K.
- head-only: the head-only preset (the head and the pooler), lr 1e-3 (a typical linear-probe lr).
- full-head-lr: a control for lp-ft, not a method of its own: full fine-tuning with the head and the
  pooler at 20 x lr as in lp-ft, but no probing stage; lp-ft against it measures the staging alone.

Reported per method (mean ± sd over the seeds, sd with n - 1): validation accuracy and macro-F1
(core.metrics.classification_metrics: F1 averaged over the labels present in the validation rows)
after the last step; the same before the first step (eval.before_training, the untrained head: it
depends on the seed only, so it is equal across methods); training seconds: the engine's elapsed_s
at the last step less the step-0 evaluation's seconds (model loading and tokenizing are outside the
engine's clock). Each run trains in a fresh process; methods alternate their order across seeds.
Other processes' CPU use during training is reported ("others' cores"): on a shared machine it
says which times to trust.

Usage (2 CPU cores; the full run is 6 methods x 3 seeds = 18 runs):
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/methods.py --out methods.json
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/methods.py --rows 300 --seeds 1 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_vs_trainer import MARKER, CpuWindow, quiet, run_child
BIG = 10**9  # "never" for eval.every_steps / checkpoint.every_steps
VAL_SHARE = 0.1
C1 = {"rows": 3000, "epochs": 3, "batch_size": 32, "max_length": 64, "weight_decay": 0.01, "warmup_ratio": 0.1}
"""C1 as bench/speed_vs_trainer.py runs it (rows before the validation split)."""
METHODS = {
    "full": {"lr": 5e-5},
    "l2sp": {"lr": 5e-5, "l2sp_alpha": 100.0, "l2sp_beta": 0.01},
    "llrd": {"lr": 1e-4, "llrd_decay": 0.8},
    "lp-ft": {"lr": 5e-5, "unfreezing": "lp-ft", "unfreeze_every": 0, "head_lr_scale": 20.0},
    "gradual": {"lr": 5e-5, "unfreezing": "gradual", "blocks_unfrozen_by": 0.5},
    "head-only": {"lr": 1e-3, "preset": "head-only"},
    "full-head-lr": {"lr": 5e-5, "head_lr_scale": 20.0},
}
"""Each method's settings (the module docstring says why these values)."""


# ------------------------------------------------------------------------------------------ data


def fixed_split(rows: int) -> tuple[Path, Path]:
    """Training and validation JSONL files of C1's `rows` rows (data seed 0), built once: VAL_SHARE
    of each label's rows (at least one) held out, in the rows' own (hashed) order."""
    from bench import _cases

    source = _cases.c1_data(rows, 0)
    all_rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(all_rows):
        by_label.setdefault(row["label"], []).append(i)
    if any(len(idx) < 2 for idx in by_label.values()):
        raise SystemExit(f"--rows {rows}: too few rows for a label in both files; give at least {2 * 16}")
    held = {i for idx in by_label.values() for i in idx[: max(1, round(VAL_SHARE * len(idx)))]}
    stem = source.stem
    train = _cases._cached(f"{stem}-methods-train.jsonl", lambda: [r for i, r in enumerate(all_rows) if i not in held])
    val = _cases._cached(f"{stem}-methods-validation.jsonl", lambda: [r for i, r in enumerate(all_rows) if i in held])
    return train, val


# ------------------------------------------------------------------------------------------ one run


def run_config(spec: dict, runs_dir: str, extra_rules: list[dict] | None = None, unfreeze_every: int = 0):
    """The RunConfig of one method and seed."""
    from core.config import parse_config

    m = spec["method"]
    return parse_config({
        "task": "classification", "seed": spec["seed"], "precision": "fp32",
        "model": {"name_or_path": spec["model_path"]},
        "data": {"train": spec["train_path"], "validation": spec["validation_path"], "max_length": C1["max_length"]},
        "freeze": {"preset": m.get("preset", "all"), "rules": extra_rules or [],
                   "unfreezing": m.get("unfreezing", "none"), "unfreeze_every": unfreeze_every},
        "optim": {"lr": m["lr"], "weight_decay": C1["weight_decay"], "batch_size": C1["batch_size"], "grad_accum": 1,
                  "max_grad_norm": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "l2sp_alpha": m.get("l2sp_alpha", 0.0), "l2sp_beta": m.get("l2sp_beta", 0.0)},
        "schedule": {"scheduler": "linear", "warmup_ratio": C1["warmup_ratio"], "epochs": spec["epochs"]},
        "eval": {"every_steps": BIG, "metric": "loss", "num_samples": 0, "batch_size": 64, "before_training": True},
        "checkpoint": {"every_steps": BIG, "keep_last": 1},
        "output": {"runs_dir": runs_dir, "save_final": False, "run_name": f"bench-{spec['name']}-{spec['seed']}"},
    })


def lr_sum(plan) -> float:
    """Sum over the run's steps of the lr multiplier of transformers' linear schedule with warmup."""
    total, warm = plan.total_steps, plan.warmup_steps
    return sum(s / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)) for s in range(total))


def method_config(spec: dict, runs_dir: str):
    """The method's RunConfig with what depends on the model and the plan filled in: LLRD's and
    LP-FT's rules, gradual unfreezing's K. Also what the output reports of it."""
    from core.describe import describe_model
    from core.lr_decay import layerwise_lr_rules
    from core.models import build_skeleton
    from core.plan import plan_steps

    m = spec["method"]
    base = run_config(spec, runs_dir)
    train_rows = sum(1 for line in Path(spec["train_path"]).read_text(encoding="utf-8").splitlines() if line.strip())
    plan = plan_steps(base, train_rows)
    desc = describe_model(build_skeleton(base.model, "classification", [f"l{i}" for i in range(16)]))
    rules, every, notes = [], m.get("unfreeze_every", 0), {"total_steps": plan.total_steps}
    if "llrd_decay" in m:
        rules = [r.model_dump() for r in layerwise_lr_rules(desc, m["llrd_decay"], lambda _: True)]
        notes["lr_scales"] = {r["match"]: r["lr_scale"] for r in rules}
    if "head_lr_scale" in m:
        rules = [{"match": path, "train": True, "lr_scale": m["head_lr_scale"]} for path in desc.head + desc.top]
        notes["head_and_pooler_lr"] = m["lr"] * m["head_lr_scale"]
    if "blocks_unfrozen_by" in m:
        every = max(1, int(plan.total_steps * m["blocks_unfrozen_by"]) // len(desc.blocks))
    if m.get("unfreezing"):
        notes["unfreeze_every"] = every or plan.steps_per_epoch
    if m.get("l2sp_alpha"):
        notes["alpha_x_sum_lr"] = m["l2sp_alpha"] * m["lr"] * lr_sum(plan)
    return run_config(spec, runs_dir, rules, every), notes


def run_one(spec: dict) -> dict:
    """Train one method with one seed in this process; what the driver reports of it."""
    from core.engine import train
    from core.events import EvalResult, ListSink, RunFinished, RunStarted, StepMetrics

    window, cpu = CpuWindow(), {}

    class Sink(ListSink):
        """Times other processes' CPU use over training: from the step-0 evaluation's end to the
        final evaluation's start."""

        def emit(self, event):
            if isinstance(event, EvalResult):
                if event.before_training:
                    window.start()
                elif not cpu:
                    cpu.update(window.stop())
            super().emit(event)

    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        cfg, notes = method_config(spec, tmp)
        sink = Sink()
        started = time.perf_counter()
        train(cfg, [sink])
        wall = time.perf_counter() - started
    evals = sink.of_type(EvalResult)
    before = next(e for e in evals if e.before_training)
    final = [e for e in evals if not e.before_training][-1]
    finished = sink.of_type(RunFinished)[-1]
    if finished.reason != "completed":
        raise RuntimeError(f"the run ended {finished.reason}")
    started_event = sink.of_type(RunStarted)[-1]
    return {"accuracy": final.metrics["accuracy"], "f1": final.metrics["f1"], "loss": final.metrics["loss"],
            "before_accuracy": before.metrics["accuracy"], "before_f1": before.metrics["f1"],
            "before_loss": before.metrics["loss"],
            "train_s": sink.of_type(StepMetrics)[-1].elapsed_s - before.seconds, "wall_s": wall,
            "steps": finished.step, "tokens_seen": sink.of_type(StepMetrics)[-1].tokens_seen,
            "trainable_params": started_event.trainable_params,
            "total_params": started_event.total_params, "train_rows": started_event.train_rows,
            "validation_rows": started_event.validation_rows, **notes, **cpu}


# ------------------------------------------------------------------------------------------ driver


def spawn(spec: dict, env: dict, idle_s: float) -> dict:
    """One run in a fresh process (clean timing and memory); its result line."""
    result = run_child([__file__, "--child", json.dumps(spec)], env, idle_s,
                       f"{spec['name']} with seed {spec['seed']}") | {"seed": spec["seed"]}
    print(f"  {spec['name']:9} seed {spec['seed']}: accuracy {result['before_accuracy']:.3f} -> {result['accuracy']:.3f}, "
          f"macro-F1 {result['before_f1']:.3f} -> {result['f1']:.3f}, {result['train_s']:.1f} s training "
          f"({result['tokens_seen'] / result['train_s']:,.0f} tok/s), "
          f"others used {result.get('foreign_cores', 0):.2f} cores", flush=True)
    return result


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("accuracy", "f1", "before_accuracy", "before_f1", "train_s"):
        mean, sd = mean_sd([r[key] for r in runs])
        out[key] = {"mean": mean, "sd": sd}
    return out


def print_table(results: dict) -> None:
    """The markdown table, ready for BENCHMARKS.md, and each method's settings under it."""
    def cell(s: dict, digits: int = 3) -> str:
        sd = "n/a" if math.isnan(s["sd"]) else f"{s['sd']:.{digits}f}"
        return f"{s['mean']:.{digits}f} ± {sd}"

    print("\n| method | accuracy mean ± sd | macro-F1 mean ± sd | before acc | before macro-F1 | train time s mean |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results["methods"].items():
        s = r["summary"]
        print(f"| {name} | {cell(s['accuracy'])} | {cell(s['f1'])} | {s['before_accuracy']['mean']:.3f} | "
              f"{s['before_f1']['mean']:.3f} | {s['train_s']['mean']:.1f} |")
    first = next(iter(results["methods"].values()))["runs"][0]
    print(f"\n{first['train_rows']} training / {first['validation_rows']} validation rows (the same for every run), "
          f"seeds {results['seeds']}, {results['epochs']} epochs of {first['total_steps']} steps in all; settings:")
    for name, r in results["methods"].items():
        derived = {k: v for k, v in r["runs"][0].items() if k in ("lr_scales", "head_and_pooler_lr", "unfreeze_every", "alpha_x_sum_lr")}
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in {**r["settings"], **derived}.items())
        print(f"- {name}: {shown}; trains {r['runs'][0]['trainable_params']:,} of {r['runs'][0]['total_params']:,} parameters")


def _fmt(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k.removeprefix('bert.')}: {v:g}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(METHODS)}, separated by commas")
    return names


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=C1["rows"], help="C1 rows before the 10%% validation split (default 3000)")
    p.add_argument("--seeds", type=int, default=3, help="runs of each method, with seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=float, default=C1["epochs"], help="epochs (default 3)")
    p.add_argument("--methods", type=parse_methods, default=list(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--wait-idle-s", type=float, default=0.0,
                   help="before each run wait up to this long for other CPU work to stop (0: don't)")
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seeds < 1 or args.epochs <= 0:
        p.error("--seeds must be at least 1 and --epochs above 0")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        quiet()
        out = run_one(json.loads(args.child))
        print(MARKER + json.dumps(out), flush=True)
        return out

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` also stops the child (see spawn)
    import torch
    import transformers

    from core.models import resolve_model_path

    quiet()
    train_path, validation_path = fixed_split(args.rows)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    seeds = list(range(args.seeds))
    results: dict = {"rows": args.rows, "epochs": args.epochs, "seeds": seeds, "c1": C1, "load_before": load,
                     "train_path": str(train_path), "validation_path": str(validation_path),
                     "methods": {name: {"settings": METHODS[name], "runs": []} for name in args.methods}}
    common = {"model_path": resolve_model_path("demo:minilm"), "train_path": str(train_path),
              "validation_path": str(validation_path), "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as scratch:
        env = dict(os.environ)
        env.setdefault("HF_HOME", str(Path(scratch) / "hf-home"))
        env["SFT_TUI_CACHE"] = str(Path(scratch) / "sft-tui-cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for seed in seeds:  # alternate the order, so drift on the machine hits every method alike
            for name in args.methods if seed % 2 == 0 else args.methods[::-1]:
                spec = common | {"name": name, "method": METHODS[name], "seed": seed}
                results["methods"][name]["runs"].append(spawn(spec, env, args.wait_idle_s))
    for r in results["methods"].values():
        r["runs"].sort(key=lambda run: run["seed"])
        r["summary"] = summarize(r["runs"])
    results["load_after"] = os.getloadavg()
    print_table(results)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in results['load_after'])}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
