"""Whether a run's memory fits where it trains: its estimated peak on the smallest of its GPUs, or
in this machine's RAM, said before the start (the freeze map's summary, step 5, the dry run); and the
weights every process loads into RAM first, checked by the engine before it loads them. A model too
big for its device was otherwise found out by the first step's out-of-memory error, or by the
kernel's out-of-memory killer, which ends a process without a word."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from core.config import RunConfig
from core.device_usage import _memory_info, _nvml
from core.errors import UserError
from core.memory import format_bytes

MASTER_WEIGHT_BYTES = 4
"""A run loads its weights in float32, the master copy the optimizer updates (core.setup)."""


@dataclass(frozen=True)
class Overflow:
    need: int
    """Bytes the run's processes need there, by the estimate."""
    total: int
    """Bytes there are."""
    where: str
    """What holds them: "GPU 0's memory", "this machine's RAM"."""


def capacity(gpus: list[int]) -> tuple[int, str]:
    """The memory one process's peak must fit in and its name: the smallest of `gpus` (NVML indices,
    as nvidia-smi numbers them), or this machine's RAM for a run on the CPU (or where NVML cannot say)."""
    nvml = _nvml()
    if gpus and nvml is not None:
        try:
            totals = {i: _memory_info(nvml, nvml.nvmlDeviceGetHandleByIndex(i)).total for i in gpus}
        except nvml.NVMLError:
            totals = {}
        if totals:
            index = min(totals, key=totals.__getitem__)
            return totals[index], f"GPU {index}'s memory"
    return psutil.virtual_memory().total, "this machine's RAM"


def overflow(peak: int, processes: int, gpus: list[int]) -> Overflow | None:
    """Where the estimated `peak` of each of `processes` would not fit, or None: on GPUs each process
    has one of its own; on the CPU they share the RAM."""
    total, where = capacity(gpus)
    need = peak if gpus else peak * processes
    return Overflow(need, total, where) if need > total else None


def load_problem(config: RunConfig, params: int) -> UserError | None:
    """Why loading a model of `params` parameters would run this machine out of memory, or None.
    Every process of the run reads all the weights into RAM in float32 before they go to its device,
    so N processes hold N copies at once. Refused only where RAM and swap together cannot hold them
    (swap makes it slow, not impossible); QLoRA's base loads in 4 bits, onto the GPU."""
    if config.lora.enabled and config.lora.quantize != "none":
        return None
    processes, each = config.compute.nproc, MASTER_WEIGHT_BYTES * params
    total = psutil.virtual_memory().total + psutil.swap_memory().total
    if each * processes <= total:
        return None
    copies = f" in each of its {processes} processes ({format_bytes(each * processes)} in all)" if processes > 1 else ""
    return UserError(
        f"model.name_or_path: its {params:,} parameters take {format_bytes(each)} as the float32 weights a run "
        f"loads{copies}, more than this machine's memory ({format_bytes(total)}, swap included)",
        "train it where there is more memory" + (", on fewer processes (compute.nproc)" if processes > 1 else "")
        + ", or train LoRA adapters over a 4-bit base on a CUDA GPU (lora.enabled: true, lora.quantize: 4bit)",
        {"model.name_or_path": f"{format_bytes(each)} of weights to load; this machine has {format_bytes(total)}"})
