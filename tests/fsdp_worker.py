"""One of two gloo processes (torchrun) for tests/test_fsdp_state.py: a tiny model sharded with
torch's own `fully_shard` (accelerate shards no CPU processes), saved, exported and resumed through
core.checkpoint and core.export, beside the same model unsharded on rank 0.

Usage: torchrun --standalone --nproc_per_node=2 tests/fsdp_worker.py MODEL_DIR OUT_DIR full|lora

Writes under OUT_DIR: sharded/ and plain/ (save_checkpoint after two steps, from the sharded model
and from the unsharded one), final-sharded/ and final-plain/ (save_final), in mode lora
final-merged/ (save_final with merge of the sharded model) and merged-plain.pt (the unsharded model
merged in memory), resumed.pt (what a fresh
sharded model and optimizer hold after load_checkpoint of sharded/, gathered) and next-sharded.pt,
next-plain.pt (the weights after one more step of each). The test compares them.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from core.checkpoint import TrainState, load_checkpoint, save_checkpoint
from core.export import save_final
from core.full_state import gather
from core.launch import exit_process


def build(model_dir: str, mode: str, shard: bool):
    """The tiny LM (with LoRA adapters in mode lora), each block and the whole sharded when asked,
    and AdamW in two groups (decay and no decay) as the engine builds it, with a constant schedule."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    blocks = model.model.layers
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)  # the adapters' random start, the same in every build and process
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if shard:
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if p.dim() >= 2], "weight_decay": 0.1, "lr_scale": 1.0},
              {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, batch: torch.Tensor) -> None:
    """Every process takes the same batch, so the sharded model's averaged gradient is the one
    process's gradient."""
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def main(model_dir: str, out: Path, mode: str) -> None:
    from transformers import AutoTokenizer

    dist.init_process_group("gloo")
    rank0 = dist.get_rank() == 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, len(tokenizer), (4, 12), generator=generator) for _ in range(3)]
    state = TrainState(step=2, epoch=0, step_in_epoch=2)

    sharded, optimizer, scheduler = build(model_dir, mode, shard=True)
    for batch in batches[:2]:
        train_step(sharded, optimizer, scheduler, batch)
    saved = save_checkpoint(out / "sharded", sharded, optimizer, scheduler, state, keep_last=1)
    save_final(sharded, tokenizer, out / "final-sharded", merge=False)
    if mode == "lora":
        save_final(sharded, tokenizer, out / "final-merged", merge=True)

    if rank0:
        plain, plain_optimizer, plain_scheduler = build(model_dir, mode, shard=False)
        for batch in batches[:2]:
            train_step(plain, plain_optimizer, plain_scheduler, batch)
        save_checkpoint(out / "plain", plain, plain_optimizer, plain_scheduler, state, keep_last=1)
        save_final(plain, tokenizer, out / "final-plain", merge=False)
        if mode == "lora":  # the merge of the model in memory, which sharded/final-merged must equal
            merged = copy.deepcopy(plain).merge_and_unload()
            torch.save({n: t.detach().clone() for n, t in merged.state_dict().items()}, out / "merged-plain.pt")

    resumed, resumed_optimizer, resumed_scheduler = build(model_dir, mode, shard=True)
    loaded = load_checkpoint(saved, resumed, resumed_optimizer, resumed_scheduler)
    assert loaded == state, loaded
    weights, optim_state = gather(resumed, resumed_optimizer)
    if rank0:
        torch.save({"weights": weights, "optimizer": optim_state,
                    "scheduler": resumed_scheduler.state_dict()}, out / "resumed.pt")

    train_step(resumed, resumed_optimizer, resumed_scheduler, batches[2])
    weights, _ = gather(resumed)
    if rank0:
        train_step(plain, plain_optimizer, plain_scheduler, batches[2])
        torch.save(weights, out / "next-sharded.pt")
        torch.save({n: t.detach().clone() for n, t in plain.state_dict().items()}, out / "next-plain.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
    exit_process(0)  # as the engine's processes end, past gloo's teardown
