"""Evaluation tokens/s against training tokens/s (issue 12: evaluation at least twice as fast).

    .venv/bin/python bench/eval_speed.py [--steps 12] [--repeats 1] [--cases minilm-sentiment,minilm-c1,smol-c2]

Each case trains through core.engine.train for --steps optimizer steps and evaluates once, after
the last step, on its validation rows. Training tokens/s is read from events.jsonl as
bench/lora_speed.py reads it (the tokens between the first and the last step report over the time
between them, so the first step's warm-up is left out); evaluation tokens/s is the EvalResult's
(validation tokens, padding not counted, over the evaluation's seconds). Each case runs twice: with
the default eval batch (core.evaluate.default_batch_size) and with the old default of twice the
micro-batch; the order alternates between repeats. Every run is shown: on a shared machine wall-clock
rates move several-fold between runs minutes apart (FACTS.md), so each run's ratio is taken within
the run, and also per CPU second (tokens over the process's CPU time in the optimizer steps after the
first, and in the evaluation), which neighbours inflate less.
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

CASES = {
    "minilm-sentiment": {"task": "classification", "model": "demo:minilm", "data": "demo:sentiment", "batch": 16,
                         "max_length": 128, "freeze": {"preset": "all"}},
    "minilm-c1": {"task": "classification", "model": "demo:minilm", "data": "c1", "batch": 32, "max_length": 64,
                  "freeze": {"preset": "all"}},
    "smol-c2": {"task": "causal-lm", "model": "smol", "data": "c2", "batch": 8, "max_length": 128,
                "freeze": {"preset": "top-n", "top_n": 2, "rules": [{"match": "lm_head", "train": False}]}},
}
"""The issue's cases: MiniLM full fine-tune on the demo data and on C1's docstrings (bench/_cases.py),
and C2: the SmolLM2-135M-shaped Llama, top-2 blocks, on chat rows."""


def paths(case: dict) -> tuple[str, str]:
    """(model, train data) of a case, built offline on first use (bench/_cases.py caches them)."""
    from bench import _cases

    if case["data"] == "c1":
        data = str(_cases.c1_data(1200))
    elif case["data"] == "c2":
        data = str(_cases.c2_data(300))
    else:
        data = case["data"]
    model = str(_cases.smol_model(Path(data))) if case["model"] == "smol" else case["model"]
    return model, data


def one_run(name: str, steps: int, eval_batch: int | None, folder: str) -> dict:
    """Train `steps` steps of case `name` and evaluate once; the two rates and the eval batch used."""
    import core.evaluate
    from core.config import parse_config
    from core.engine import _Training, train

    case = CASES[name]
    model, data = paths(case)
    config = parse_config({
        "task": case["task"], "seed": 0, "precision": "fp32",
        "model": {"name_or_path": model},
        "data": {"train": data, "max_length": case["max_length"], "val_ratio": 0.1},
        "freeze": case["freeze"],
        "optim": {"lr": 5e-5, "batch_size": case["batch"]},
        "schedule": {"max_steps": steps, "warmup_steps": 0},
        "eval": {"every_steps": steps, "num_samples": 0, "batch_size": eval_batch},
        "checkpoint": {"every_steps": 10**9},
        "output": {"runs_dir": folder, "run_name": "run", "save_final": False},
    })
    used, cpu, real, step = [], {"train": [], "eval": []}, core.evaluate.evaluate, _Training._optimizer_step

    def recording(*args, **kwargs):
        used.append(kwargs["batch_size"])
        started = time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            cpu["eval"].append(time.process_time() - started)

    def timed_step(self, step_rows):
        started = time.process_time()
        step(self, step_rows)
        cpu["train"].append((time.process_time() - started, sum(len(self.data.train[i].input_ids) for i in step_rows)))

    core.evaluate.evaluate, _Training._optimizer_step = recording, timed_step
    try:
        train(config, [], report_interval_s=0)
    finally:
        core.evaluate.evaluate, _Training._optimizer_step = real, step
    events = [json.loads(line) for line in (Path(folder) / "run" / "events.jsonl").open()]
    reports = [e for e in events if e["type"] == "step"]
    evaluation = next(e for e in events if e["type"] == "eval")
    first, last = reports[0], reports[-1]
    return {"train_tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "eval_tokens_per_s": evaluation["tokens_per_s"], "eval_s": evaluation["seconds"],
            "train_tokens_per_cpu_s": sum(t for _, t in cpu["train"][1:]) / sum(c for c, _ in cpu["train"][1:]),
            "eval_tokens_per_cpu_s": evaluation["tokens_per_s"] * evaluation["seconds"] / cpu["eval"][0],
            "eval_batch": used[0], "validation_rows": next(e for e in events if e["type"] == "run_started")[
                "validation_rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.logs import quiet_libraries

    quiet_libraries()
    results = []
    for repeat in range(args.repeats):
        for name in args.cases.split(","):
            sides = [("default", None), ("2x micro-batch", 2 * CASES[name]["batch"])]
            if CASES[name]["task"] == "causal-lm":  # its default is the old one: twice the micro-batch
                sides = sides[:1]
            for side, eval_batch in sides[:: 1 if repeat % 2 == 0 else -1]:
                with tempfile.TemporaryDirectory() as folder:
                    results.append({"case": name, "side": side, **one_run(name, args.steps, eval_batch, folder)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(f"{'case':17} {'eval batch':>17} {'val rows':>8} {'train tok/s':>11} {'eval tok/s':>10} {'ratio':>6}"
          f" {'ratio per CPU s':>15}")
    for r in sorted(results, key=lambda r: (r["case"], r["side"])):
        print(f"{r['case']:17} {r['side'] + ' ' + str(r['eval_batch']):>17} {r['validation_rows']:>8} "
              f"{r['train_tokens_per_s']:>11,.0f} {r['eval_tokens_per_s']:>10,.0f} "
              f"{r['eval_tokens_per_s'] / r['train_tokens_per_s']:>5.1f}x "
              f"{r['eval_tokens_per_cpu_s'] / r['train_tokens_per_cpu_s']:>14.1f}x")

if __name__ == "__main__":
    main()
