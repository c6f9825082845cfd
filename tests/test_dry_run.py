"""`sft-tui train CONFIG --dry-run`, in process: the plan, the trainable parameters and the peak
memory are printed, nothing trains and no run folder appears; a bad config exits 2 with its message."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from core.config import parse_config
from core.memory import format_bytes
from core.plan import plan_steps
from sft_tui.cli import main


@pytest.fixture
def config_path(tmp_path, tiny_model_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"Echo {w}:", "completion": f" {w} {w}"} for w in ["abc", "def", "ghi", "jkl", "mno", "pqr", "stu", "vwx"] * 5]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "task": "causal-lm",
        "model": {"name_or_path": str(tiny_model_factory("llama"))},
        "data": {"train": "train.jsonl", "max_length": 12, "val_ratio": 0.25},
        "optim": {"lr": 1e-3, "batch_size": 4},
        "schedule": {"max_steps": 7},
        "eval": {"every_steps": 3},
        "freeze": {"preset": "top-n", "top_n": 1},
        "output": {"runs_dir": "runs", "run_name": "dry"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def dry_run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


def peak(stdout: str) -> int:
    return int(re.search(r"^peak_memory_bytes: (\d+)$", stdout, re.MULTILINE).group(1))


def parts(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^  ([a-zA-Z][^:]*): (.+)$", stdout, re.MULTILINE))


def test_dry_run_prints_the_plan_and_the_memory_without_training(config_path, capsys, tmp_path, caplog):
    code, out, err = dry_run(capsys, str(config_path))
    assert code == 0, err
    plan = plan_steps(parse_config(yaml.safe_load(config_path.read_text())), train_rows=30)
    assert plan.total_steps == 7 and plan.eval_steps == [3, 6, 7]
    assert "plan: 7 optimizer steps" in out
    assert "evaluations: before training, then 3 (after steps 3, 6, 7)" in out
    assert "unfreezing" not in out
    assert "checkpoints: 2 (after steps 3, 6)" in out
    trainable, total = (int(n.replace(",", "")) for n in
                        re.search(r"trainable parameters: ([\d,]+) of ([\d,]+)", out).groups())
    assert 0 < trainable < total  # top-1 block and the (tied) head, not the whole model
    # the longest rows (up to 17 tokens) are cut to data.max_length, and the run says how many
    assert "30 of 30 training rows are longer than the length limit (data.max_length) and are cut to it" \
        in caplog.messages
    assert set(parts(out)) == {"weights", "gradients", "AdamW state", "activations (batch 4 x 12 tokens)",
                               "logits and loss", "process baseline (torch, libraries, data)"}
    assert peak(out) > 100 * 2**20  # the process baseline alone (torch) is hundreds of MB
    # the tied head trains the embedding, so every block needs a backward pass
    assert "prefix cache: off (the tied LM head is the embedding and trains; freeze lm_head)" in out
    assert not (tmp_path / "runs").exists()
    assert "step 1" not in err  # nothing trained


def test_a_peak_over_the_machines_memory_is_a_warning_with_what_needs_less(config_path, capsys, monkeypatch):
    """The dry run printed a peak beyond the machine's RAM as any other number. Now a line says so,
    with the advice an out-of-memory failure gives, and the peak stays the last line for scripts."""
    import psutil

    code, out, _ = dry_run(capsys, str(config_path))
    assert code == 0 and "warning" not in out
    real = psutil.virtual_memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real()._replace(total=2**20))
    code, out, _ = dry_run(capsys, str(config_path))
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("peak_memory_bytes: ")
    assert lines[-2] == ("warning: that is more than this machine's RAM (1.0 MB): the run would run out of memory; it "
                         "needs less with: train LoRA adapters (lora.enabled: true), turn on "
                         "compute.gradient_checkpointing, shorten data.max_length (now 12), lower optim.batch_size (now 4)")


def test_processes_share_the_ram_and_each_has_its_gpu(monkeypatch):
    """On the CPU, N processes need N peaks of the one RAM; on GPUs each needs its peak on the
    smallest of the run's GPUs, read through NVML (here a fake one of 80 and 40 GB)."""
    import types

    import psutil

    import core.memory_fit as fit

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=100))
    assert fit.overflow(60, 1, []) is None
    assert fit.overflow(60, 2, []) == fit.Overflow(120, 100, "this machine's RAM")
    sizes = {0: 80 << 30, 1: 40 << 30}
    nvml = types.SimpleNamespace(NVMLError=RuntimeError, nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=sizes[handle]))
    monkeypatch.setattr(fit, "_nvml", lambda: nvml)
    assert fit.overflow(50 << 30, 2, [0]) is None
    assert fit.overflow(50 << 30, 2, [0, 1]) == fit.Overflow(50 << 30, 40 << 30, "GPU 1's memory")


def test_a_lora_run_on_the_cpu_shows_the_freed_memory_malloc_keeps(config_path, capsys):
    """Its own part of the peak (core.memory.allocator_kept), absent without LoRA."""
    label = "freed memory the allocator keeps (on the CPU)"
    code, out, err = dry_run(capsys, str(config_path), "--set", "lora.enabled=true")
    assert code == 0, err
    assert parts(out)[label].endswith(" KB") or parts(out)[label].endswith(" MB")
    code, out, err = dry_run(capsys, str(config_path))
    assert code == 0, err
    assert label not in parts(out)


def test_unfreezing_stages_and_the_l2sp_copy_are_shown(config_path, capsys):
    """Gradual unfreezing over top-1's map: the head and the final norm first (the tied head brings
    the embedding along), then block 1; L2-SP's reference copy is a part of the peak."""
    code, out, err = dry_run(capsys, str(config_path), "--set", "freeze.unfreezing=gradual", "--set",
                             "freeze.unfreeze_every=2", "--set", "optim.l2sp_alpha=0.1")
    assert code == 0, err
    assert "unfreezing: 2 stages, one every 2 steps: the head and the top modules from step 0, model.layers.1 from step 2\n" in out
    trainable = int(re.search(r"trainable parameters: ([\d,]+)", out).group(1).replace(",", ""))
    assert parts(out)["L2-SP reference"] == parts(out)["gradients"]  # every trained weight is pretrained here
    assert trainable > 0


def test_a_frozen_prefix_is_cached_and_counted(config_path, capsys):
    """With the tied head frozen, block 0 runs once per training row: the dry run says so, with the
    cache's size (training and validation tokens x hidden x 4 bytes, in the peak) and the expected
    speed-up."""
    from core import setup
    from core.config import apply_overrides, load_config
    from core.dry_run import prepare
    from core.loss import trained_tokens

    config = apply_overrides(load_config(config_path), ['freeze.rules=[{"match": "lm_head", "train": false}]'])
    dry = prepare(config)
    assert dry.prefix.on and dry.prefix.blocks == 1
    _, data = setup.setup_data(config)  # the rows the run trains on, prepared as the dry run prepares them
    tokens = sum(len(e.input_ids) for e in data.train)
    cached = tokens + sum(len(e.input_ids) for e in data.validation)
    assert dry.prefix.bytes == dry.estimate.prefix_cache == cached * 64 * 4 > tokens * 64 * 4
    trained = sum(trained_tokens(e.labels) for e in data.train)
    assert 0 < trained < tokens  # the prompts carry no loss: logits at the labelled share only
    full = prepare(apply_overrides(config, ["compute.labelled_logits_only=false"])).estimate
    assert dry.estimate.logits < full.logits
    out = dry_run_with(capsys, config_path, config)
    assert "prefix cache: on, the embeddings and block 0 run once per row (training and validation)" in out
    # 7 steps of 8 a epoch: the run ends in the epoch that fills the cache
    assert re.search(r"expected \d+\.\dx faster steps from epoch 2, 1\.0x over 1 epoch$", out, re.MULTILINE)
    assert parts(out)["prefix cache"] == format_bytes(cached * 64 * 4)
    assert "prefix cache" not in parts(dry_run_with(capsys, config_path,
                                                    apply_overrides(config, ['compute.prefix_cache="off"'])))


def dry_run_with(capsys, config_path, config) -> str:
    from core.config import save_config

    save_config(config, config_path)
    code, out, err = dry_run(capsys, str(config_path))
    assert code == 0, err
    return out


def test_the_activations_grow_with_the_batch_and_shrink_with_checkpointing(config_path):
    from core.config import apply_overrides, load_config
    from core.dry_run import prepare

    def estimate(*overrides: str):
        return prepare(apply_overrides(load_config(config_path), list(overrides))).estimate

    small, big = estimate(), estimate("optim.batch_size=8")
    checkpointed = estimate("optim.batch_size=8", "compute.gradient_checkpointing=true")
    assert big.activations == 2 * small.activations and big.logits == 2 * small.logits
    assert checkpointed.activations < big.activations and checkpointed.logits == big.logits
    assert big.weights == small.weights == checkpointed.weights


def test_a_bad_config_exits_2_with_its_message(config_path, capsys):
    code, out, err = dry_run(capsys, str(config_path), "--set", "optim.batch_size=0")
    assert code == 2 and "optim.batch_size" in err and "Traceback" not in err and "peak_memory_bytes" not in out
    code, _, err = dry_run(capsys, "--resume", "runs/none")
    assert code == 2 and "--dry-run" in err


def test_a_run_that_could_not_start_here_fails_its_dry_run_with_the_same_message(config_path, capsys, monkeypatch,
                                                                                 caplog):
    """Four processes on a machine without a GPU: the dry run printed a plan for 4 processes and
    exited 0, while `sft-tui train` refused to start. On the CPU they may train, with the launch's
    warnings said first, and the peak is each process's."""
    from core import launch
    from core.launch import Gpus

    monkeypatch.setattr(launch, "local_gpus", lambda: Gpus({}))
    code, out, err = dry_run(capsys, str(config_path), "--set", "compute.nproc=4")
    assert code == 2 and out == ""
    assert "compute.nproc 4 asks for more processes than devices: the run has no NVIDIA GPU" in err
    assert "compute.devices: cpu" in err  # the way to try it anyway
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    code, out, _ = dry_run(capsys, str(config_path), "--set", "compute.nproc=4", "--set", "compute.devices=cpu",
                           "--set", "compute.distributed=fsdp")
    assert code == 0 and "x 4 processes" in out
    assert launch.launch_warnings(parse_config(yaml.safe_load(config_path.read_text()) | {
        "compute": {"nproc": 4, "devices": "cpu", "distributed": "fsdp"}}), cpu=True, params=lambda: 0) == [
        message for message in caplog.messages if "compute." in message]
    assert any("processes share 2 CPU cores" in message for message in caplog.messages)
    each = peak(out)
    assert f"estimated peak memory of each of the 4 processes (CPU): {format_bytes(each)} ({format_bytes(4 * each)} in all)" in out


def test_a_lora_classifier_counts_what_its_run_counts(tmp_path, tiny_model_factory, cls_file, capsys, monkeypatch):
    """peft keeps a frozen original beside the head it trains in full (modules_to_save): the dry run
    leaves it out of the total as the run's started event does, or the two disagree by the head."""
    from core.events import RunStarted, read_events

    monkeypatch.chdir(tmp_path)
    config = {"task": "classification", "model": {"name_or_path": str(tiny_model_factory("bert"))},
              "data": {"train": str(cls_file), "max_length": 12, "val_ratio": 0},
              "schedule": {"max_steps": 1}, "lora": {"enabled": True},
              "output": {"runs_dir": "runs", "run_name": "lora-cls"}}
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out, err = dry_run(capsys, str(path))
    assert code == 0, err
    trainable, total = (int(n.replace(",", "")) for n in
                        re.search(r"trainable parameters: ([\d,]+) of ([\d,]+)", out).groups())
    assert main(["train", str(path)]) == 0
    started = next(e for e in read_events(tmp_path / "runs" / "lora-cls" / "events.jsonl") if isinstance(e, RunStarted))
    assert (trainable, total) == (started.trainable_params, started.total_params)
