"""How right the ETA is: the causal-LM demo trained headless, and at 25%, 50%, 75% and 100% of its steps
the ETA its step report gave against the time the run really took from that report to its end
(RunFinished), read from the wall-clock stamps of events.jsonl. Issue 10.15: the ETA left out the
final evaluation, the sample generations and the final save.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eta_accuracy.py [--repeats 3] [--source DIR] [--set KEY=VALUE ...]

`--source DIR`: the sft-tui source tree to run (e.g. an older commit unpacked with `git archive`),
with this venv; the default is this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKS = (0.25, 0.5, 0.75, 1.0)
"""Shares of the planned steps; 1.0 is the last step's report, sent before the last evaluation, its
generations and the final save."""


def one_run(source: Path, overrides: list[str]) -> dict[float, tuple[float, float, bool]]:
    """{share of the steps: (ETA said, seconds it really took, whether the ETA said it guessed)}."""
    with tempfile.TemporaryDirectory() as folder:
        sets = [arg for key in ["output.run_name=eta", *overrides] for arg in ("--set", key)]
        subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", "--demo", "causal-lm", *sets], cwd=folder,
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(source)})
        events = [json.loads(line) for line in (Path(folder) / "runs" / "eta" / "events.jsonl").open()]
    steps = [e for e in events if e["type"] == "step"]
    started = next(e for e in events if e["type"] == "run_started")
    end = next(e for e in events if e["type"] == "run_finished")["time"]
    found = {}
    for mark in MARKS:
        report = min(steps, key=lambda e: abs(e["step"] - mark * started["planned_steps"]))
        found[mark] = (report["eta_s"], end - report["time"], report.get("eta_estimated", False))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    runs = [one_run(args.source, args.overrides) for _ in range(args.repeats)]
    for mark in MARKS:
        said = [r[mark][0] for r in runs]
        took = [r[mark][1] for r in runs]
        errors = [100 * (s - t) / t for s, t in zip(said, took)]
        guessed = " (marked as an estimate)" if any(r[mark][2] for r in runs) else ""
        print(f"at {mark:4.0%}: ETA {statistics.median(said):.1f} s, really {statistics.median(took):.1f} s, "
              f"error {statistics.median(errors):+.0f}% (runs: {', '.join(f'{e:+.0f}%' for e in errors)}){guessed}")


if __name__ == "__main__":
    main()
