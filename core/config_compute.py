"""The compute section of a RunConfig (core.config): how a run uses its devices and their memory, and
the engine's switches that make it faster with the same numbers. Its own module beside
core.config_sections, the sections of what is trained, which had grown past 400 lines.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from core.config_sections import _invalid, _Section

Distributed = Literal["ddp", "fsdp"]


class ComputeConfig(_Section):
    """How the run uses its devices and their memory."""

    gradient_checkpointing: bool = False
    """Recompute each trained block's activations in the backward pass instead of keeping them:
    much less activation memory for about a third more compute."""
    oom_recovery: bool = True
    """When a step runs out of GPU memory, halve the micro-batch and double the accumulation (the
    same effective batch) and retry, instead of ending the run."""
    labelled_logits_only: bool = True
    """Causal LM: apply the output head and the loss only at the positions that predict an answer
    token, not at every position (the same loss and gradients: the others are masked out anyway).
    Full logits, their fp32 copy and gradients are the largest tensors of a small model's step;
    off only for a model whose forward cannot slice its logits by a mask (the run says so)."""
    last_block_cls_only: bool = True
    """Classification with a BERT-family encoder (BERT, MiniLM, RoBERTa, XLM-R, CamemBERT, ELECTRA):
    compute the last block at the first token only, the one its head reads (the same loss and
    gradients; core.cls_only). Other models run as they are."""
    unpadded_encoder: bool = True
    """Classification with a BERT-family encoder: each block computes its projections, feed-forward
    network and norms at the real tokens only, not at the padding (the same loss and gradients;
    core.unpadded). It pays most with random batches, which are mostly padding on short texts and
    which such a classifier trains in by default (data.group_by_length: auto). Other models run as
    they are."""
    prefix_cache: Literal["auto", "off"] = "auto"
    """auto: where nothing below the lowest trained block trains and the frozen blocks below it draw
    no dropout, compute their output once per row and reuse it in later epochs and evaluations (the same
    numbers; core.prefix_cache). The run's log says whether it is on, its size, or why not."""
    frozen_eval_mode: bool = False
    """Run the frozen blocks below the lowest trained one, and the embeddings, in eval mode: no
    dropout there. It changes the numbers (as asked), and lets the prefix cache serve a model whose
    frozen blocks have dropout (BERT, MiniLM)."""
    compact_vocab: Literal["auto", "off"] = "auto"
    """auto: where the input embedding trains (not tied to the output head) and the training rows use
    at most half of its rows, only those rows carry gradients and optimizer state; AdamW would move
    the others by weight decay alone, which is applied to them when the weights are saved (the same
    numbers; core.compact_vocab). One process only. The run's log says when it is on."""
    fast_dropout: Literal["auto", "off"] = "auto"
    """auto: on the CPU, draw dropout masks four elements to a random word instead of one each, about
    3x faster (a tenth of an encoder's training time); the keep probability is rounded to 1/32768 and
    the masks differ from torch's, as with another seed (core.dropout_masks). No effect on a GPU."""
    prefix_cache_max_gb: float | None = Field(None, gt=0)
    """The most memory the prefix cache may hold; unset: a quarter of the memory available on its
    device at the start. When the training rows' cached outputs would need more, the run trains
    without the cache and says so."""
    nproc: int = Field(1, ge=1, le=1024)
    """Processes that train the run data-parallel, one per GPU, started through torchrun; each takes
    optim.batch_size rows per micro-batch, so the global batch grows with them."""
    devices: str = "auto"
    """Which GPUs: auto (every GPU this machine shows), cpu (train on the CPU even where a GPU is),
    or GPU indices as nvidia-smi numbers them, e.g. 0,1."""
    distributed: Distributed = "ddp"
    """With several processes: ddp keeps a whole copy of the model on each GPU; fsdp shards weights,
    gradients and optimizer state across them, for models that do not fit on one GPU."""

    @field_validator("prefix_cache", "compact_vocab", "fast_dropout", mode="before")
    @classmethod
    def _off_word(cls, value: Any) -> Any:
        """YAML reads a bare `off` (in a file or `--set compute.prefix_cache=off`) as false: the word
        it stood for."""
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("devices")
    @classmethod
    def _device_list(cls, devices: str) -> str:
        """`auto`, `cpu`, or distinct GPU indices; spaces are dropped (`0, 1` is `0,1`)."""
        value = devices.replace(" ", "").lower()
        indices = value.split(",")
        if value in ("auto", "cpu") or (all(i.isdigit() for i in indices) and len(set(indices)) == len(indices)):
            return value
        raise _invalid("devices", "must be auto, cpu or distinct GPU indices such as 0,1",
                       "set compute.devices to auto, cpu, or GPU numbers as nvidia-smi shows them, e.g. 0,1")
