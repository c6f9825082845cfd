#!/usr/bin/env bash
# The prepared GPU check (issue 11.6): what cannot run on a CPU machine, in one go, under 8 minutes,
# on a machine with an NVIDIA GPU and no network.
#
#   bench/gpu_check.sh RESULTS.json        (PYTHON=... to use another interpreter than .venv/bin/python)
#
# Through the `device` tool: run bench/gpu_wheels.sh here first (the machines there lack pydantic,
# datasets and textual, and reach no index), then one call,
#   run(command="bench/gpu_check.sh $OUT/gpu_check.json", carry=[".whl"], timeout_s=560)
# and record $OUT/gpu_check.json in BENCHMARKS.md.
#
# It builds a 0.5B-class causal LM from Qwen2-0.5B's shape (random weights, a tokenizer trained on
# the spot) and generated JSONL, then runs through `sft-tui train`, as a user would:
#   full_bf16      a bf16 full fine-tune (20 steps); its measured peak is torch.cuda.max_memory_allocated;
#                  it evaluates at steps 10 and 20 with greedy samples, checkpoints at 10 and exports
#                  the final model, so evaluation, generation and saving run on CUDA too
#   lora, qlora    the same with --set lora.enabled=true (and lora.quantize=4bit where bitsandbytes is;
#                  "skipped" where it is missing)
#   estimate       `--dry-run`'s peak_memory_bytes against full_bf16's and lora's measured peaks
#   oom_recovery   a batch too big for the card: a real CUDA OOM, MicroBatchHalved events, and the run ends
#   gpu_panel      core.device_usage.gpu_stats (the training screen's numbers) against nvidia-smi, under load
#   launch_checks  the device checks on real GPUs: bf16 accepted, more processes than GPUs refused
#   ddp            two processes through --nproc 2 (only with two GPUs or more)
# Each step records status (pass, fail, skipped), seconds and its numbers; RESULTS.json gets them all.
set -u
OUT=${1:?usage: bench/gpu_check.sh RESULTS.json}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
WORK=$(mktemp -d -t sft-gpu-check-XXXX)
export HF_HUB_OFFLINE=1 HF_HOME=$WORK/hf TOKENIZERS_PARALLELISM=false PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
cd "$ROOT" || exit 1
START=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
    # bench/gpu_wheels.sh's wheels: what the interpreter lacks, and our versions of the HF libraries
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl || exit 1
    export PYTHONPATH=$WORK/site:$PYTHONPATH
fi
[ -d .whl/bnb ] && export PYTHONPATH=$ROOT/.whl/bnb:$PYTHONPATH   # bitsandbytes, slimmed by gpu_wheels.sh

cat > "$WORK/check.py" <<'PYEOF'
"""The steps of bench/gpu_check.sh; each writes WORK/results/NAME.json."""
import json, math, os, re, subprocess, sys, time
from pathlib import Path

WORK = Path(os.environ["WORK"])
RESULTS = WORK / "results"
RESULTS.mkdir(exist_ok=True)
SFT = [sys.executable, "-m", "sft_tui.cli", "train"]


def save(name, status, **numbers):
    (RESULTS / f"{name}.json").write_text(json.dumps({"status": status, **numbers}, indent=1, default=str))
    print(f"{name}: {status} {json.dumps(numbers, default=str)[:400]}", flush=True)


def build():
    """A Qwen2-0.5B-shaped model with random weights, saved in bf16; rows short and rows long."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from core.tiny import build_tokenizer

    words = "alpha beta gamma delta river stone cloud paper light green quick slow north south seven".split()
    rows = [{"prompt": f"Question {i}: repeat {' '.join(words[j % 15] for j in range(i, i + 12))}.",
             "completion": " " + " ".join(words[(i * j) % 15] for j in range(40))} for i in range(1024)]
    (WORK / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    long_rows = [{"prompt": f"Essay {i}:", "completion": " " + " ".join(words[(i + j) % 15] for j in range(1500))}
                 for i in range(512)]
    (WORK / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    tokenizer = build_tokenizer([r["prompt"] + r["completion"] for r in rows[:200]], vocab_size=2048)
    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    folder = WORK / "qwen2-0.5b-shape"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    base = {"task": "causal-lm", "seed": 1, "precision": "bf16", "model": {"name_or_path": str(folder)},
            "data": {"train": str(WORK / "rows.jsonl"), "max_length": 512, "val_ratio": 0.0},
            "optim": {"lr": 1e-5, "batch_size": 8}, "schedule": {"max_steps": 20},
            "eval": {"every_steps": 0, "num_samples": 0}, "checkpoint": {"every_steps": 0},
            "output": {"runs_dir": str(WORK / "runs"), "save_final": False}}
    # full_bf16 turns evaluation, samples, a checkpoint and the export on (WITH_EVAL)
    import yaml
    (WORK / "base.yaml").write_text(yaml.safe_dump(base))
    save("build", "pass", params=params, rows=len(rows), long_rows=len(long_rows))


def events_of(run_dir):
    from core.events import read_events

    path = Path(run_dir) / "events.jsonl"
    return read_events(path) if path.exists() else []


def train(name, *args, timeout=150, expect=0):
    """`sft-tui train base.yaml ARGS` as run NAME; its exit status, time and what its events say."""
    started = time.time()
    try:
        done = subprocess.run([*SFT, str(WORK / "base.yaml"), "--set", f"output.run_name={name}", *args],
                              capture_output=True, text=True, timeout=timeout)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as e:
        code, err = "timeout", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr)
    events = events_of(WORK / "runs" / name)
    steps = [e for e in events if e.type == "step"]
    peaks = [v for e in steps for k, v in e.memory.items() if re.fullmatch(r"gpu\d+_max_allocated_bytes", k)]
    summary = {"exit": code, "seconds": round(time.time() - started, 1), "steps": steps[-1].step if steps else 0,
               "last_loss": steps[-1].loss if steps else None,
               "tokens_per_s": round(max(e.tokens_per_s for e in steps), 1) if steps else None,
               "max_allocated_bytes": max(peaks) if peaks else None,
               "started": next(({"device": e.device, "precision": e.precision, "world_size": e.world_size,
                                 "trainable": e.trainable_params, "total": e.total_params}
                                for e in events if e.type == "run_started"), None),
               "halved": [{"step": e.step, "batch_size": e.batch_size, "grad_accum": e.grad_accum}
                          for e in events if e.type == "micro_batch_halved"],
               "failed": next(({"message": e.message, "hint": e.hint} for e in events if e.type == "run_failed"), None),
               "evals": [{"step": e.step, **e.metrics} for e in events if e.type == "eval"],
               "samples": [e.output[:80] for e in events if e.type == "sample"],
               "checkpoints": [e.step for e in events if e.type == "checkpoint"],
               "exported": (WORK / "runs" / name / "final" / "config.json").is_file(),
               "stderr_tail": err[-1500:] if code != expect else ""}
    return summary


WITH_EVAL = ["--set", "data.val_ratio=0.05", "--set", "eval.every_steps=10", "--set", "eval.num_samples=2",
             "--set", "checkpoint.every_steps=10", "--set", "output.save_final=true"]


def full_bf16():
    s = train("full-bf16", *WITH_EVAL)
    ok = (s["exit"] == 0 and s["steps"] == 20 and s["started"] and s["started"]["precision"] == "bf16"
          and [e["step"] for e in s["evals"]][-2:] == [10, 20] and all(math.isfinite(e["loss"]) for e in s["evals"])
          and len(s["samples"]) >= 2 and 10 in s["checkpoints"] and s["exported"])
    save("full_bf16", "pass" if ok else "fail", **s)


def lora(name="lora", *extra):
    s = train(name, "--set", "lora.enabled=true", "--set", "lora.r=16", *extra)
    ok = s["exit"] == 0 and s["steps"] == 20 and s["started"]["trainable"] < s["started"]["total"] / 10
    save(name, "pass" if ok else "fail", **s)


def qlora():
    try:
        import bitsandbytes  # noqa: F401 - only whether it is there
    except ImportError:
        return save("qlora", "skipped", why="bitsandbytes is not installed")
    lora("qlora", "--set", "lora.quantize=4bit")


def estimate():
    """--dry-run's estimate against each measured peak: the goal is within 25%."""
    rows = {}
    for name, extra in (("full-bf16", WITH_EVAL), ("lora", ["--set", "lora.enabled=true", "--set", "lora.r=16"])):
        done = subprocess.run([*SFT, str(WORK / "base.yaml"), "--dry-run", *extra], capture_output=True, text=True,
                              timeout=120)
        found = re.search(r"^peak_memory_bytes: (\d+)$", done.stdout, re.M)
        measured_file = RESULTS / f"{name.replace('-', '_')}.json"
        measured = json.loads(measured_file.read_text()).get("max_allocated_bytes") if measured_file.exists() else None
        estimated = int(found[1]) if found else None
        rows[name] = {"estimated_bytes": estimated, "measured_bytes": measured, "dry_run_exit": done.returncode,
                      "error": (estimated / measured - 1) if estimated and measured else None,
                      "stderr_tail": done.stderr[-800:] if not found else ""}
    errors = [r["error"] for r in rows.values() if r["error"] is not None]
    save("estimate", "skipped" if not errors else "pass" if all(abs(e) <= 0.25 for e in errors) else "fail", **rows)


def oom_recovery():
    """256 rows of ~1,500 tokens a micro-batch: the logits alone need hundreds of GB."""
    s = train("oom", "--set", f"data.train={WORK / 'long.jsonl'}", "--set", "data.max_length=2048",
              "--set", "optim.batch_size=256", "--set", "schedule.max_steps=2", timeout=240)
    ok = s["exit"] == 0 and s["steps"] == 2 and len(s["halved"]) >= 1
    save("oom_recovery", "pass" if ok else "fail", **s)


def gpu_panel():
    """core.device_usage.gpu_stats against nvidia-smi, with 8 GiB held and matmuls queued on GPU 0."""
    import threading

    import torch

    from core.device_usage import gpu_stats

    held = torch.empty(8 * 2**30, dtype=torch.uint8, device="cuda:0")
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    worker = threading.Thread(target=busy)
    worker.start()
    time.sleep(2)
    ours = gpu_stats()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total,utilization.gpu",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    stop.set()
    worker.join()
    del held
    theirs = [dict(zip(("index", "used_mib", "total_mib", "util"), map(int, line.split(","))))
              for line in smi.strip().splitlines()]
    pairs = []
    for gpu, row in zip(ours, theirs):
        pairs.append({"index": gpu["index"], "ours_used_mib": gpu["memory_used"] // 2**20, "smi_used_mib": row["used_mib"],
                      "ours_total_mib": gpu["memory_total"] // 2**20, "smi_total_mib": row["total_mib"],
                      "ours_util": gpu["utilization"], "smi_util": row["util"]})
    ok = bool(pairs) and len(ours) == len(theirs) and all(
        abs(p["ours_used_mib"] - p["smi_used_mib"]) <= max(64, p["smi_used_mib"] * 0.02)
        and abs(p["ours_total_mib"] - p["smi_total_mib"]) <= 1
        and (p["ours_util"] is None or abs(p["ours_util"] - p["smi_util"]) <= 15) for p in pairs)
    save("gpu_panel", "pass" if ok else "fail", gpus=pairs)


def launch_checks():
    from core.config import RunConfig
    from core.launch import launch_problems, local_gpus

    gpus = local_gpus()
    bf16 = [p.message for p in launch_problems(RunConfig(precision="bf16"), gpus)]
    nproc = max(len(gpus.indices), 1) + 1
    too_many = launch_problems(RunConfig(compute={"nproc": nproc}), gpus)
    done = subprocess.run([*SFT, str(WORK / "base.yaml"), "--nproc", str(nproc)],
                          capture_output=True, text=True, timeout=60)
    ok = (gpus.indices and not bf16 and [p.fields for p in too_many] and done.returncode == 2
          and "compute.nproc" in done.stderr)
    save("launch_checks", "pass" if ok else "fail", gpus=gpus.bf16, bf16_problems=bf16,
         too_many=[p.message for p in too_many], cli_exit=done.returncode, cli_stderr=done.stderr[-500:])


def ddp():
    from core.launch import local_gpus

    if len(local_gpus().indices) < 2:
        return save("ddp", "skipped", why="one GPU: --nproc 2 needs two")
    s = train("ddp", "--nproc", "2", "--set", "optim.batch_size=4")
    ok = s["exit"] == 0 and s["started"] and s["started"]["world_size"] == 2 and s["steps"] == 20
    save("ddp", "pass" if ok else "fail", **s)


def merge(out, seconds):
    import torch

    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    machine = {"gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               "torch": torch.__version__, "cuda": torch.version.cuda}
    Path(out).write_text(json.dumps({"seconds": seconds, "machine": machine, "steps": results}, indent=1, default=str))
    print(json.dumps({name: r["status"] for name, r in results.items()}))


if __name__ == "__main__":
    step = sys.argv[1]
    if step == "merge":
        merge(sys.argv[2], int(sys.argv[3]))
    else:
        try:
            globals()[step]()
        except Exception as err:  # a step that crashes is a failed step, and the next one still runs
            save(step, "fail", error=f"{type(err).__name__}: {err}")
PYEOF

export WORK
if ! command -v nvidia-smi >/dev/null || ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no NVIDIA GPU that torch can use: nothing to check" >&2
    echo '{"status": "skipped", "why": "no CUDA GPU"}' > "$OUT"
    rm -rf "$WORK"
    exit 1
fi
# Each step has a time limit; together they stay under 8 minutes on one GPU of the H100/H200 class.
for step in build full_bf16 lora qlora estimate oom_recovery gpu_panel launch_checks ddp; do
    timeout 300 "$PY" "$WORK/check.py" "$step" || echo "$step: ended with status $?" >&2
    if [ $(( $(date +%s) - START )) -gt 450 ]; then
        echo "stopping after $step: past 7.5 minutes" >&2
        break
    fi
done
"$PY" "$WORK/check.py" merge "$OUT" $(( $(date +%s) - START ))
rm -rf "$WORK"
