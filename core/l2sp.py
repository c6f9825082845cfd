"""L2-SP (Li, Grandvalet & Davoine, 2018): regularise towards the starting point, not towards zero.

Weight decay pulls every weight towards 0, which for a pretrained weight means away from what
pretraining learned. L2-SP pulls a pretrained weight towards its value at the start of the run
(strength optim.l2sp_alpha) and a new weight (a new task head, LoRA adapters) towards 0
(optim.l2sp_beta), and replaces weight decay. Like AdamW's decay it is decoupled (Loshchilov &
Hutter): applied to the weights, scaled by each group's current learning rate, before the optimizer
step, so Adam's moments never see it:

    w <- w - lr * alpha * (w - w0)        pretrained weights (every trained tensor)
    w <- w - lr * beta * w                new weights with 2 or more dimensions (not biases or norms)

A weight that has no gradient this step (frozen until a later unfreezing stage) is left alone, as
AdamW leaves it. The reference copy w0 costs 4 bytes per trained pretrained parameter; the memory
estimate counts it (core.memory, `reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from core.freeze import base_name

NEW_WEIGHTS_ATTR = "sft_new_weights"
"""The attribute core.models.load_model sets on a model: the names of the weights its checkpoint did
not hold (a new or resized task head), which L2-SP pulls towards 0 rather than towards their start."""


def is_new_weight(model, name: str) -> bool:
    """Whether parameter `name` of `model` (peft-wrapped or not) did not come from pretraining: a LoRA
    adapter, or a weight load_model reported missing from the checkpoint."""
    return ".lora_" in name or base_name(name) in getattr(model, NEW_WEIGHTS_ATTR, frozenset())


def kept_elements(tensors: Iterable[tuple[int, int, str]], trains: Callable[[str], bool],
                  is_new: Callable[[str], bool]) -> int:
    """Elements L2-SP keeps a starting copy of: each tensor that trains and came from pretraining,
    once (tied names share it). `tensors`: (identity, elements, name) for every parameter name. The
    one rule behind the engine's count (`reference_params`) and the freeze screen's, which asks it
    of a skeleton by the map's decisions before any weight is loaded."""
    kept = {key: numel for key, numel, name in tensors if trains(name) and not is_new(name)}
    return sum(kept.values())


def reference_params(model) -> int:
    """Elements L2-SP keeps a starting copy of in a built model (freeze map and LoRA applied)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return kept_elements(((id(p), p.numel(), name) for name, p in params.items()),
                         lambda name: params[name].requires_grad, lambda name: is_new_weight(model, name))


class L2SP:
    """The regulariser of one run, over the optimizer's groups; `apply()` before each optimizer step."""

    def __init__(self, model, optimizer, alpha: float, beta: float) -> None:
        names = {id(p): name for name, p in model.named_parameters()}
        self.alpha, self.beta, self.groups = alpha, beta, []
        for group in optimizer.param_groups:
            pretrained = [p for p in group["params"] if not is_new_weight(model, names[id(p)])] if alpha else []
            new = [p for p in group["params"] if is_new_weight(model, names[id(p)]) and p.ndim >= 2] if beta else []
            self.groups.append((group, pretrained, [p.detach().clone() for p in pretrained], new))

    @classmethod
    def for_run(cls, config, model, optimizer) -> L2SP | None:
        """The run's L2-SP, None when optim.l2sp_alpha and l2sp_beta are both 0. Built before a resume
        loads its checkpoint: the reference is the pretrained start, which a resumed run reloads."""
        optim = config.optim
        return cls(model, optimizer, optim.l2sp_alpha, optim.l2sp_beta) if optim.l2sp_alpha or optim.l2sp_beta else None

    def apply(self) -> None:
        """One decoupled step of the pull, at each group's current learning rate."""
        import torch

        with torch.no_grad():
            for group, pretrained, reference, new in self.groups:
                lr = group["lr"]
                pairs = [(p, r) for p, r in zip(pretrained, reference) if p.grad is not None]
                if pairs:
                    torch._foreach_lerp_([p for p, _ in pairs], [r for _, r in pairs], lr * self.alpha)
                fresh = [p for p in new if p.grad is not None]
                if fresh:
                    torch._foreach_mul_(fresh, 1 - lr * self.beta)
