"""Benchmark: the memory estimate (core.memory, what `sft-tui train --dry-run` prints) against the
measured peak of real training, over configurations of both tasks, several freeze maps, LoRA and
two batch sizes; and gradient checkpointing's saving and cost on demo:tiny-lm (`--checkpointing`:
the resident memory one step adds, sampled every millisecond with glibc told to return freed tensors
to the system, and the step's seconds; fresh processes, alternated, best of `--repeats`).

Each configuration trains in a fresh subprocess (the script re-invokes itself with `--one SPEC`):
three optimizer steps through core.engine.train (so AdamW's state exists for the later steps), no
validation rows, evaluation or checkpoints. Measured on the CPU: the peak resident memory
(getrusage ru_maxrss) over the process's baseline, which is its resident memory just before the
model loads (torch, the libraries, the tokenizer and the data; core.setup.setup_model is wrapped to
read it). The estimate is core.dry_run.prepare's, in the same process after training. On a GPU the
peak is torch.cuda.max_memory_allocated and the baseline 0.

Models: all-MiniLM-L6-v2 (demo:minilm, pretrained) for classification on demo:sentiment, and a Llama
of SmolLM2-135M's shape (30 blocks, hidden 576, vocabulary 49152; random weights, built from its
config) for causal LM on packed text rows, so every row is max_length tokens.

Usage:
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/memory_estimate.py [--only NAME ...] [--mmap-threshold 1048576]
    HF_HUB_OFFLINE=1 HF_HOME=$(mktemp -d) .venv/bin/python bench/memory_estimate.py --checkpointing
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "BENCH_RESULT "
BIG = 10**9
SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": True,
            "rms_norm_eps": 1e-5}
"""SmolLM2-135M's config.json, the sizes that matter."""

CHECKPOINTING = {"compute": {"gradient_checkpointing": True}}

CASES = {
    # name: (model, task, freeze preset, batch, max_length, extra overrides)
    "minilm full b16": ("minilm", "classification", "all", 16, 128, {}),
    "minilm full b64": ("minilm", "classification", "all", 64, 128, {}),
    "minilm top-2 b32": ("minilm", "classification", "top-n", 32, 128, {}),
    "minilm head-only b32": ("minilm", "classification", "head-only", 32, 128, {}),
    "minilm lora b16": ("minilm", "classification", "all", 16, 128, {"lora": {"enabled": True}}),
    "minilm lora b32": ("minilm", "classification", "all", 32, 128, {"lora": {"enabled": True}}),
    "minilm lora dropout b32": ("minilm", "classification", "all", 32, 128, {"lora": {"enabled": True, "dropout": 0.05}}),
    "minilm lora b64": ("minilm", "classification", "all", 64, 128, {"lora": {"enabled": True}}),
    "minilm lora-attention b32": ("minilm", "classification", "all", 32, 128,
                                  {"lora": {"enabled": True, "targets": ["attention"]}}),
    "smol full b4": ("smol", "causal-lm", "all", 4, 128, {}),
    "smol top-2 b8": ("smol", "causal-lm", "top-n", 8, 128, {}),
    "smol top-2 b16": ("smol", "causal-lm", "top-n", 16, 128, {}),
    "smol head-only b8": ("smol", "causal-lm", "head-only", 8, 128, {}),
    "smol lora b4": ("smol", "causal-lm", "all", 4, 128, {"lora": {"enabled": True}}),
    "smol lora b8": ("smol", "causal-lm", "all", 8, 128, {"lora": {"enabled": True}}),
    "smol lora b16": ("smol", "causal-lm", "all", 16, 128, {"lora": {"enabled": True}}),
    "smol lora-attention b8": ("smol", "causal-lm", "all", 8, 128, {"lora": {"enabled": True, "targets": ["attention"]}}),
    "smol top-2 lora b8": ("smol", "causal-lm", "top-n", 8, 128, {"lora": {"enabled": True}}),
    "minilm full ckpt b16": ("minilm", "classification", "all", 16, 128, CHECKPOINTING),
    "minilm full ckpt b64": ("minilm", "classification", "all", 64, 128, CHECKPOINTING),
    "minilm top-2 ckpt b32": ("minilm", "classification", "top-n", 32, 128, CHECKPOINTING),
    "minilm lora ckpt b32": ("minilm", "classification", "all", 32, 128, {"lora": {"enabled": True}, **CHECKPOINTING}),
    "minilm dora b32": ("minilm", "classification", "all", 32, 128, {"lora": {"enabled": True, "use_dora": True}}),
    "smol full ckpt b4": ("smol", "causal-lm", "all", 4, 128, CHECKPOINTING),
    "smol top-2 ckpt b8": ("smol", "causal-lm", "top-n", 8, 128, CHECKPOINTING),
    "smol lora ckpt b8": ("smol", "causal-lm", "all", 8, 128, {"lora": {"enabled": True}, **CHECKPOINTING}),
    "smol dora b8": ("smol", "causal-lm", "all", 8, 128, {"lora": {"enabled": True, "use_dora": True}}),
}


def build_smol(folder: Path) -> tuple[Path, Path]:
    """The SmolLM2-135M-shaped Llama (random weights) with a small tokenizer, and packed text rows."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.tiny import build_tokenizer

    words = ["the", "model", "reads", "every", "token", "and", "learns", "which", "one", "comes", "next", "in", "a", "sentence", "of", "plain", "words"]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(60)) for i in range(200)]
    model_dir = folder / "smol"
    if not (model_dir / "config.json").is_file():
        tokenizer = build_tokenizer(texts, vocab_size=512)
        config = AutoConfig.for_model("llama", pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, **SMOL)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    data = folder / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return model_dir, data


def run_config(spec: dict, folder: Path) -> dict:
    model, task, preset, batch, max_length, extra = spec["case"]
    if model == "smol":
        model_dir, data = build_smol(folder)
        model_name, data_cfg = str(model_dir), {"train": str(data), "packing": True}
    else:
        model_name, data_cfg = "demo:minilm", {"train": "demo:sentiment"}
    config = {
        "task": task, "seed": 0,
        "model": {"name_or_path": model_name},
        "data": {**data_cfg, "max_length": max_length, "val_ratio": 0.0},
        "freeze": {"preset": preset, "top_n": 2},
        "optim": {"batch_size": batch, "lr": 1e-4},
        "schedule": {"max_steps": 3, "warmup_steps": 0},
        "eval": {"every_steps": BIG, "num_samples": 0},
        "checkpoint": {"every_steps": BIG},
        "output": {"runs_dir": str(folder / "runs"), "save_final": False},
        **extra,
    }
    return config


def one(spec: dict) -> dict:
    """Train one configuration in this process; its measured peak and the estimate."""
    import torch

    from core import setup
    from core.config import parse_config
    from core.dry_run import prepare
    from core.engine import train
    from core.logs import quiet_libraries
    from core.device_usage import process_memory

    quiet_libraries()
    torch.manual_seed(0)
    folder = Path(spec["folder"])
    config = parse_config(run_config(spec, folder))
    cuda = torch.cuda.is_available()
    baseline = {}
    load = setup.setup_model

    def measured_load(*args, **kwargs):
        baseline["rss"] = process_memory()["rss_bytes"]
        return load(*args, **kwargs)

    setup.setup_model = measured_load
    started = time.perf_counter()
    train(config, [])
    seconds = time.perf_counter() - started
    setup.setup_model = load
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = peak - (0 if cuda else baseline["rss"])
    estimate = prepare(config).estimate
    return {"measured": measured, "estimate": estimate.total, "parts": estimate.__dict__, "seconds": seconds,
            "baseline": baseline["rss"]}


def spawn(spec: dict, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                         check=False, env=env)
    for line in out.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"{spec['case']} failed:\n{out.stderr[-3000:]}")


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def estimates(names: list[str], folder: Path, mmap_threshold: int | None) -> None:
    """The table; with `mmap_threshold` each configuration's process runs with glibc's
    MALLOC_MMAP_THRESHOLD_ at that many bytes, so that freed tensors above it leave the RSS at once
    (by default glibc raises the threshold as tensors are freed and keeps their memory in its heap)."""
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else None
    print("| configuration | estimate MB | measured MB (peak RSS over baseline) | error | baseline MB |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        result = spawn({"case": CASES[name], "folder": str(folder)}, env)
        error = result["estimate"] / result["measured"] - 1
        print(f"| {name} | {mb(result['estimate'])} | {mb(result['measured'])} | {error:+.0%} | "
              f"{mb(result['baseline'])} |", flush=True)
        print(f"  parts: { {k: mb(v) for k, v in result['parts'].items()} }", file=sys.stderr, flush=True)


def step_memory(checkpointing: bool, batch: int = 16, length: int = 256, steps: int = 4) -> dict:
    """demo:tiny-lm trained on random rows of `length` tokens in this process: the resident memory a
    step adds (sampled every millisecond, over the RSS before the step) and its seconds, after a
    first step. The caller sets MALLOC_MMAP_THRESHOLD_ low so that freed tensors leave the RSS."""
    import threading

    import psutil
    import torch
    from transformers import AutoModelForCausalLM

    from core.logs import quiet_libraries
    from core.loss import lm_loss_sum
    from core.setup import enable_gradient_checkpointing
    from core.tiny import demo_tiny_lm

    quiet_libraries()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo_tiny_lm(), dtype=torch.float32).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(3, model.config.vocab_size, (batch, length))
    process, peaks, seconds = psutil.Process(), [], []
    for k in range(steps):
        before, top, done = process.memory_info().rss, [0], threading.Event()

        def sample(top=top, done=done) -> None:
            while not done.is_set():
                top[0] = max(top[0], process.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        lm_loss_sum(model(input_ids=ids).logits, ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        done.set()
        sampler.join()
        if k:  # the first step creates AdamW's state and warms up the kernels
            peaks.append(top[0] - before)
    return {"added": max(peaks), "seconds": min(seconds[1:])}


def checkpointing(repeats: int) -> None:
    """Gradient checkpointing on demo:tiny-lm at max_length 256: the memory a step adds and its
    time, with and without; fresh processes, alternated, best of `repeats`."""
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    best: dict[bool, dict] = {}
    for _ in range(repeats):
        for on in (False, True):
            out = subprocess.run([sys.executable, __file__, "--step-memory", "on" if on else "off"],
                                 capture_output=True, text=True, check=False, env=env)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
            if line is None:
                raise RuntimeError(out.stderr[-3000:])
            result = json.loads(line[len(MARKER):])
            if on not in best:
                best[on] = result
            best[on] = {k: min(best[on][k], result[k]) for k in result}
    print("| demo:tiny-lm, batch 16 x 256 | memory a step adds MB | step s |")
    print("|---|---:|---:|")
    for on in (False, True):
        print(f"| gradient checkpointing {'on' if on else 'off'} | {mb(best[on]['added'])} | {best[on]['seconds']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="configurations to run (default: all)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on demo:tiny-lm instead")
    parser.add_argument("--step-memory", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="run each configuration with MALLOC_MMAP_THRESHOLD_=BYTES (glibc returns freed tensors)")
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(MARKER + json.dumps(one(spec)), flush=True)
        return
    if args.step_memory:
        print(MARKER + json.dumps(step_memory(args.step_memory == "on")), flush=True)
        return
    if args.checkpointing:
        checkpointing(args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        estimates(args.only or list(CASES), Path(tmp), args.mmap_threshold)


if __name__ == "__main__":
    main()
