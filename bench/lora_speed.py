"""LoRA against full fine-tuning of the same model: training tokens/s and the process's peak RSS
over its baseline, on the bundled tiny causal LM and on the pretrained MiniLM.

    .venv/bin/python bench/lora_speed.py [--repeats 3] [--steps-lm 300] [--steps-cls 30]
    .venv/bin/python bench/lora_speed.py --long [--repeats 3] [--steps-lm 60]

`--long`: the causal LM alone, on prompt/completion rows of installed packages' docstrings (a
docstring's body, then its summary line) at max_length 256, about 4,000 tokens a step where the
demo's rows give about 150: a step's time is then its arithmetic more than the count of its
operations, which LoRA multiplies.

Each run trains through core.engine.train in a fresh process (`--child` below), so its peak RSS is its own. The
baseline is the RSS once torch, transformers and peft are imported, before the model loads; the
peak is ru_maxrss at the end. Tokens/s is read from events.jsonl as bench/app_vs_headless.py reads
it: the tokens between the first and the last step report over the time between them, so the
first window's warm-up is left out. Full and LoRA alternate, and which goes first alternates; the
table shows the best of each (FACTS.md: a machine's speed drifts by up to 30% between sittings).
LoRA is r=16 on every linear layer of the blocks (attention and MLP), with the default dropout 0.05
and with none; evaluation and saving off. A second table gives CPU seconds per step on one thread
(cpu_cost), which other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"tiny causal LM (demo:tiny-lm)": "causal-lm", "MiniLM-L6 classification (demo:minilm)": "classification"}


METHODS = {"full": None, "LoRA r=16 all-linear": 0.05, "LoRA r=16 all-linear, dropout 0": 0.0}
"""Each method's lora.dropout (None: LoRA off). 0.05 is the config's default."""


def long_rows() -> list[str]:
    """Overrides that train on longer rows (--long): a JSONL of docstrings, built once."""
    from _cases import _cached, docstrings

    def build():
        pairs = [(summary, body) for summary, body in docstrings("transformers") if len(body) > 400]
        return [{"prompt": f"{body[:1200]}\nSummary:", "completion": f" {summary}"} for summary, body in pairs[:2000]]

    return [f"data.train={_cached('lora-long-rows.jsonl', build)}", "data.max_length=256"]


def child(task: str, dropout: float | None, steps: int, folder: str, extra: list[str]) -> None:
    """One run in this process; prints {"tokens_per_s", "peak_mb"} as the last line."""
    import peft  # noqa: F401 - in the baseline for both kinds of run
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from core.config import apply_overrides, example_config
    from core.engine import train

    baseline_mb = _rss_mb()
    config = apply_overrides(example_config(task), [
        f"schedule.max_steps={steps}", "eval.every_steps=1000000", "eval.num_samples=0",
        "checkpoint.every_steps=1000000", "output.save_final=false", f"output.runs_dir={folder}",
        "output.run_name=run", f"lora.enabled={str(dropout is not None).lower()}", "lora.r=16",
        "lora.targets=all-linear", f"lora.dropout={dropout or 0.0}", "data.val_ratio=0.01", *extra,
    ])
    train(config, report_interval_s=0.5)
    events = [json.loads(line) for line in (Path(folder) / config.output.run_name / "events.jsonl").open()]
    steps_seen = [e for e in events if e["type"] == "step"]
    started = next(e for e in events if e["type"] == "run_started")
    first, last = steps_seen[0], steps_seen[-1]
    rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_s": rate, "peak_mb": peak_mb - baseline_mb,
                      "trainable": started["trainable_params"], "total": started["total_params"]}))


def cpu_cost(task: str, steps: int, repeats: int) -> dict[str, float]:
    """CPU seconds per optimizer step on one thread, full against LoRA (dropout 0.05 and 0), in this
    process: on a machine shared with other work the wall clock says more about the neighbours than
    about the method, and one thread's CPU time does not count their time. Best of `repeats`."""
    import copy

    import torch

    from core.config import apply_overrides, example_config
    from core.describe import describe_model
    from core.lora import apply_lora
    from core.models import load_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = example_config(task)
    base = load_model(config.model, task, ["neg", "pos"], dtype=torch.float32)
    length = config.data.max_length
    ids = torch.randint(0, base.config.vocab_size, (config.optim.batch_size, length))
    labels = ids if task == "causal-lm" else torch.randint(0, 2, (config.optim.batch_size,))
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, dropout in METHODS.items():
            model = copy.deepcopy(base)
            if dropout is not None:
                lora = apply_overrides(config, ["lora.enabled=true", f"lora.dropout={dropout}"])
                model = apply_lora(model, describe_model(base), lora)[0]
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
            for step in range(steps + 1):
                if step == 1:  # the first step allocates the optimizer state
                    started = time.process_time()
                model(input_ids=ids, labels=labels).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            cost = (time.process_time() - started) / steps
            best[name] = min(best.get(name, cost), cost)
    return best


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(task: str, dropout: float | None, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, __file__, "--child", task, str(dropout), str(steps), folder, *extra],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-lm", type=int, default=300)
    parser.add_argument("--steps-cls", type=int, default=30)
    parser.add_argument("--cpu-steps", type=int, default=5, help="steps per CPU-time measurement")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU-time table")
    parser.add_argument("--long", action="store_true", help="the causal LM on rows of up to 256 tokens, no CPU table")
    args = parser.parse_args()
    extra = long_rows() if args.long else []
    measured = {} if args.cpu_only else {n: t for n, t in CASES.items() if t == "causal-lm" or not args.long}
    print(f"| model | method | trainable params | tokens/s (best of {args.repeats}) | peak RSS over baseline |")
    print("|---|---|---|---|---|")
    for name, task in measured.items():
        steps = args.steps_lm if task == "causal-lm" else args.steps_cls
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        for i in range(args.repeats):
            for method in (list(METHODS) if i % 2 == 0 else list(reversed(METHODS))):
                runs[method].append(measure(task, METHODS[method], steps, extra))
                print(f"  {task} {method}: {runs[method][-1]}", file=sys.stderr)
        for method, done in runs.items():
            best = max(r["tokens_per_s"] for r in done)
            peak = min(r["peak_mb"] for r in done)
            print(f"| {name} | {method} | {done[0]['trainable']:,} of {done[0]['total']:,} "
                  f"| {best:,.0f} | {peak:,.0f} MB |")
    if args.long:
        return
    print(f"\n| model | method | CPU s per step, 1 thread (best of {args.repeats}) | relative to full |")
    print("|---|---|---|---|")
    for name, task in CASES.items():
        costs = cpu_cost(task, args.cpu_steps, args.repeats)
        for method, cost in costs.items():
            print(f"| {name} | {method} | {cost:.3f} | {cost / costs['full']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], None if sys.argv[3] == "None" else float(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
              sys.argv[6:])
    else:
        main()
