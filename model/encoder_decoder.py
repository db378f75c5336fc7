"""The encoder–decoder contract every architecture implements: what an encoder gives a decoder, and
the two steps a decoder offers (teacher-forced ``forward`` and incremental ``step``).

Encoders and decoders are separate modules with one small interface so that any encoder type can
feed any decoder type (the built-in algorithm lets ``encoder_type`` and ``decoder_type`` differ), and
so that one beam search drives every architecture through :meth:`Decoder.step`.

Conventions (all tensors batch-first):

- ``src``: ``B×S`` int64 source ids, padded with ``PAD_ID`` (0), each sentence ending in ``</s>``.
- ``lengths``: ``B`` int64, real tokens per source sentence (``</s>`` included).
- ``trg_in``: ``B×T`` int64 decoder input: ``<s>`` followed by the target ids, padded with 0.
- A decoder state is a ``dict[str, Tensor]`` whose tensors all have the batch (or batch × beam)
  dimension first, so that :func:`reorder_state` can follow beam search's back-pointers generically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from model.vocab import PAD_ID


@dataclass
class EncoderOutput:
    """What a decoder may use of the source: states, the padding mask and architecture extras."""

    states: Tensor  # B×S×D
    mask: Tensor  # B×S bool, True at real tokens
    lengths: Tensor  # B int64
    extras: dict[str, Tensor] = field(default_factory=dict)  # batch-first, e.g. cnn "values", rnn "final"

    def index_select(self, index: Tensor) -> EncoderOutput:
        """Rows of the batch in a new order (or repeated): how beam search expands and reorders."""
        return EncoderOutput(
            states=self.states.index_select(0, index),
            mask=self.mask.index_select(0, index),
            lengths=self.lengths.index_select(0, index),
            extras={k: v.index_select(0, index) for k, v in self.extras.items()},
        )


class Encoder(nn.Module):
    """Maps padded source ids to states. Subclasses set ``output_size`` and ``embedding``."""

    output_size: int
    embedding: nn.Embedding

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:  # pragma: no cover - interface
        raise NotImplementedError


class Decoder(nn.Module):
    """Teacher-forced ``forward`` for training, incremental ``step`` for search.

    ``forward(enc, trg_in)[:, t]`` must equal the logits of the ``t``-th ``step`` fed the same
    prefix (up to float error): training and decoding see the same model.
    Subclasses set ``embedding`` (target ids → vectors) and ``output_layer`` (an ``nn.Linear`` to the
    target vocabulary), which :class:`Seq2Seq` may tie.
    """

    embedding: nn.Embedding
    output_layer: nn.Linear
    # State entries computed from the source only (projected keys/values), never changed by a step: every row
    # of a sentence's beam holds the same, so following back-pointers within the beam leaves them as they are.
    static_state: frozenset[str] = frozenset()

    def forward(self, enc: EncoderOutput, trg_in: Tensor,
                select: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        """``B×T×V`` logits; with ``select`` (``B×T`` bool) only those positions' logits, ``N×V`` in
        row-major order. Training selects the real target positions: the output layer is the largest
        matrix product of the model, and padding positions would only be thrown away by the loss."""
        raise NotImplementedError

    def init_state(self, enc: EncoderOutput) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def step(
        self, enc: EncoderOutput, prev: Tensor, state: dict[str, Tensor], position: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:  # pragma: no cover - interface
        """One target position: ``prev`` (``B``) are the ids at ``position`` of ``trg_in`` (``<s>``
        at 0). Returns ``B×V`` logits, ``B×S`` attention weights over the source (rows sum to 1 over
        real tokens) and the new state."""
        raise NotImplementedError


def reorder_state(state: dict[str, Tensor], index: Tensor, static: frozenset[str] = frozenset(),
                  keep: Tensor | None = None) -> dict[str, Tensor]:
    """Rows of the state in ``index`` order (beam search's back-pointers). Entries in ``static`` are the
    same for every row of a sentence, so only ``keep`` (the rows of the sentences still searched, when some
    left) applies to them: copying them every step is most of what a step would otherwise move."""
    out = {}
    for k, v in state.items():
        if k not in static:
            out[k] = v.index_select(0, index)
        else:
            out[k] = v if keep is None else v.index_select(0, keep)
    return out


def source_mask(src: Tensor) -> Tensor:
    return src != PAD_ID


def selected(x: Tensor, select: Tensor | None) -> Tensor:
    """``x`` (``B×T×…``) at the ``select``ed positions (``N×…``), or all of it."""
    return x if select is None else x[select]
