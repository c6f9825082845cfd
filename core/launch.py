"""How a run gets its processes and devices: the GPUs it may use, whether the config fits them, and
what its launch needs (the environment of its processes, accelerate's options).

`launch_problems` is the one check, asked by the app on its UI thread (the problems that keep Start
off), by the command line before it starts torchrun (exit 2), and by the engine itself (the check
before anything loads, for a torchrun command that a user wrote). It reads the GPUs through NVML
(core.memory), which creates no CUDA context and imports no torch: a check costs microseconds and
takes no GPU memory from the run it guards.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from core.config import RunConfig, precision_problem
from core.control import Control
from core.errors import UserError
from core.device_usage import _nvml

FSDP_MIN_PARAMS = 100_000_000
"""Below this a model, with its gradients and AdamW state (16 bytes a parameter, 1.6 GB), fits on
any training GPU: sharding it only adds communication, and DDP trains it faster."""


@dataclass(frozen=True)
class Gpus:
    """The NVIDIA GPUs this process may use, by NVML index (nvidia-smi's numbers), and whether each
    computes in bf16 (compute capability 8.0, Ampere, or newer)."""

    bf16: dict[int, bool]

    @property
    def indices(self) -> list[int]:
        return sorted(self.bf16)


def local_gpus() -> Gpus:
    """The GPUs of this machine that CUDA_VISIBLE_DEVICES leaves visible (all of them when it is
    unset; a list of UUIDs is not mapped and leaves all). None without NVML or an NVIDIA GPU."""
    nvml = _nvml()
    found: dict[int, bool] = {}
    if nvml is not None:
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                major, _ = nvml.nvmlDeviceGetCudaComputeCapability(nvml.nvmlDeviceGetHandleByIndex(i))
                found[i] = major >= 8
        except nvml.NVMLError:
            pass  # a GPU that fell off the bus: the ones read so far
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if all(e.lstrip("-").isdigit() for e in entries):
            picked = []
            for e in entries:  # CUDA stops at the first index that is not a device
                if int(e) not in found:
                    break
                picked.append(int(e))
            found = {i: found[i] for i in picked}
    return Gpus(found)


def run_gpus(config: RunConfig, gpus: Gpus) -> list[int]:
    """The GPUs the run trains on: none for `devices: cpu`, all for auto, else the listed ones."""
    devices = config.compute.devices
    if devices == "cpu":
        return []
    if devices == "auto":
        return gpus.indices
    return [int(i) for i in devices.split(",")]


def launch_problems(config: RunConfig, gpus: Gpus, in_process: bool = False) -> list[UserError]:
    """Why the run cannot start on these GPUs, each naming its field with a hint; empty when it can.
    `in_process`: the app trains in its own thread (`sft-tui --in-process`), which is one process
    whose CUDA devices were fixed when it started, so neither several processes nor a GPU list work."""
    compute, problems = config.compute, []
    if in_process and compute.nproc > 1:
        problems.append(UserError(
            f"compute.nproc {compute.nproc} needs processes of their own, but --in-process trains in the app's thread",
            "set compute.nproc: 1, or start sft-tui without --in-process", {"compute.nproc": "--in-process trains one process"}))
    if in_process and compute.devices not in ("auto", "cpu"):
        problems.append(UserError(
            f"compute.devices {compute.devices} picks the GPUs of the processes sft-tui starts, but --in-process trains in the app's "
            "own process", "set compute.devices: auto or cpu, or start sft-tui without --in-process",
            {"compute.devices": "--in-process trains on the app's own devices"}))
        return problems
    chosen = run_gpus(config, gpus)
    missing = [i for i in chosen if i not in gpus.bf16]
    have = f"GPUs {', '.join(map(str, gpus.indices))}" if gpus.indices else "no NVIDIA GPU"
    if missing:
        problems.append(UserError(
            f"compute.devices names GPU {', '.join(map(str, missing))}, which this machine does not have ({have})",
            "set compute.devices to auto, cpu, or indices that nvidia-smi lists",
            {"compute.devices": f"no GPU {', '.join(map(str, missing))} here ({have})"}))
    elif compute.nproc > max(len(chosen), 1) and compute.devices != "cpu":
        where = f"{len(chosen)} GPU(s) ({', '.join(map(str, chosen))})" if chosen else "no NVIDIA GPU"
        problems.append(UserError(
            f"compute.nproc {compute.nproc} asks for more processes than devices: the run has {where}",
            f"set compute.nproc to at most {len(chosen)}" if chosen else
            "set compute.nproc: 1, or compute.devices: cpu to run the processes on the CPU (slower; for trying a config)",
            {"compute.nproc": f"{compute.nproc} processes but {where}"}))
    if not missing and (error := precision_problem(config.precision, bool(chosen), all(gpus.bf16[i] for i in chosen))):
        problems.append(error)
    return problems


def check_launch(config: RunConfig) -> None:
    """Raise the first launch problem of `config` on this machine."""
    if problems := launch_problems(config, local_gpus()):
        raise problems[0]


def launch_env(config: RunConfig) -> dict[str, str]:
    """What the environment of the run's processes needs: the chosen GPUs, numbered from 0 for them
    by CUDA_VISIBLE_DEVICES. It must be set before the process first touches CUDA."""
    devices = config.compute.devices
    return {} if devices in ("auto", "cpu") else {"CUDA_VISIBLE_DEVICES": devices}


def world_size() -> int:
    """How many processes train this run: torchrun tells each of them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def exit_process(code: int) -> NoReturn:
    """End one of a run's several processes with `code` once its train() has returned (its files,
    events and trackers closed), skipping the interpreter's teardown. Left to it, gloo's threads
    still held the process group's last work while Python and C++ objects were destroyed, and now and
    then a rank that had finished was killed by SIGABRT ("terminate called without an active
    exception"), which torchrun reports as the run's failure: two gloo processes that end after an
    all_reduce and a barrier did so in 13 of 30 runs on a 2-core machine, in none of 30 that end
    here. NCCL's destroy would be collective (a hang when a peer has failed), so none is called: the
    process's end frees what the group held."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def accelerator_options(config: RunConfig) -> dict:
    """Arguments of the engine's Accelerator for `config`, once the launch checks pass: the CPU when
    asked or when no GPU is there (torchrun's processes would otherwise each train alone), and
    accelerate's FSDP plugin for `distributed: fsdp` across several processes."""
    check_launch(config)
    if config.compute.nproc > 1 and world_size() == 1:
        raise UserError(f"compute.nproc is {config.compute.nproc}, but this engine was started as one process",
                        "start it with `sft-tui train CONFIG` or from the app (without --in-process): they "
                        "start the processes through torchrun", {"compute.nproc": "needs a torchrun launch"})
    cpu = config.compute.devices == "cpu" or not local_gpus().indices
    if os.environ.get("RANK", "0") == "0":  # said once, not by every process
        for warning in launch_warnings(config, cpu, lambda: model_params(config)):
            logging.getLogger("core.engine").warning(warning)
    return {"cpu": cpu, "fsdp_plugin": fsdp_plugin(config, cpu) if world_size() > 1 else None}


class AgreedControl(Control):
    """The Control of one of several processes: at each poll every process takes rank 0's commands
    (pause, resume, stop, save now, evaluate now), which come from its run folder or its signals.

    The loop polls between optimizer steps and while paused, at the same points on every process;
    a save or an evaluation is collective work and a pause must hold every process (one that went
    on alone would wait in the next step's gradient exchange until it timed out), so each of them
    has to happen on all processes at the same step. A stop asked on any process stops them all
    (the loop agrees on it as well)."""

    def __init__(self, local: Control) -> None:
        super().__init__()
        self.local = local

    def stop(self) -> None:
        self.local.stop()
        super().stop()

    def poll(self) -> None:
        from accelerate.utils import broadcast_object_list

        local = self.local
        local.poll()
        state = [(local.paused, local.stop_requested, local.take_save_request(), local.take_eval_request())]
        broadcast_object_list(state)  # rank 0's, to every process
        paused, stop, save, evaluate = state[0]
        self.pause() if paused else self.resume()
        for asked, command in ((stop, super().stop), (save, self.save_now), (evaluate, self.eval_now)):
            if asked:
                command()


def fsdp_plugin(config: RunConfig, cpu: bool = False):
    """accelerate's FSDP2 plugin, wrapping each transformer block (the model's `_no_split_modules`)
    and saving full state dicts, or None for DDP, and for CPU processes, which accelerate does not
    shard (launch_warnings says so before the run)."""
    if config.compute.distributed != "fsdp" or cpu:
        return None
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          state_dict_type="FULL_STATE_DICT")


def launch_warnings(config: RunConfig, cpu: bool, params: Callable[[], int | None]) -> list[str]:
    """What the run's processes would do other than the config asks, or slower than it could, said
    before it starts (the dry run, the app's step 5) and in its log: FSDP on CPU processes trains as
    DDP, FSDP of a model too small to shard, more CPU processes than cores. `params` counts the
    model's parameters, or None where they are not known yet; it is asked only under FSDP."""
    compute, warnings = config.compute, []
    if compute.nproc > 1 and compute.distributed == "fsdp":
        if cpu:
            warnings.append("compute.distributed fsdp shards across GPUs: processes on the CPU train as ddp")
        elif (count := params()) is not None and count < FSDP_MIN_PARAMS:
            warnings.append(f"compute.distributed fsdp: the model has {count:,} parameters, too few to gain from "
                            f"sharding (below {FSDP_MIN_PARAMS:,}); distributed: ddp trains it faster")
    if cpu and compute.nproc > (cores := usable_cores()):
        warnings.append(f"compute.nproc {compute.nproc}: {compute.nproc} processes share {cores} CPU core"
                        f"{'s' * (cores != 1)} and slow each other down; {cores} or fewer train faster")
    return warnings


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_params(config: RunConfig) -> int | None:
    """The model's parameter count from its structure on the meta device (no weights read), or None
    when it cannot be built here (the model's own load then says why)."""
    from core.models import build_skeleton

    try:
        return sum(p.numel() for p in build_skeleton(config.model, config.task).parameters())
    except UserError:
        return None
