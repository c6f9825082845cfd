"""What a run out of device memory is told: why its micro-batch cannot be halved (compute.oom_recovery),
and what would make a new run fit. The engine halves and retries (core.engine); the words live here."""

from __future__ import annotations

from pathlib import Path

from core.config import RunConfig
from core.errors import UserError
from core.runs import RunPaths, how_to_go_on


def why_not_halved(size: int, oom_recovery: bool, processes: int) -> str:
    """Why a step out of memory with micro-batches of `size` rows ends the run."""
    if size == 1:
        return "with micro-batches of 1 row, which cannot be halved"
    if not oom_recovery:
        return f"with micro-batches of {size} rows (compute.oom_recovery is off)"
    return f"with micro-batches of {size} rows on one of {processes} processes (halving works on one only)"


def step_advice(config: RunConfig, size: int) -> list[str]:
    """What makes a step fit: LoRA and checkpointing (each when off), shorter rows, and a smaller
    batch (no help at 1 row)."""
    return [*([] if config.lora.enabled else ["train LoRA adapters (lora.enabled: true)"]),
            *([] if config.compute.gradient_checkpointing else ["turn on compute.gradient_checkpointing"]),
            f"shorten data.max_length (now {config.data.max_length})",
            *([f"lower optim.batch_size (now {config.optim.batch_size})"] if size > 1 else [])]


def out_of_memory(step: int, why: str, advice: list[str], last_checkpoint: Path | None, run_dir: Path,
                  memory: str = "device memory") -> UserError:
    """The failure of a step out of `memory`: what would make a run fit, and that the last
    checkpoint still resumes this one as it was (on a device with more free memory)."""
    kept = (f"; or, where more memory is free, {how_to_go_on(RunPaths(run_dir), resumable=True)}: its last "
            f"checkpoint ({last_checkpoint.name}) holds it as it was" if last_checkpoint else "")
    return UserError(f"out of {memory} at step {step} {why}",
                     "start a new run that needs less memory: " + ", ".join(advice) + kept)


def host_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is torch's CPU allocator out of memory: a plain RuntimeError, not the
    OutOfMemoryError of a device, which read as "this looks like a bug", with a traceback."""
    return type(err) is RuntimeError and "DefaultCPUAllocator: can't allocate memory" in str(err)
