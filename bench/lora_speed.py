"""LoRA against full fine-tuning of the same model: training tokens/s and the process's peak RSS
over its baseline, on the bundled tiny causal LM and on the pretrained MiniLM.

    .venv/bin/python bench/lora_speed.py [--repeats 3] [--steps-lm 300] [--steps-cls 30]

Each run is a fresh `sft-tui train` process (`--child` below), so its peak RSS is its own. The
baseline is the RSS once torch, transformers and peft are imported, before the model loads; the
peak is ru_maxrss at the end. Tokens/s is read from events.jsonl as bench/app_vs_headless.py reads
it: the tokens between the first and the last step report over the time between them, so the
first window's warm-up is left out. Full and LoRA alternate, and which goes first alternates; the
table shows the best of each (FACTS.md: a machine's speed drifts by up to 30% between sittings).
LoRA is r=16 on every linear layer of the blocks (attention and MLP), evaluation and saving off.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {"tiny causal LM (demo:tiny-lm)": "causal-lm", "MiniLM-L6 classification (demo:minilm)": "classification"}


def child(task: str, lora: bool, steps: int, folder: str) -> None:
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
        f"output.run_name={'lora' if lora else 'full'}", f"lora.enabled={str(lora).lower()}", "lora.r=16",
        "lora.targets=all-linear", "data.val_ratio=0.01",
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


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(task: str, lora: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, __file__, "--child", task, str(int(lora)), str(steps), folder],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-lm", type=int, default=300)
    parser.add_argument("--steps-cls", type=int, default=30)
    args = parser.parse_args()
    print("| model | method | trainable params | tokens/s (best of %d) | peak RSS over baseline |" % args.repeats)
    print("|---|---|---|---|---|")
    for name, task in CASES.items():
        steps = args.steps_lm if task == "causal-lm" else args.steps_cls
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for i in range(args.repeats):
            for lora in ((False, True) if i % 2 == 0 else (True, False)):
                runs[lora].append(measure(task, lora, steps))
                print(f"  {task} {'lora' if lora else 'full'}: {runs[lora][-1]}", file=sys.stderr)
        for lora in (False, True):
            best = max(r["tokens_per_s"] for r in runs[lora])
            peak = min(r["peak_mb"] for r in runs[lora])
            r = runs[lora][0]
            print(f"| {name} | {'LoRA r=16 all-linear' if lora else 'full'} | {r['trainable']:,} of {r['total']:,} "
                  f"| {best:,.0f} | {peak:,.0f} MB |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5])
    else:
        main()
