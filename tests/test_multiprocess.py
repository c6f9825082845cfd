"""Several processes: `sft-tui train --nproc 2` runs data-parallel through torchrun (here 2 gloo
processes on the CPU) and trains what one process trains at the same global batch: the same loss at
every step and the same final weights, within 1e-4. Rank 0 alone writes the run folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import parse_config
from core.engine import train
from core.events import read_events
from helpers import tiny_lm_config, write_jsonl


def _config(tiny_model_factory, tmp_path, name: str, **compute) -> dict:
    """Six steps of 8 rows (one process of 8, or two of 4), each step reported: a checkpoint after
    every step reports the step before it is saved, so the events hold every step's loss."""
    rows = [{"prompt": f"question {i}: what is {i} plus {i}?", "completion": " " + "two " * (1 + i % 5)}
            for i in range(48)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = tiny_lm_config(tiny_model_factory("llama"), data, tmp_path / "runs",
                            schedule={"max_steps": 6, "warmup_steps": 1},
                            eval={"every_steps": 0, "num_samples": 0},
                            checkpoint={"every_steps": 1, "keep_last": 1},
                            output={"runs_dir": str(tmp_path / "runs"), "run_name": name})
    config["data"].update(val_ratio=0.0)
    config["compute"] = compute
    return config


def _losses(run_dir) -> dict[int, float]:
    return {e.step: e.loss for e in read_events(run_dir / "events.jsonl") if e.type == "step"}


@pytest.fixture(scope="module")
def runs(tiny_model_factory, tmp_path_factory):
    """The same six steps trained by one process (batch 8, in this process) and by two (batch 4 each,
    through `sft-tui train --nproc 2`); the runs folder and the command's result."""
    tmp_path = tmp_path_factory.mktemp("multiprocess")
    one = _config(tiny_model_factory, tmp_path, "one")
    one["optim"]["batch_size"] = 8
    train(parse_config(one))

    two = _config(tiny_model_factory, tmp_path, "two", devices="cpu")
    two["optim"]["batch_size"] = 4
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", str(path), "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=240)
    return tmp_path / "runs", done


def test_nproc_trains_on_two_processes_whose_rank_0_writes_the_run(runs):
    runs, done = runs
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x2" in done.stderr and "ChildFailedError" not in done.stderr  # the banner: two processes
    assert "run completed at step 6" in done.stdout
    started = [e for e in read_events(runs / "two" / "events.jsonl") if e.type == "run_started"]
    assert [e.world_size for e in started] == [2], "rank 0 alone writes the events"
    assert sorted(_losses(runs / "two")) == list(range(1, 7))
    assert (runs / "two" / "final" / "model.safetensors").exists()


def test_two_processes_train_what_one_trains_at_the_same_global_batch(runs):
    runs, done = runs
    assert done.returncode == 0, done.stderr[-3000:]
    ones, twos = _losses(runs / "one"), _losses(runs / "two")
    assert sorted(twos) == sorted(ones) == list(range(1, 7))
    torch.testing.assert_close(torch.tensor([twos[s] for s in sorted(twos)]),
                               torch.tensor([ones[s] for s in sorted(ones)]), atol=1e-4, rtol=0)
    weights_one = load_file(runs / "one" / "final" / "model.safetensors")
    weights_two = load_file(runs / "two" / "final" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_process_out_of_memory_ends_the_run_with_its_advice_and_no_traceback(tiny_model_factory, tmp_path, failing):
    """One of two processes runs out of memory at step 3 (halving works on one process only): the
    run ends with that process's message and advice, named by its rank when it is not rank 0 (whose
    own error is only the collective the peer broke), with exit status 2, no traceback from either
    process or torchrun, and the step-2 checkpoint kept."""
    config = _config(tiny_model_factory, tmp_path, "oom", devices="cpu")
    config["optim"]["batch_size"] = 4
    path = tmp_path / "oom.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    site = os.path.join(os.path.dirname(__file__), "rank_oom_site")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OOM_RANK": str(failing), "OOM_STEP": "3",
           "PYTHONPATH": os.pathsep.join([site, root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", str(path), "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=240)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-3000:]
    assert "Traceback" not in said and "ChildFailedError" not in said, said[-3000:]
    message = ("process 1 of 2: " if failing else "") + "out of device memory at step 3"
    assert f"run failed: {message}" in done.stderr and "lora.enabled: true" in done.stderr
    end = read_events(tmp_path / "runs" / "oom" / "events.jsonl")[-1]
    assert end.type == "run_failed" and end.message.startswith(message) and end.log_file is None
    assert end.last_checkpoint.endswith("step-2") and os.path.isdir(end.last_checkpoint)
