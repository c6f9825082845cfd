"""What the process and the GPUs use now: the training screen's and the step events' memory and
utilisation figures, and the dry run's process baseline.

The TUI polls `process_memory` and `gpu_stats` while idle, so neither may import torch (seconds of
start-up) or create a CUDA context: torch is only consulted when something else already loaded it
and initialised CUDA, and the GPUs are read through NVML.
"""

from __future__ import annotations

import sys

import psutil


def process_memory() -> dict[str, float]:
    """This process's resident memory and, once CUDA is in use here, torch's per-GPU counters.

    A flat dict of numbers (`rss_bytes`, `gpu0_allocated_bytes`, ...) so that it fits the
    StepMetrics event as it is.
    """
    out: dict[str, float] = {"rss_bytes": psutil.Process().memory_info().rss}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            out[f"gpu{i}_allocated_bytes"] = torch.cuda.memory_allocated(i)
            out[f"gpu{i}_reserved_bytes"] = torch.cuda.memory_reserved(i)
            out[f"gpu{i}_max_allocated_bytes"] = torch.cuda.max_memory_allocated(i)
    return out


_nvml_ready: bool | None = None
"""Whether NVML initialised; tried once, because a machine without a GPU fails the same way each time."""


def _nvml():
    global _nvml_ready
    try:
        import pynvml
    except ImportError:
        return None
    if _nvml_ready is None:
        try:
            pynvml.nvmlInit()
            _nvml_ready = True
        except pynvml.NVMLError:
            _nvml_ready = False
    return pynvml if _nvml_ready else None


def _memory_info(nvml, handle):
    """The memory numbers nvidia-smi shows. NVML's first version counts what the driver reserves as
    used (614 MiB more than nvidia-smi on an H200); the second leaves it out. Older drivers and
    pynvml releases have only the first."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except nvml.NVMLError:
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def gpu_stats() -> list[dict]:
    """Per GPU: index, name, memory used/total in bytes and utilisation % (None where the device,
    e.g. a MIG slice, does not report it). Empty without an NVIDIA GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    stats = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        name = nvml.nvmlDeviceGetName(handle)
        memory = _memory_info(nvml, handle)
        try:
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except nvml.NVMLError:
            utilization = None
        stats.append({
            "index": i,
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_used": memory.used,
            "memory_total": memory.total,
            "utilization": utilization,
        })
    return stats
