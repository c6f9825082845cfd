"""Checkpoints, resume and the final export of a model that FSDP2 shards across processes: two gloo
processes (tests/fsdp_worker.py under torchrun) shard a tiny LM with torch's `fully_shard` and go
through core.checkpoint and core.export, beside the same model unsharded on rank 0. What the sharded
run writes must hold the same full weights and optimizer state, in the same layout, as what one
process writes; and a fresh sharded model must take them back. Full fine-tuning and LoRA (whose
checkpoints hold only what trains) both.

Also: warnings that accelerate and torch.distributed raise during a run reach the run's events."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.events import LogMessage
from core.logs import logs_to_events
from core.manifest import list_checkpoints

WORKER = Path(__file__).with_name("fsdp_worker.py")


@pytest.fixture(scope="module", params=["full", "lora"])
def written(request, tiny_model_factory, tmp_path_factory) -> Path:
    """The folder the two processes wrote (see tests/fsdp_worker.py), for full fine-tuning and LoRA."""
    out = tmp_path_factory.mktemp(f"fsdp-{request.param}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(tiny_model_factory("llama")), str(out), request.param],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def _checkpoint(folder: Path) -> Path:
    found = list_checkpoints(folder)  # complete: its manifest agrees with its files
    assert [p.name for p in found] == ["step-2"]
    return found[0]


def _torch_load(path: Path):
    return torch.load(path, weights_only=True)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_sharded_checkpoint_holds_the_full_weights_and_optimizer_state_one_process_saves(written):
    plain, sharded = _checkpoint(written / "plain"), _checkpoint(written / "sharded")
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in plain.iterdir())
    weights, expected = load_file(sharded / "model.safetensors"), load_file(plain / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, msg=name)
    # the same names dropped for tied weights (full) or only the trained ones kept (LoRA)
    assert _metadata(sharded / "model.safetensors") == _metadata(plain / "model.safetensors")
    optimizer, expected_optimizer = _torch_load(sharded / "optimizer.pt"), _torch_load(plain / "optimizer.pt")
    assert optimizer["param_groups"] == expected_optimizer["param_groups"]  # positions, as torch numbers them
    assert list(optimizer["state"]) == list(expected_optimizer["state"]) and optimizer["state"]
    torch.testing.assert_close(optimizer["state"], expected_optimizer["state"])
    assert _torch_load(sharded / "scheduler.pt") == _torch_load(plain / "scheduler.pt")


def test_a_fresh_sharded_model_resumes_the_checkpoint_exactly(written):
    plain = _checkpoint(written / "plain")
    resumed = _torch_load(written / "resumed.pt")
    saved = load_file(plain / "model.safetensors")
    for name, tensor in saved.items():  # a LoRA checkpoint: the adapters; full: every weight
        torch.testing.assert_close(resumed["weights"][name], tensor, msg=name)
    torch.testing.assert_close(resumed["optimizer"], _torch_load(plain / "optimizer.pt"))
    assert resumed["scheduler"] == _torch_load(plain / "scheduler.pt")
    # one more step from there: the moments and step counts restored in every shard move it as
    # they move the unsharded model
    after, expected = _torch_load(written / "next-sharded.pt"), _torch_load(written / "next-plain.pt")
    assert after.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(after[name], tensor, msg=name)


def test_final_export_of_a_sharded_model_is_the_unsharded_models(written):
    plain, sharded = written / "final-plain", written / "final-sharded"
    names = sorted(p.name for p in plain.iterdir())
    assert sorted(p.name for p in sharded.iterdir()) == names
    weights_file = "adapter_model.safetensors" if "adapter_model.safetensors" in names else "model.safetensors"
    weights, expected = load_file(sharded / weights_file), load_file(plain / weights_file)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, msg=name)
    config = "adapter_config.json" if weights_file.startswith("adapter") else "config.json"
    assert json.loads((sharded / config).read_text()) == json.loads((plain / config).read_text())


def test_a_sharded_lora_model_exports_merged_as_one_process_merges_it(written):
    if not (written / "merged-plain.pt").exists():
        pytest.skip("full fine-tuning has nothing to merge")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(written / "final-merged" / "merged", dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())  # a plain model, loaded without peft
    expected = _torch_load(written / "merged-plain.pt")
    weights = merged.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, msg=name)


def test_library_warnings_reach_the_runs_events():
    """warnings.warn (as accelerate and FSDP warn) and torch.distributed's loggers, which torch gives
    stderr handlers of their own: events, not lines drawn over the app."""
    import torch.distributed  # noqa: F401 - registers torch's distributed loggers

    class Sink:
        def __init__(self) -> None:
            self.events = []

        def emit(self, event) -> None:
            self.events.append(event)

    sink, showwarning = Sink(), warnings.showwarning
    fsdp = logging.getLogger("torch.distributed.fsdp.fully_shard")
    torch_fsdp = logging.getLogger("torch.distributed.fsdp")
    own = list(torch_fsdp.handlers)
    assert any(type(h) is logging.StreamHandler for h in own)  # torch's stderr handler, where the record stops
    with logs_to_events(sink), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("FSDP is sharding nothing", UserWarning, stacklevel=1)
        fsdp.warning("reshard_after_forward is ignored")
        assert not any(type(h) is logging.StreamHandler for h in torch_fsdp.handlers)
    logged = [(e.logger, e.level, e.message) for e in sink.events if isinstance(e, LogMessage)]
    assert any(lg == "py.warnings" and "UserWarning: FSDP is sharding nothing" in m for lg, _, m in logged), logged
    assert ("torch.distributed.fsdp.fully_shard", "warning", "reshard_after_forward is ignored") in logged
    assert warnings.showwarning is showwarning  # captured only while the run lasts
    assert torch_fsdp.handlers == own  # torch's own handler is back
