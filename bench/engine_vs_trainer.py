"""Benchmark: our engine (core.engine.train) against transformers.Trainer on the same fine-tune.

Both sides get the same model, the same tokenized examples (core.data.prepare_data with the same
RunConfig; a digest of the token ids is compared), the same seed and the same hyperparameters:
AdamW (lr, betas, eps, weight decay with none on biases and norms), a linear schedule with the
same integer warmup, batch size, max_steps, gradient clipping at 1.0, fp32, length-grouped
batches, evaluation only at the end and no checkpoints.

Each framework runs in its own subprocess (the script re-invokes itself with `--only engine` or
`--only trainer` and reads one JSON line back), so peak RSS (getrusage ru_maxrss) is not shared.

Measured, per framework:
- train_s: the training part only. Engine: `elapsed_s` of its last StepMetrics event (sent at the
  final step, before the final evaluation; the clock starts after model loading and tokenization).
  Trainer: wall time of `trainer.train()`.
- real tokens/s: non-padding tokens of the trained batches / train_s.
- padded tokens/s: batch rows x padded width, summed over the trained batches / train_s. For the
  engine this is recomputed from core.data.batch_plan (what the loop trains on); for Trainer the
  data collator counts it.
- peak RSS of the subprocess.
- eval loss: core.evaluate.evaluate (token-weighted mean over all validation tokens for causal LM,
  row mean for classification) on the same validation examples, for both models. Trainer's own
  `trainer.evaluate()` loss (a mean of per-batch means) is reported beside it for reference.

Usage (2 CPU cores: run one case per invocation to stay under a few minutes each):
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/engine_vs_trainer.py --case classification
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/engine_vs_trainer.py --case causal-lm
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "BENCH_RESULT "
BIG = 10**9  # "never" for eval.every_steps / checkpoint.every_steps

CASES = {
    "classification": dict(task="classification", model="demo:minilm", data="demo:sentiment", max_length=128,
                           batch_size=16, max_steps=40, lr=5e-5, weight_decay=0.01, warmup_ratio=0.1),
    "causal-lm": dict(task="causal-lm", model="tiny-llama", data="demo:instructions", max_length=96,
                      batch_size=16, max_steps=150, lr=3e-3, weight_decay=0.01, warmup_ratio=0.1),
}


# ------------------------------------------------------------------------------------ shared setup


def run_config(spec: dict, runs_dir: str):
    """The RunConfig both sides are built from (the Trainer side reads the same fields)."""
    from core.config import parse_config

    return parse_config({
        "task": spec["task"], "seed": spec["seed"], "precision": "fp32",
        "model": {"name_or_path": spec["model_path"]},
        "data": {"train": spec["data"], "max_length": spec["max_length"], "group_by_length": True, "val_ratio": 0.1},
        "optim": {"lr": spec["lr"], "weight_decay": spec["weight_decay"], "batch_size": spec["batch_size"],
                  "grad_accum": 1, "max_grad_norm": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        "schedule": {"scheduler": "linear", "warmup_steps": spec["warmup_steps"], "max_steps": spec["max_steps"]},
        "eval": {"every_steps": BIG, "metric": "loss", "num_samples": 0, "batch_size": 2 * spec["batch_size"]},
        "checkpoint": {"every_steps": BIG, "keep_last": 1},
        "output": {"runs_dir": runs_dir, "save_final": False, "run_name": f"bench-{spec['task']}"},
    })


def prepared(cfg):
    """Tokenizer and PreparedData exactly as the engine makes them."""
    from core.data import prepare_data
    from core.models import load_tokenizer, model_max_positions

    tokenizer = load_tokenizer(cfg.model)
    return tokenizer, prepare_data(cfg, tokenizer, model_max_positions(cfg.model))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class CpuWindow:
    """CPU seconds used by this process and by the whole machine over a window; what other
    processes used (`foreign_cores`, averaged over the window) tells whether the timing is clean."""

    def start(self) -> None:
        import psutil

        self.t0, self.sys0, self.own0 = time.perf_counter(), psutil.cpu_times(), self._own()

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def stop(self) -> dict:
        import psutil

        wall = time.perf_counter() - self.t0
        sys1 = psutil.cpu_times()
        busy = sum(getattr(sys1, f) - getattr(self.sys0, f) for f in ("user", "nice", "system", "irq", "softirq")
                   if hasattr(sys1, f))
        own = self._own() - self.own0
        return {"own_cores": own / wall, "foreign_cores": max(0.0, busy - own) / wall}


# ------------------------------------------------------------------------------------------ engine


def train_timed(cfg, **kwargs):
    """core.engine.train with a sink that keeps the events and times the CPU from RunStarted to the
    first evaluation (the end of training): (result, sink, the CPU window's figures)."""
    from core.engine import train
    from core.events import EvalResult, ListSink, RunStarted

    window, cpu = CpuWindow(), {}

    class Sink(ListSink):
        def emit(self, event):
            if isinstance(event, RunStarted):
                window.start()
            elif isinstance(event, EvalResult) and not cpu:
                cpu.update(window.stop())
            super().emit(event)

    sink = Sink()
    return train(cfg, [sink], **kwargs), sink, cpu


def engine_padded_tokens(cfg, data, steps: int) -> tuple[int, int]:
    """(real, padded) tokens of the batches the engine trains on in `steps` steps: the loop's own
    plan (core.data.batch_plan per epoch, one process, grad_accum 1), recomputed."""
    from core.data import batch_plan

    lengths = [len(ex.input_ids) for ex in data.train]
    plans: dict[int, list[list[int]]] = {}
    per_epoch = len(batch_plan(lengths, cfg.optim.batch_size, cfg.seed, 0, cfg.data.group_by_length))
    real = padded = 0
    for step in range(steps):
        epoch, index = divmod(step, per_epoch)
        if epoch not in plans:
            plans[epoch] = batch_plan(lengths, cfg.optim.batch_size, cfg.seed, epoch, cfg.data.group_by_length)
        batch = [lengths[i] for i in plans[epoch][index]]
        real += sum(batch)
        padded += len(batch) * max(batch)
    return real, padded


def run_engine(spec: dict) -> dict:
    from core.events import EvalResult, RunFinished, StepMetrics

    if spec.get("engine_adamw") == "fused":
        # Diagnostic only (core/ is not changed): the engine's torch.optim.AdamW(...) call gets fused=True.
        import torch

        class FusedAdamW(torch.optim.AdamW):
            def __init__(self, *args, **kwargs):
                kwargs.setdefault("fused", True)
                super().__init__(*args, **kwargs)

        torch.optim.AdamW = FusedAdamW
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        cfg = run_config(spec, tmp)
        _, data = prepared(cfg)  # for the digest and the padding count; the engine tokenizes again itself
        result, sink, cpu = train_timed(cfg, report_interval_s=spec["report_interval_s"])
        steps = sink.of_type(StepMetrics)
        last = steps[-1]
        finished = sink.of_type(RunFinished)[-1]
        evals = sink.of_type(EvalResult)
        real, padded = engine_padded_tokens(cfg, data, result.step)
        if real != last.tokens_seen:
            raise RuntimeError(f"recomputed real tokens {real} != engine tokens_seen {last.tokens_seen}")
        train_s = last.elapsed_s
        return {
            "framework": "engine", "steps": result.step, "train_s": train_s,
            "optimizer": "AdamW(fused=True, patched in by --engine-adamw fused)" if spec.get("engine_adamw") == "fused"
                         else "AdamW(fused=None, foreach=None)",
            "run_finished_elapsed_s": finished.elapsed_s,
            "real_tokens": real, "padded_tokens": padded,
            "real_tokens_per_s": real / train_s, "padded_tokens_per_s": padded / train_s,
            "eval_loss": evals[-1].metrics["loss"], "eval_metrics": evals[-1].metrics,
            "train_loss_last_window": last.loss, "reports": len(steps), **cpu,
            "digest": data.digest, "train_rows": len(data.train), "validation_rows": len(data.validation),
            "peak_rss_bytes": peak_rss_bytes(),
        }


# ----------------------------------------------------------------------------------------- Trainer


def run_trainer(spec: dict) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from core.data import Example, collate
    from core.evaluate import evaluate
    from core.models import load_model

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        cfg = run_config(spec, tmp)
        # Same order as the engine's setup: seed, tokenizer, data, model (so a new head is
        # initialised from the same RNG state).
        set_seed(cfg.seed)
        tokenizer, data = prepared(cfg)
        model = load_model(cfg.model, cfg.task, data.labels, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id)
        pad_id, task = tokenizer.pad_token_id, cfg.task

        class Rows(torch.utils.data.Dataset):
            """The prepared examples as dicts (LengthGroupedSampler reads len(item["input_ids"]))."""

            def __init__(self, examples):
                self.examples = examples

            def __len__(self):
                return len(self.examples)

            def __getitem__(self, i):
                ex = self.examples[i]
                return {"input_ids": ex.input_ids, "labels": ex.labels}

        def collator(features):
            return collate([Example(f["input_ids"], f["labels"]) for f in features], pad_id, task)

        counts = {"real": 0, "padded": 0, "batches": 0}

        class EnginePlan(torch.utils.data.Sampler):
            """The engine's batches, epoch after epoch."""

            def __init__(self, examples, cfg):
                from core.data import batch_plan

                self.lengths = [len(ex.input_ids) for ex in examples]
                seed = spec.get("trainer_seed") or cfg.seed
                self.plan = lambda epoch: batch_plan(self.lengths, cfg.optim.batch_size, seed, epoch,  # noqa: E731
                                                     cfg.data.group_by_length)
                self.epoch = 0

            def set_epoch(self, epoch):
                self.epoch = epoch

            def __len__(self):
                return len(self.plan(0))

            def __iter__(self):
                batches = self.plan(self.epoch)
                self.epoch += 1
                return iter(batches)

        class CountingTrainer(Trainer):
            """Counts the tokens of the batches actually trained on (the collator cannot: accelerate's
            data loader fetches one batch ahead)."""

            def training_step(self, model, inputs, num_items_in_batch=None):
                mask = inputs["attention_mask"]
                counts["real"] += int(mask.sum())
                counts["padded"] += mask.numel()
                counts["batches"] += 1
                return super().training_step(model, inputs, num_items_in_batch)

            def get_train_dataloader(self):
                if spec["trainer_order"] == "trainer":
                    return super().get_train_dataloader()
                # Diagnostic: train on the engine's exact batches (core.data.batch_plan per epoch).
                loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=EnginePlan(data.train, cfg),
                                                     collate_fn=self.data_collator, num_workers=0)
                return self.accelerator.prepare(loader)

        args = TrainingArguments(
            output_dir=tmp, seed=spec.get("trainer_seed") or cfg.seed,
            per_device_train_batch_size=cfg.optim.batch_size, per_device_eval_batch_size=2 * cfg.optim.batch_size,
            gradient_accumulation_steps=1, max_steps=cfg.schedule.max_steps,
            learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.beta1,
            adam_beta2=cfg.optim.beta2, adam_epsilon=cfg.optim.eps, max_grad_norm=cfg.optim.max_grad_norm,
            optim=spec["trainer_optim"],
            lr_scheduler_type="linear", warmup_steps=cfg.schedule.warmup_steps,
            train_sampling_strategy="group_by_length",  # transformers 5.24's spelling of group_by_length=True
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False, bf16=False, fp16=False,
        )
        trainer = CountingTrainer(model=model, args=args, train_dataset=Rows(data.train), data_collator=collator,
                          processing_class=tokenizer)
        window = CpuWindow()
        window.start()
        started = time.perf_counter()
        output = trainer.train()
        train_s = time.perf_counter() - started
        cpu = window.stop()
        if counts["batches"] != trainer.state.global_step:
            raise RuntimeError(f"collated {counts['batches']} batches for {trainer.state.global_step} steps")
        metrics = evaluate(trainer.model, data.validation, task=task, num_labels=len(data.labels or []),
                           batch_size=2 * cfg.optim.batch_size, pad_token_id=pad_id, accelerator=trainer.accelerator)
        trainer_eval = trainer.evaluate(eval_dataset=Rows(data.validation))
        optimizer = trainer.optimizer
        return {
            "framework": "trainer", "steps": trainer.state.global_step, "train_s": train_s,
            "trainer_train_runtime_s": output.metrics.get("train_runtime"),
            "real_tokens": counts["real"], "padded_tokens": counts["padded"],
            "real_tokens_per_s": counts["real"] / train_s, "padded_tokens_per_s": counts["padded"] / train_s,
            "eval_loss": metrics["loss"], "eval_metrics": metrics,
            "trainer_evaluate_loss": trainer_eval.get("eval_loss"), "training_loss_mean": output.training_loss,
            **cpu, "order": spec["trainer_order"],
            "optimizer": f"{type(getattr(optimizer, 'optimizer', optimizer)).__name__}(fused={optimizer.defaults.get('fused')}, "
                         f"foreach={optimizer.defaults.get('foreach')})",
            "digest": data.digest, "train_rows": len(data.train), "validation_rows": len(data.validation),
            "peak_rss_bytes": peak_rss_bytes(),
        }


# ------------------------------------------------------------------------------------------ driver


def quiet() -> None:
    """Keep transformers' bars and load reports off the terminal."""
    from core.logs import quiet_libraries

    quiet_libraries()


def child(only: str, spec: dict) -> None:
    quiet()
    out = run_engine(spec) if only == "engine" else run_trainer(spec)
    print(MARKER + json.dumps(out), flush=True)


def wait_idle(limit_s: float, threshold: float = 15.0) -> float:
    """Wait (up to limit_s) until the machine's CPU use stays under `threshold` % for 3 s; the
    seconds waited. Other work on these 2 cores would be timed as ours."""
    import psutil

    started = time.perf_counter()
    quiet = 0
    while time.perf_counter() - started < limit_s and quiet < 3:
        quiet = quiet + 1 if psutil.cpu_percent(interval=1.0) < threshold else 0
    return time.perf_counter() - started


def run_child(args: list[str], env: dict, idle_s: float, what: str) -> dict:
    """`python ARGS` in a fresh process (clean timing and memory), after waiting up to `idle_s` for
    a quiet machine; the child's last MARKER line as a dict, with `process_wall_s` and
    `waited_for_idle_s`. A child that fails ends the bench with its output, naming `what` it ran;
    an interrupted bench does not leave it training."""
    waited = wait_idle(idle_s) if idle_s else 0.0
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(stdout[-4000:] + stderr[-8000:])
        raise SystemExit(f"{what} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(MARKER):]) | {"process_wall_s": time.perf_counter() - started,
                                                  "waited_for_idle_s": waited}


def spawn(only: str, spec: dict, env: dict, idle_s: float) -> dict:
    result = run_child([__file__, "--only", only, "--spec", json.dumps(spec)], env, idle_s, f"{only} subprocess")
    if result.get("foreign_cores", 0) > 0.1:
        print(f"WARNING: other processes used {result['foreign_cores']:.2f} cores while {only} trained; "
              "its timing is not clean", flush=True)
    return result


def build_tiny_llama(folder: Path) -> str:
    """The causal-LM model: a tiny Llama (hidden 128, 4 layers, vocab 1024), as demo:tiny-lm builds it."""
    from core.data import DEMO_DATASETS
    from core.tiny import build_tiny_model

    quiet()
    rows = [json.loads(line) for line in DEMO_DATASETS["demo:instructions"].read_text().splitlines() if line.strip()]
    texts = [value for row in rows for value in row.values() if isinstance(value, str)]
    return str(build_tiny_model("llama", folder, texts, hidden=128, layers=4, vocab_size=1024))


def run_case(name: str, args, scratch: Path, env: dict) -> dict:
    spec = dict(CASES[name])
    if args.max_steps:
        spec["max_steps"] = args.max_steps
    elif name == "classification" and args.cls_steps:
        spec["max_steps"] = args.cls_steps
    elif name == "causal-lm" and args.lm_steps:
        spec["max_steps"] = args.lm_steps
    if args.batch_size:
        spec["batch_size"] = args.batch_size
    spec["warmup_steps"] = round(spec.pop("warmup_ratio") * spec["max_steps"])  # the same integer on both sides
    spec["seed"] = args.seed
    spec["trainer_optim"] = args.trainer_optim
    spec["report_interval_s"] = args.report_interval_s
    spec["trainer_order"] = args.trainer_order
    spec["trainer_seed"] = args.trainer_seed
    spec["engine_adamw"] = args.engine_adamw
    if spec["model"] == "tiny-llama":
        spec["model_path"] = build_tiny_llama(scratch / "tiny-llama")
    else:
        from core.models import resolve_model_path

        spec["model_path"] = resolve_model_path(spec["model"])
    print(f"\n== {name}: {spec['model']} on {spec['data']}, batch {spec['batch_size']}, {spec['max_steps']} steps, "
          f"lr {spec['lr']}, wd {spec['weight_decay']}, warmup {spec['warmup_steps']}, seed {spec['seed']}", flush=True)
    order = ["trainer", "engine"] if args.trainer_first else ["engine", "trainer"]
    runs: dict[str, list[dict]] = {"engine": [], "trainer": []}
    for _ in range(args.repeats):  # alternate, so slow drift on the machine hits both sides alike
        for only in order:
            runs[only].append(spawn(only, spec, env, args.wait_idle_s))
    for only, results in runs.items():
        losses = {round(r["eval_loss"], 6) for r in results}
        if len(losses) > 1:
            print(f"NOTE: {only}'s eval loss varied across repeats: {sorted(losses)}")
    # The fastest repeat of each side: timing noise on a shared machine only ever adds time.
    eng, trn = (min(runs[only], key=lambda r: r["train_s"]) for only in ("engine", "trainer"))
    for side, only in ((eng, "engine"), (trn, "trainer")):
        side["train_s_all"] = [round(r["train_s"], 3) for r in runs[only]]
        side["foreign_cores_all"] = [round(r.get("foreign_cores", 0.0), 3) for r in runs[only]]
    if eng["digest"] != trn["digest"]:
        raise SystemExit(f"the two sides tokenized different data: {eng['digest']} vs {trn['digest']}")
    summary = {
        "case": name, "spec": spec, "engine": eng, "trainer": trn,
        "ratio_real_tokens_per_s": eng["real_tokens_per_s"] / trn["real_tokens_per_s"],
        "ratio_padded_tokens_per_s": eng["padded_tokens_per_s"] / trn["padded_tokens_per_s"],
        "ratio_train_s": eng["train_s"] / trn["train_s"],
        "eval_loss_rel_diff": abs(eng["eval_loss"] - trn["eval_loss"]) / abs(trn["eval_loss"]),
    }
    summary["same_real_tokens"] = eng["real_tokens"] == trn["real_tokens"]
    summary["speed_ok"] = summary["ratio_padded_tokens_per_s"] >= 1.0 - args.speed_tolerance
    summary["loss_ok"] = summary["eval_loss_rel_diff"] <= 0.02
    print_case(summary, args.speed_tolerance)
    return summary


def print_case(s: dict, tolerance: float) -> None:
    eng, trn = s["engine"], s["trainer"]
    mb = lambda b: f"{b / 2**20:,.0f} MB"  # noqa: E731
    rows = [
        ("steps", eng["steps"], trn["steps"]),
        ("train time (s)", f"{eng['train_s']:.1f}", f"{trn['train_s']:.1f}"),
        ("real tokens", f"{eng['real_tokens']:,}", f"{trn['real_tokens']:,}"),
        ("padded tokens", f"{eng['padded_tokens']:,}", f"{trn['padded_tokens']:,}"),
        ("real tokens/s", f"{eng['real_tokens_per_s']:,.0f}", f"{trn['real_tokens_per_s']:,.0f}"),
        ("padded tokens/s", f"{eng['padded_tokens_per_s']:,.0f}", f"{trn['padded_tokens_per_s']:,.0f}"),
        ("peak RSS", mb(eng["peak_rss_bytes"]), mb(trn["peak_rss_bytes"])),
        ("eval loss (core.evaluate)", f"{eng['eval_loss']:.4f}", f"{trn['eval_loss']:.4f}"),
        ("trainer.evaluate() loss", "-", f"{trn['trainer_evaluate_loss']:.4f}"),
        ("process wall (s)", f"{eng['process_wall_s']:.1f}", f"{trn['process_wall_s']:.1f}"),
        ("cores used / by others", f"{eng['own_cores']:.2f} / {eng['foreign_cores']:.2f}",
         f"{trn['own_cores']:.2f} / {trn['foreign_cores']:.2f}"),
    ]
    if "accuracy" in eng["eval_metrics"]:
        rows.insert(8, ("eval accuracy", f"{eng['eval_metrics']['accuracy']:.3f}",
                        f"{trn['eval_metrics']['accuracy']:.3f}"))
    print(f"{'':28}{'engine':>16}{'Trainer':>16}")
    for label, a, b in rows:
        print(f"{label:28}{a!s:>16}{b!s:>16}")
    print(f"engine optimizer: {eng['optimizer']}; Trainer optimizer: {trn['optimizer']}; "
          f"Trainer batch order: {trn['order']}")
    if len(eng["train_s_all"]) > 1:
        print(f"train time of every repeat (s): engine {eng['train_s_all']}, Trainer {trn['train_s_all']} "
              "(the table shows the fastest)")
    print(f"engine/Trainer: real tokens/s x{s['ratio_real_tokens_per_s']:.3f}, "
          f"padded tokens/s x{s['ratio_padded_tokens_per_s']:.3f}, train time x{s['ratio_train_s']:.3f}; "
          f"eval-loss relative difference {s['eval_loss_rel_diff']:.2%}")
    print(f"target: not slower than Trainer on equal work (padded tokens/s, {tolerance:.0%} noise allowed): "
          f"{'PASS' if s['speed_ok'] else 'FAIL'}; eval loss within 2%: {'PASS' if s['loss_ok'] else 'FAIL'}",
          flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=["classification", "causal-lm", "both"], default="both")
    p.add_argument("--max-steps", type=int, default=None, help="steps for every case (default: per case)")
    p.add_argument("--cls-steps", type=int, default=None, help="classification steps (default 40)")
    p.add_argument("--lm-steps", type=int, default=None, help="causal-lm steps (default 150)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size for every case (default 16)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--trainer-optim", default="adamw_torch_fused",
                   help="Trainer's optim (its default on torch >= 2.8 is adamw_torch_fused; the engine uses "
                        "torch.optim.AdamW with its defaults)")
    p.add_argument("--report-interval-s", type=float, default=0.25, help="engine report interval (the app's default)")
    p.add_argument("--trainer-order", choices=["trainer", "engine"], default="trainer",
                   help="trainer: Trainer's own length-grouped sampler; engine: a diagnostic that feeds Trainer "
                        "the engine's exact batches, separating loop arithmetic from batch order")
    p.add_argument("--trainer-seed", type=int, default=None,
                   help="diagnostic: Trainer's seed, which orders its batches (with --trainer-order engine: the seed of the "
                        "engine's batch plan it follows), without changing the data split")
    p.add_argument("--wait-idle-s", type=float, default=30.0,
                   help="before each subprocess wait up to this long for other CPU work to stop (0: don't)")
    p.add_argument("--engine-adamw", choices=["default", "fused"], default="default",
                   help="diagnostic: fused: the engine's torch.optim.AdamW gets fused=True (patched in this "
                        "benchmark's subprocess only), to measure what the optimizer implementation costs")
    p.add_argument("--speed-tolerance", type=float, default=0.03,
                   help="run-to-run timing noise allowed before the speed verdict says FAIL")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each side this many times (alternating) and report the fastest run")
    p.add_argument("--trainer-first", action="store_true", help="run the Trainer subprocess before the engine's")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--only", choices=["engine", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.only:
        child(args.only, json.loads(args.spec))
        return {}

    import platform
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` also stops the child (see spawn)
    import torch
    import transformers

    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                 "transformers": transformers.__version__, "python": platform.python_version(),
                                 "torch_threads": torch.get_num_threads()}}
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-evt-") as scratch:
        env = dict(os.environ)
        env.setdefault("HF_HOME", str(Path(scratch) / "hf-home"))
        env["SFT_TUI_CACHE"] = str(Path(scratch) / "sft-tui-cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cases = ["classification", "causal-lm"] if args.case == "both" else [args.case]
        for name in cases:
            results[name] = run_case(name, args, Path(scratch), env)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
