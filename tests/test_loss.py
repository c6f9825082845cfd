"""core.loss: the loss sums exactly the positions trained_tokens counts."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import torch

from core.loss import IGNORE_INDEX, batch_loss_sum, count_items, lm_loss_sum, trained_tokens

M = IGNORE_INDEX


def test_trained_tokens_skips_masked_labels_and_the_first_position():
    assert trained_tokens([5, 6, 7]) == 2  # position 0 is never predicted
    assert trained_tokens([M, M, 7, 8, M]) == 2
    assert trained_tokens([M, M]) == 0
    assert trained_tokens([]) == 0


def test_the_loss_sums_over_exactly_the_trained_tokens():
    """With uniform logits every trained position costs log(vocab): the sum counts them."""
    vocab = 11
    labels = [[M, M, 3, 4, M], [2, M, M, 5, 6]]
    logits = torch.zeros(2, 5, vocab)
    loss = lm_loss_sum(logits, torch.tensor(labels))
    expected = sum(trained_tokens(row) for row in labels) * torch.log(torch.tensor(float(vocab)))
    torch.testing.assert_close(loss, expected)


def test_count_items_is_rows_or_trained_tokens():
    rows = [SimpleNamespace(labels=[M, 1, 2]), SimpleNamespace(labels=[1, M, 3, 4])]
    assert count_items(rows, "causal-lm") == 2 + 2
    assert count_items(rows, "classification") == 2


def test_classification_loss_is_summed_over_rows():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 3))

    batch = {"input_ids": torch.ones(4, 2, dtype=torch.long), "attention_mask": torch.ones(4, 2),
             "labels": torch.tensor([0, 1, 2, 0])}
    loss, logits = batch_loss_sum(Fixed(), batch, "classification")
    torch.testing.assert_close(loss, 4 * torch.log(torch.tensor(3.0)))
    assert logits.shape == (4, 3)


def test_counting_trained_tokens_needs_no_torch():
    """The app's data preview counts trained tokens at start-up, where torch must not load."""
    code = "import sys, core.loss; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
