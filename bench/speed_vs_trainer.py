"""Benchmark (issue 12): the engine against transformers.Trainer on work that stands for our users'.

Cases (data and models from bench/_cases.py, built offline and cached in a temp folder):
- c1-full: all-MiniLM-L6-v2 (demo:minilm), full fine-tune, on first sentences of installed packages'
  docstrings labelled by package (16 labels); 3 epochs, batch 32, max_length 64, lr 5e-5; evaluated
  on 1,600 held-out rows (100 a label), enough to resolve accuracy to about a point.
  Trainer sides: its defaults (random sampler), and with train_sampling_strategy="group_by_length";
  on request its defaults with another batch order (data_seed = seed + 1, the same initial weights):
  how far Trainer is from itself when only the order of its batches changes, the yardstick for
  how close the engine's eval loss and accuracy can be expected to come.
  Engine sides: its defaults (random batches for this classifier, as Trainer's default), and in
  length-grouped batches (data.group_by_length=true) as the second Trainer side.
- c1-top2: the same with freeze preset top-n (n=2: the top 2 blocks, the pooler and the head), lr 1e-4.
- c2: a Llama of SmolLM2-135M's shape (random weights, 49,152-wide tied logits), the top 2 blocks and
  the final norm trained (the tied lm_head, hence the embedding, frozen), on chat rows whose answers
  are about a fifth of the tokens; 3 epochs, batch 8, max_length 128, lr 3e-4. Trainer side: its
  defaults with DataCollatorForSeq2Seq (labels -100 off the answers, as the engine masks them).

Both sides get the same tokenized rows (core.data.prepare_data on one RunConfig; a digest is
compared), the same model with the same freeze map (core.setup.setup_model), seed, AdamW
hyperparameters, linear schedule and integer warmup (10% of the steps). Each side trains in its own
subprocess (peak RSS is its own); sides alternate order across repeats and the fastest repeat of
each is reported. The engine runs with its defaults plus any `--engine-set section.key=value`
(applied with core.config.apply_overrides to the engine sides only), to measure engine options; the
"engine-grouped" and "engine-random" sides add data.group_by_length=true or false, so that a side
can be compared with the Trainer side that orders its batches the same way.

Reported per side:
- real tokens/s: non-padding tokens trained / training seconds (engine: elapsed_s of the final
  step's report, before the final evaluation; Trainer: wall time of trainer.train()); each engine
  side's ratio against each Trainer side.
- eval loss and (C1) accuracy: core.evaluate.evaluate on the same validation rows, both sides.
- peak RSS of the side's process (getrusage).
- useful MFU: useful FLOPs / training seconds / the fp32 matmul peak this script measures first
  (2048x2048 products, torch's default threads, best over 2 s). Useful FLOPs (bench._cases.flop_rates)
  = sum over nn.Linear layers of m x weight elements x positions, with m = 6 for a trained layer,
  4 for a frozen layer above a trained one (the gradient passes through), 2 for a frozen layer with
  no trained layer below (forward only); positions = real tokens for the transformer blocks, labelled
  positions for a causal LM's head, rows for a classifier and its pooler. Padding, attention scores,
  embedding look-ups, norms and the optimizer are not counted.

Usage (2 CPU cores; develop with tiny settings):
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/speed_vs_trainer.py --case c1-full
    ... --case c2 --rows 64 --epochs 1 --engine-set compute.gradient_checkpointing=false
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_vs_trainer import (
    MARKER,
    CpuWindow,
    peak_rss_bytes,
    prepared,
    quiet,
    run_child,
    train_timed,
)

BIG = 10**9  # "never" for eval.every_steps / checkpoint.every_steps
C1 = {"task": "classification", "data": "c1", "model": "demo:minilm", "rows": 3000, "eval_rows": 1600, "epochs": 3,
      "batch_size": 32, "max_length": 64, "engines": ["engine", "engine-grouped"]}
CASES = {
    "c1-full": {**C1, "lr": 5e-5, "freeze": {"preset": "all"}, "trainers": ["trainer", "trainer-grouped"]},
    "c1-top2": {**C1, "lr": 1e-4, "freeze": {"preset": "top-n", "top_n": 2}, "trainers": ["trainer"]},
    "c2": {"task": "causal-lm", "data": "c2", "model": "smol", "rows": 300, "epochs": 3, "batch_size": 8,
           "max_length": 128, "lr": 3e-4, "engines": ["engine"], "trainers": ["trainer"],
           "freeze": {"preset": "top-n", "top_n": 2, "rules": [{"match": "lm_head", "train": False}]}},
}
"""Per case: training rows (C1; C2: rows before its 10% validation split), C1's held-out validation
rows, and the engine and Trainer sides it runs."""
ENGINE_SIDES = {"engine": [], "engine-grouped": ["data.group_by_length=true"],
                "engine-random": ["data.group_by_length=false"]}
"""Each engine side's overrides on top of --engine-set."""


def run_config(spec: dict, runs_dir: str):
    """The RunConfig both sides are built from (the Trainer side reads the same fields)."""
    from core.config import parse_config

    return parse_config({
        "task": spec["task"], "seed": spec["seed"], "precision": "fp32",
        "model": {"name_or_path": spec["model_path"]},
        "data": {"train": spec["data_path"], "validation": spec.get("validation_path"),
                 "max_length": spec["max_length"], "val_ratio": 0.1},
        "freeze": spec["freeze"],
        "optim": {"lr": spec["lr"], "weight_decay": 0.01, "batch_size": spec["batch_size"], "grad_accum": 1,
                  "max_grad_norm": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        "schedule": {"scheduler": "linear", "warmup_ratio": 0.1, "epochs": spec["epochs"]},
        "eval": {"every_steps": BIG, "metric": "loss", "num_samples": 0, "batch_size": 64},
        "checkpoint": {"every_steps": BIG, "keep_last": 1},
        "output": {"runs_dir": runs_dir, "save_final": False, "run_name": f"bench-{spec['case']}"},
    })


def side_result(train_s: float, real: int, labels: int, rows: int, metrics: dict, data, **extra) -> dict:
    return {"train_s": train_s, "real_tokens": real, "labelled_tokens": labels, "rows_trained": rows,
            "real_tokens_per_s": real / train_s, "eval_loss": metrics["loss"], "accuracy": metrics.get("accuracy"),
            "digest": data.digest, "train_rows": len(data.train), "validation_rows": len(data.validation),
            "peak_rss_bytes": peak_rss_bytes(), **extra}


def run_engine(spec: dict) -> dict:
    from core.config import apply_overrides
    from core.events import EvalResult, LogMessage, StepMetrics
    from core.loss import count_items

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        cfg = apply_overrides(run_config(spec, tmp), [*spec["engine_set"], *ENGINE_SIDES[spec["side"]]])
        _, data = prepared(cfg)  # for the digest and the counts; the engine tokenizes again itself
        result, sink, cpu = train_timed(cfg)
        for said in sink.of_type(LogMessage):  # which speed-ups the run had (core.prefix_cache says)
            if said.message.startswith("prefix cache"):
                print(f"  engine: {said.message}", file=sys.stderr, flush=True)
        last = sink.of_type(StepMetrics)[-1]
        per_epoch = -(-len(data.train) // cfg.optim.batch_size)
        if result.step % per_epoch:
            raise RuntimeError(f"the engine stopped mid-epoch (step {result.step}, {per_epoch} per epoch)")
        full_epochs = result.step // per_epoch
        labels = full_epochs * count_items(data.train, cfg.task) if cfg.task == "causal-lm" else 0
        return side_result(last.elapsed_s, last.tokens_seen, labels, full_epochs * len(data.train),
                           sink.of_type(EvalResult)[-1].metrics, data, steps=result.step, **cpu)


def run_trainer(spec: dict) -> dict:
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from bench._cases import flop_rates
    from core.describe import describe_model
    from core.evaluate import evaluate
    from core.plan import plan_steps
    from core.setup import setup_model

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        cfg = run_config(spec, tmp)
        set_seed(cfg.seed)  # the engine's setup order: seed, tokenizer, data, model (the new head's init)
        tokenizer, data = prepared(cfg)
        model, _, freeze = setup_model(cfg, tokenizer, data)
        lm = cfg.task == "causal-lm"
        rates = flop_rates(model, describe_model(model).blocks, cfg.task)
        rows = [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in data.train]
        collator = (DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100) if lm
                    else DataCollatorWithPadding(tokenizer))
        counts = {"real": 0, "labels": 0, "rows": 0}

        class CountingTrainer(Trainer):
            """Counts what each step trains on (the collator cannot: the loader fetches ahead)."""

            def training_step(self, model, inputs, num_items_in_batch=None):
                counts["real"] += int(inputs["attention_mask"].sum())
                counts["rows"] += len(inputs["input_ids"])
                if lm:
                    counts["labels"] += int((inputs["labels"][:, 1:] != -100).sum())
                return super().training_step(model, inputs, num_items_in_batch)

        args = TrainingArguments(
            output_dir=tmp, seed=cfg.seed, num_train_epochs=cfg.schedule.epochs,
            per_device_train_batch_size=cfg.optim.batch_size, learning_rate=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay, warmup_steps=plan_steps(cfg, len(data.train)).warmup_steps,
            lr_scheduler_type="linear", max_grad_norm=cfg.optim.max_grad_norm,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            remove_unused_columns=False,
            **({"train_sampling_strategy": "group_by_length"} if spec["side"] == "trainer-grouped" else {}),
            **({"data_seed": cfg.seed + 1} if spec["side"] == "trainer-reordered" else {}),
        )
        trainer = CountingTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                                  processing_class=tokenizer)
        window = CpuWindow()
        window.start()
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        cpu = window.stop()
        metrics = evaluate(trainer.model, data.validation, task=cfg.task, num_labels=len(data.labels or []),
                           batch_size=cfg.eval.batch_size, pad_token_id=tokenizer.pad_token_id,
                           accelerator=trainer.accelerator)
        return side_result(train_s, counts["real"], counts["labels"], counts["rows"], metrics, data,
                           steps=trainer.state.global_step, flop_rates=rates, trainable_params=freeze.trainable_params,
                           total_params=freeze.total_params, optimizer=f"{type(trainer.optimizer.optimizer).__name__}"
                           f"(fused={trainer.optimizer.defaults.get('fused')})",
                           **cpu)


# ------------------------------------------------------------------------------------------ driver

SIDES = {"engine": "engine", "engine-grouped": "engine group_by_length", "engine-random": "engine random batches",
         "trainer": "Trainer default",
         "trainer-grouped": "Trainer group_by_length", "trainer-reordered": "Trainer default, another batch order"}


def spawn(spec: dict, env: dict, idle_s: float) -> dict:
    """One side in a fresh process; its result line. Waits first (up to idle_s) for a quiet machine."""
    result = run_child([__file__, "--child", json.dumps(spec)], env, idle_s,
                       f"{spec['side']} subprocess of {spec['case']}")
    print(f"  {spec['side']}: {result['train_s']:.1f} s, {result['real_tokens_per_s']:,.0f} real tok/s, "
          f"others used {result.get('foreign_cores', 0):.2f} cores", flush=True)
    return result


def engine_case_arguments(p, case: str) -> None:
    """The options of a bench that trains one case's engine side alone (bench/engine_ab.py,
    bench/profile_engine.py), named as prepare_case reads them; one epoch unless told."""
    p.add_argument("--case", choices=list(CASES), default=case)
    p.add_argument("--rows", type=int, default=None,
                   help="training rows (C2: rows before its 10%% validation split; default: per case)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)


def prepare_case(name: str, args) -> dict:
    """The case's spec with its data file and model folder built (cached across invocations)."""
    from bench import _cases

    spec = {k: v for k, v in CASES[name].items() if k not in ("engines", "trainers")}
    spec.update(case=name, seed=args.seed, engine_set=args.engine_set,
                rows=args.rows or spec["rows"], epochs=args.epochs or spec["epochs"])
    if spec["data"] == "c1":
        spec["data_path"] = str(_cases.c1_data(spec["rows"], args.seed))
        spec["validation_path"] = str(_cases.c1_held_out(spec["rows"], spec["eval_rows"], args.seed))
    else:
        spec["data_path"] = str(_cases.c2_data(spec["rows"], args.seed))
    if spec["model"] == "smol":
        spec["model_path"] = str(_cases.smol_model(Path(spec["data_path"])))
    else:
        from core.models import resolve_model_path

        spec["model_path"] = resolve_model_path(spec["model"])
    from core.config import apply_overrides
    from core.errors import UserError

    try:  # a wrong --engine-set fails here, before any side trains
        apply_overrides(run_config(spec, "runs"), spec["engine_set"])
    except UserError as err:
        raise SystemExit(f"--engine-set: {err.message} ({err.hint})") from None
    return spec


def run_case(name: str, args, env: dict, peak: float) -> dict:
    spec = prepare_case(name, args)
    sides = [*(args.engines or CASES[name]["engines"]), *(args.trainers or CASES[name]["trainers"])]
    print(f"\n== {name}: {spec['model']}, {spec['rows']} rows, {spec['epochs']} epochs, batch {spec['batch_size']}, "
          f"max_length {spec['max_length']}, lr {spec['lr']}, freeze {spec['freeze']}, engine --set {spec['engine_set']}",
          flush=True)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):  # alternate the order, so drift on the machine hits every side alike
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            runs[side].append(spawn(spec | {"side": side}, env, args.wait_idle_s))
    best = {side: min(results, key=lambda r: r["train_s"]) for side, results in runs.items()}
    if len({r["digest"] for r in best.values()}) > 1:
        raise SystemExit(f"the sides tokenized different data: { {s: r['digest'] for s, r in best.items()} }")
    rates = next(r["flop_rates"] for r in best.values() if "flop_rates" in r)
    for side, r in best.items():
        flops = (rates["per_token"] * r["real_tokens"] + rates["per_label"] * r["labelled_tokens"]
                 + rates["per_row"] * r["rows_trained"])
        r.update(useful_flops=flops, mfu=flops / r["train_s"] / peak, train_s_all=[x["train_s"] for x in runs[side]])
    summary = {"case": name, "spec": spec, "sides": best, "matmul_peak_flops": peak}
    print_case(summary)
    return summary


def print_case(s: dict) -> None:
    """The case as a markdown table, one column per side, ready for BENCHMARKS.md."""
    sides = s["sides"]
    engines = [k for k in sides if k in ENGINE_SIDES]
    first, eng = next(iter(sides.values())), sides[engines[0]]
    trn = sides[next(k for k in sides if k not in ENGINE_SIDES)]
    lm = s["spec"]["task"] == "causal-lm"
    rows = [
        ("train time (s), fastest", lambda r: f"{r['train_s']:.1f}"),
        ("real tokens trained", lambda r: f"{r['real_tokens']:,}"),
        ("real tokens/s", lambda r: f"{r['real_tokens_per_s']:,.0f}"),
        *((f"{SIDES[e]} / this side", lambda r, e=e: f"x{sides[e]['real_tokens_per_s'] / r['real_tokens_per_s']:.2f}")
          for e in engines),
        ("eval loss", lambda r: f"{r['eval_loss']:.4f}"),
        *([] if lm else [("eval accuracy", lambda r: f"{r['accuracy']:.3f}")]),
        ("peak RSS (MB)", lambda r: f"{r['peak_rss_bytes'] / 2**20:,.0f}"),
        ("useful MFU", lambda r: f"{r['mfu']:.1%}"),
        ("cores used by others", lambda r: f"{r.get('foreign_cores', 0):.2f}"),
        ("train time of each repeat (s)", lambda r: ", ".join(f"{t:.1f}" for t in r["train_s_all"])),
    ]
    print(f"\n| {s['case']} | " + " | ".join(SIDES[k] for k in sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(r) for r in sides.values()) + " |")
    share = (f"; trained (labelled) tokens {first['labelled_tokens'] / first['real_tokens']:.1%} of real tokens"
             if lm else "")
    print(f"\n{first['train_rows']} train / {first['validation_rows']} validation rows; trainable "
          f"{trn['trainable_params']:,} of {trn['total_params']:,} parameters{share}; useful FLOPs "
          f"{eng['useful_flops']:.3e} ({engines[0]}) / {trn['useful_flops']:.3e} (Trainer); matmul peak "
          f"{s['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; Trainer optimizer {trn['optimizer']}", flush=True)
    if eng["real_tokens"] != trn["real_tokens"] or eng["labelled_tokens"] != trn["labelled_tokens"]:
        print("NOTE: the sides trained different token counts", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=[*CASES, "all"], default="c1-full")
    p.add_argument("--rows", type=int, default=None,
                   help="training rows (C2: rows before its 10%% validation split; default: per case)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating order; the fastest is shown")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--engine-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a RunConfig override for the engine side only (repeatable), e.g. compute.prefix_cache=true")
    p.add_argument("--engines", nargs="+", choices=list(ENGINE_SIDES), default=None,
                   help="the engine sides to run (default: the case's)")
    p.add_argument("--trainers", nargs="+", choices=["trainer", "trainer-grouped", "trainer-reordered"], default=None,
                   help="the Trainer sides to run (default: the case's)")
    p.add_argument("--wait-idle-s", type=float, default=0.0,
                   help="before each side wait up to this long for other CPU work to stop (0: don't)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        quiet()
        spec = json.loads(args.child)
        out = run_engine(spec) if spec["side"] in ENGINE_SIDES else run_trainer(spec)
        print(MARKER + json.dumps(out), flush=True)
        return out

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` also stops the child (see spawn)
    import torch
    import transformers

    from bench._cases import matmul_peak

    quiet()
    peak = matmul_peak()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results: dict = {"matmul_peak_flops": peak, "load_before": load}
    with tempfile.TemporaryDirectory(prefix="bench-svt-") as scratch:
        env = dict(os.environ)
        env.setdefault("HF_HOME", str(Path(scratch) / "hf-home"))
        env["SFT_TUI_CACHE"] = str(Path(scratch) / "sft-tui-cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for name in CASES if args.case == "all" else [args.case]:
            results[name] = run_case(name, args, env, peak)
    results["load_after"] = os.getloadavg()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in results['load_after'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
