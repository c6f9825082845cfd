"""Dropout masks drawn from 15-bit slices of random words on the CPU (`compute.fast_dropout`).

On the CPU every dropout fills its mask with `bernoulli_(1 - p)`: nn.Dropout, F.dropout, peft's
LoRA dropout, and the dropout inside scaled_dot_product_attention's math path (its fused CPU kernel
takes none). torch draws one double from its Mersenne Twister for each element: about 14 ns an
element, 11-14% of a MiniLM fine-tune's CPU time (BENCHMARKS.md).

`fast_dropout` replaces that kernel, for the CPU only and while a run trains, with one that draws a
64-bit word for four elements (`random_`, from the same generator, so the seed and a resume's saved
RNG state govern it as before) and compares 15-bit slices of it with the keep probability, in
element-wise ops that use every core. The keep probability is rounded to a multiple of 1/32768
(p = 0.1 keeps 0.899994 of the elements instead of 0.9: the output's expectation is 0.999993 of the
input's), and the masks are other masks than torch's: a run's numbers differ from the same run with
it off as they would with another seed (tests/test_dropout_masks.py checks the masks' statistics).
The GPU's dropout is a fused kernel already and is left alone.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager

import torch

log = logging.getLogger("core.engine")
"""The engine's logger: whether the run draws fast dropout masks is part of its start."""

_BITS = 15
_LEVELS = 1 << _BITS
_lock = threading.Lock()
_users = 0
_library: torch.library.Library | None = None


def _wanted(config, device) -> bool:
    """Whether a run on `device` draws its dropout masks here: compute.fast_dropout and a CPU."""
    return config.compute.fast_dropout == "auto" and torch.device(device).type == "cpu"


@contextmanager
def fast_dropout(config, device):
    """Draw the CPU's Bernoulli masks with `_bernoulli_` inside the block where `_wanted`.

    The kernel is one registration for the whole process; runs that overlap in one process (tests,
    a notebook) share it, and it leaves when the last of them ends."""
    if not _wanted(config, device):
        yield
        return
    _enter()
    log.info("fast dropout masks on: 15-bit slices of random words, about 3x faster on the CPU "
             "(compute.fast_dropout: off draws torch's own)")
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _users, _library
    with _lock:
        if _users == 0:
            _library = torch.library.Library("aten", "IMPL")
            with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
                warnings.simplefilter("ignore")
                _library.impl("bernoulli_.float", _bernoulli_, "CPU")
        _users += 1


def _leave() -> None:
    global _users, _library
    with _lock:
        _users -= 1
        if _users == 0:
            _library = None  # its finalizer takes the kernel out: torch's own is back


def _bernoulli_(self: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """`self.bernoulli_(p)`: each element 1 with probability p (to 1/32768), else 0."""
    if not 0 <= p <= 1:
        raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
    threshold = round(p * _LEVELS)
    if threshold == _LEVELS:  # every slice is under it, and int16 cannot hold it
        return self.fill_(1)
    n = self.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=generator)  # 63 random bits each
    slices = words.view(torch.int16)[:n].bitwise_and_(_LEVELS - 1)  # the top bit of each 16 dropped
    return torch.lt(slices.view(self.shape), threshold, out=self)  # lt casts into self: 2x cheaper than a bool copy
