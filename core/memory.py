"""Memory: the estimate of what training will need, and what the process and the GPUs use now.

The TUI polls `process_memory` and `gpu_stats` while idle, so neither may import torch (seconds of
start-up) or create a CUDA context: torch is only consulted when something else already loaded it
and initialised CUDA, and the GPUs are read through NVML.
"""

from __future__ import annotations

import sys

import psutil

ADAMW_STATE_BYTES = 8
"""AdamW keeps two fp32 moments (exp_avg, exp_avg_sq) per trainable parameter."""
MASTER_COPY_BYTES = 4
"""Half-precision weights train against an fp32 master copy of each trainable parameter."""


def estimate_training_memory(
    total_params: int, trainable_params: int, param_bytes: int = 4, optimizer: str = "adamw"
) -> dict[str, int]:
    """Bytes for weights, gradients, optimizer state and their total. Activations are left out:
    they depend on batch size and sequence length, and are measured during the run instead."""
    if optimizer != "adamw":
        raise ValueError(f"no memory model for optimizer {optimizer!r}")
    weights = total_params * param_bytes
    gradients = trainable_params * param_bytes
    state = trainable_params * (ADAMW_STATE_BYTES + (MASTER_COPY_BYTES if param_bytes < 4 else 0))
    return {"weights": weights, "gradients": gradients, "optimizer": state, "total": weights + gradients + state}


def format_bytes(n: float) -> str:
    """`1.2 GB`: binary multiples with the short unit names nvidia-smi and most tools show."""
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while abs(n) >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{int(n)} B" if step == 0 else f"{n:.1f} {units[step]}"


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
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
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
