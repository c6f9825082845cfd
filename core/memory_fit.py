"""Whether a run's estimated peak memory fits where it trains: the smallest of its GPUs, or this
machine's RAM. Said before the start (the freeze map's summary, the dry run): a model too big for its
device was otherwise found out by the first step's out-of-memory error, after minutes of loading."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from core.device_usage import _memory_info, _nvml


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
