"""The training objective: label-smoothed cross-entropy as torch computes it, padding ignored, and the
plain NLL kept apart for perplexity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.loss import token_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_losses_match_torch_cross_entropy_and_ignore_padding(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(1, 11, (3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0
    loss, nll, correct = token_losses(logits, targets, smoothing)
    expected = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=0, reduction="sum",
                               label_smoothing=smoothing)
    assert torch.allclose(loss, expected, atol=1e-4)
    plain = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=0, reduction="sum")
    assert torch.allclose(nll, plain, atol=1e-4)  # perplexity never sees the smoothing
    mask = targets != 0
    assert int(correct) == int(((logits.argmax(-1) == targets) & mask).sum())
