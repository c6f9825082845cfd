"""The full weights and optimizer state of a model that FSDP2 shards across processes.

Under `compute.distributed: fsdp` each process holds a shard (a DTensor) of every parameter and of
its optimizer state, so the checkpoint and the final export cannot read them off rank 0's model as
they do for one process or DDP. torch's `torch.distributed.checkpoint.state_dict` functions gather
them (every process must call them at the same point: they are collectives) into plain tensors on
rank 0, and scatter a full state read by rank 0 back into the shards.

What they hand back is made to look as the unsharded model's own: tied parameters (an LM head
sharing the embedding) share one tensor again, so the files written from it are the same as those
of one process; and the optimizer state is keyed by position, as `Optimizer.state_dict()` keys it,
not by parameter name as torch's full state dict is. A checkpoint therefore loads the same way
whichever way it was trained, and checkpoints written before FSDP existed here still load.

Models that are not sharded never come here: single-process and DDP runs read their state directly
(core.checkpoint, core.export), as fast as before.
"""

from __future__ import annotations

from typing import Any

import torch

STATE, GROUPS = "state", "param_groups"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether several processes hold shards of `model`'s parameters (FSDP2's DTensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def is_writer() -> bool:
    """Whether this process writes the run's files: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def agree(problem: str | None) -> str | None:
    """Rank 0's `problem` (None when it has none), on every process: what rank 0 alone read decides
    for all of them, so that none waits in a collective that another has given up on."""
    import torch.distributed as dist

    holder = [problem]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
           trained_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full weights (plain CPU tensors, tied ones sharing one) and optimizer state (keyed by
    position) of a sharded model on rank 0; empty dicts on the other ranks. Collective.

    `trained_only` leaves out what does not train (a LoRA run's frozen base), so gathering it costs
    no all-gather of weights that are then thrown away."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained_only)
    if optimizer is None:
        weights, optim = get_model_state_dict(model, options=options), {}
    else:
        weights, optim = get_state_dict(model, _unwrapped(optimizer), options=options)
    if not is_writer():
        return {}, {}
    return tie(weights, model), (by_position(optim) if optim else {})


def scatter(model: torch.nn.Module, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
            optim_state: dict[str, Any], strict: bool = True) -> None:
    """Load the full `weights` and the optimizer state that rank 0 read (keyed by name: `by_name`;
    none without an optimizer) into the shards of every process; the other ranks pass empty dicts.
    Collective. `strict` False leaves parameters the weights do not name as they are (a LoRA
    checkpoint names only what trains)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    writer = is_writer()
    set_model_state_dict(model, tie(weights, model) if writer else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict))
    if optimizer is not None:
        set_optimizer_state_dict(model, _unwrapped(optimizer), optim_state if writer else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (its `.optimizer`): torch's
    functions step an optimizer that has no state yet once, with zero gradients, to create it, and
    that step must not go through accelerate's gradient scaler, whose scale it would change."""
    return getattr(optimizer, "optimizer", optimizer)


def tie(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`weights` with every name of a tied parameter holding the same tensor, as in the unsharded
    model's state dict: gathering makes one copy per name, and safetensors and transformers drop
    the duplicate names of a shared tensor only. A file written that way names one of them, and
    this fills in the others for a strict load."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for group in names.values():
        present = [n for n in group if n in weights]
        if present and len(group) > 1:
            for name in group:
                weights[name] = weights[present[0]]
    return weights


def by_position(optim_state: dict[str, Any]) -> dict[str, Any]:
    """torch's name-keyed full optimizer state in `Optimizer.state_dict()`'s layout: parameters
    numbered in the order of the groups, as one process's optimizer numbers them."""
    order = [name for group in optim_state[GROUPS] for name in group["params"]]
    position = {name: i for i, name in enumerate(order)}
    return {STATE: {position[n]: optim_state[STATE][n] for n in order if n in optim_state[STATE]},
            GROUPS: [{**g, "params": [position[n] for n in g["params"]]} for g in optim_state[GROUPS]]}


def by_name(optim_state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A position-keyed optimizer state keyed by the names of this optimizer's parameters, as
    torch's set_optimizer_state_dict takes it. Raises ValueError when its groups do not fit."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [len(g["params"]) for g in optim_state[GROUPS]]
    if saved != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"its optimizer groups hold {saved} parameters, this run's "
                         f"{[len(g['params']) for g in optimizer.param_groups]}")
    return {STATE: {order[i]: s for i, s in optim_state[STATE].items()},
            GROUPS: [{**g, "params": [order[i] for i in g["params"]]} for g in optim_state[GROUPS]]}
