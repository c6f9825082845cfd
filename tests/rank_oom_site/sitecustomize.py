"""Loaded at start-up by every Python process whose PYTHONPATH holds this folder (tests/test_multiprocess.py
puts it there for one `sft-tui train --nproc 2`): in torchrun's process of rank $OOM_RANK, the training
loss runs out of device memory from step $OOM_STEP on, as a GPU too small for the step would. The
engine looks the loss up per step (core.loss.batch_loss_sum), so replacing it here reaches the loop."""

import os

if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("OOM_RANK"):
    import core.loss

    _real, _calls = core.loss.batch_loss_sum, []

    def batch_loss_sum(model, batch, task, **kw):
        if model.training:
            _calls.append(1)
            if len(_calls) >= int(os.environ["OOM_STEP"]):  # one micro-batch a step in that test
                import torch

                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated on rank {os.environ['RANK']})")
        return _real(model, batch, task, **kw)

    core.loss.batch_loss_sum = batch_loss_sum
