"""Test helpers for the torch models, kept out of conftest so that tests without torch stay cheap."""

from __future__ import annotations

import torch
from torch import Tensor

from model.encoder_decoder import Decoder, EncoderOutput


def stepwise(decoder: Decoder, enc: EncoderOutput, trg_in: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Decode ``trg_in`` the way beam search does, one ``step`` per position from ``init_state``, so tests
    can hold it against the teacher-forced ``forward`` (the contract in :class:`model.encoder_decoder.Decoder`).

    Returns ``B×T×V`` logits, ``B×T×S`` attention weights and the state after the last position.
    Runs under ``torch.no_grad``; an autocast the caller has entered still applies.
    """
    with torch.no_grad():
        state = decoder.init_state(enc)
        logits, attention = [], []
        for t in range(trg_in.size(1)):
            step_logits, step_attention, state = decoder.step(enc, trg_in[:, t], state, t)
            logits.append(step_logits)
            attention.append(step_attention)
    return torch.stack(logits, 1), torch.stack(attention, 1), state
