"""Training throughput of a detached engine (`sft-tui train --detach`) and of a run started in the
app (on the training screen, drawn in a real terminal) against the headless CLI on the same config,
and the time from launch to the app's first screen.

    .venv/bin/python bench/app_vs_headless.py [--repeats 4] [--startup-repeats 5] [--against detached app]

The app runs in tmux at 120x40 exactly as a user runs it (keys: Escape, 5, then Enter to start); both
runs write events.jsonl, and throughput is read from there the same way for both: the tokens
trained between the first and the last step report, over the time between them (the first
report window, with its warm-up steps, is left out). Headless and app runs alternate, and which
goes first alternates too, so a drift of the machine's speed falls on both alike; the figure is
the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SFT = str(Path(sys.executable).with_name("sft-tui"))
CASES = {
    "causal-lm": {"schedule.max_steps": 1500, "eval.every_steps": 100000},
    "classification": {"schedule.max_steps": 40, "eval.every_steps": 100000},
}


def write_config(folder: Path, task: str, run_name: str) -> Path:
    from core.config import config_to_dict, example_config
    from sft_tui.session import Session

    session = Session(example_config(task))
    session.update({**CASES[task], "output.runs_dir": str(folder / "runs"), "output.run_name": run_name,
                    "output.save_final": False, "checkpoint.every_steps": 100000})
    path = folder / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(session.config), sort_keys=False))
    return path


def throughput(events_file: Path) -> float:
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    first, *_, last = [e for e in events if e["type"] == "step"]
    return (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])


def run_headless(folder: Path, task: str) -> float:
    config = write_config(folder, task, "headless")
    subprocess.run([SFT, "train", str(config)], check=True, capture_output=True, cwd=folder)
    return throughput(folder / "runs" / "headless" / "events.jsonl")


def wait_finished(events: Path) -> None:
    deadline = time.time() + 900
    while time.time() < deadline:
        if events.exists() and '"run_finished"' in events.read_text():
            return
        time.sleep(1)
    raise RuntimeError(f"the run of {events} did not finish")


def run_detached(folder: Path, task: str) -> float:
    config = write_config(folder, task, "detached")
    subprocess.run([SFT, "train", str(config), "--detach"], check=True, capture_output=True, cwd=folder)
    events = folder / "runs" / "detached" / "events.jsonl"
    wait_finished(events)
    return throughput(events)


def run_app(folder: Path, task: str) -> float:
    config = write_config(folder, task, "app")
    events = folder / "runs" / "app" / "events.jsonl"
    session = f"bench-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                    f"cd {folder} && {SFT} {config}"], check=True)
    try:
        time.sleep(3)  # the model step opens with its path box focused: Escape, so that 5 switches steps
        subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
        time.sleep(0.5)  # sent at once, Escape and 5 read as one escape sequence (alt+5), as a person's would not
        subprocess.run(["tmux", "send-keys", "-t", session, "5"], check=True)
        time.sleep(1)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        wait_finished(events)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    return throughput(events)


def startup_seconds(folder: Path) -> float:
    """Launch `sft-tui` in a pseudo-terminal and wait for its draft bar to be drawn."""
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(folder)
        os.execvpe(SFT, [SFT], {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    seen = b""
    try:
        while time.perf_counter() - started < 30:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                seen += os.read(fd, 65536)
                if b"ready" in seen and b"sft-tui" in seen:
                    return time.perf_counter() - started
        raise RuntimeError("the first screen did not appear within 30 s")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


CONTENDERS = {"detached": run_detached, "app": run_app}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--startup-repeats", type=int, default=5)
    parser.add_argument("--case", choices=[*CASES, "both"], default="both")
    parser.add_argument("--against", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        times = [startup_seconds(Path(tmp)) for _ in range(args.startup_repeats)]
    if times:
        print(f"launch to first screen: median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})")
    for task in CASES if args.case == "both" else [args.case]:
        for name in args.against:
            headless, other = [], []
            for repeat in range(args.repeats):
                pair = [(run_headless, headless), (CONTENDERS[name], other)]
                for run, results in pair[::1 if repeat % 2 == 0 else -1]:
                    with tempfile.TemporaryDirectory() as tmp:
                        results.append(run(Path(tmp), task))
            ratios = [a / h for a, h in zip(other, headless)]
            print(f"{task}: headless {statistics.median(headless):,.0f} tok/s {[round(x) for x in headless]}, "
                  f"{name} {statistics.median(other):,.0f} tok/s {[round(x) for x in other]}, {name}/headless "
                  f"per pair {[round(r, 3) for r in ratios]}, median {statistics.median(ratios):.3f}")

if __name__ == "__main__":
    main()
