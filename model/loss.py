"""The training objective: label-smoothed cross-entropy over the real target tokens, with the plain
NLL and the correct count beside it (perplexity and accuracy), for training and validation alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import data_io
from model.vocab import PAD_ID


def token_losses(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, ...]:
    """(smoothed loss sum, NLL sum, correct count) over the real (non-pad) target tokens.

    ``logits`` are ``…×V`` for ``targets`` of shape ``…``: the padded ``B×T`` grid, or the real positions
    only (``N``, as :func:`forward_real` gives them). The NLL is kept apart from the smoothed loss because
    perplexity must be the model's real likelihood, whatever smoothing the optimisation uses."""
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = targets != PAD_ID
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = nll.masked_fill(~mask, 0.0)
    if label_smoothing > 0:
        smooth = -logp.mean(dim=-1).masked_fill(~mask, 0.0)
        loss = (1.0 - label_smoothing) * nll.sum() + label_smoothing * smooth.sum()
    else:
        loss = nll.sum()
    correct = ((logp.argmax(-1) == targets) & mask).sum()
    return loss, nll.sum().detach(), correct.detach()


def forward_real(model: nn.Module, batch: data_io.Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the real target positions only (``N×V``) and their targets (``N``): the output layer and
    the softmax never run on padding."""
    select = batch.trg_out != PAD_ID
    return model(batch.src, batch.lengths, batch.trg_in, select), batch.trg_out[select]
