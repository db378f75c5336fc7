"""The encoder–decoder contract every architecture implements, and the model that joins them.

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

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model.hyperparameters import Hyperparameters
from model.vocab import PAD_ID

ARCHITECTURES = ("rnn", "cnn", "transformer")


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


class Seq2Seq(nn.Module):
    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        return self.encoder(src, lengths)

    def forward(self, src: Tensor, lengths: Tensor, trg_in: Tensor, select: Tensor | None = None) -> Tensor:
        return self.decoder(self.encoder(src, lengths), trg_in, select)


def build_model(hp: Hyperparameters, source_vocab_size: int, target_vocab_size: int) -> Seq2Seq:
    """The model the hyperparameters describe, initialised per ``weight_init_type``."""
    from model import cnn, rnn, transformer

    encoders = {"rnn": rnn.RnnEncoder, "cnn": cnn.CnnEncoder, "transformer": transformer.TransformerEncoder}
    decoders = {"rnn": rnn.RnnDecoder, "cnn": cnn.CnnDecoder, "transformer": transformer.TransformerDecoder}
    encoder = encoders[hp.encoder_type](hp, source_vocab_size)
    decoder = decoders[hp.decoder_type](hp, target_vocab_size, encoder.output_size)
    model = Seq2Seq(encoder, decoder)
    initialize(model, hp)
    if hp.weight_tying:
        tie_weights(model, hp, source_vocab_size, target_vocab_size)
    return model


def tie_weights(model: Seq2Seq, hp: Hyperparameters, source_vocab_size: int, target_vocab_size: int) -> None:
    """Share parameters as ``weight_tying_type`` says; shapes must agree, and the error says which
    hyperparameters to change when they do not."""
    kind = hp.weight_tying_type
    trg_emb = model.decoder.embedding.weight
    if "src_trg" in kind:
        src_emb = model.encoder.embedding.weight
        if src_emb.shape != trg_emb.shape:
            raise ValueError(
                f"weight_tying_type={kind} needs one joint vocabulary and equal embedding sizes: source "
                f"embedding is {tuple(src_emb.shape)}, target {tuple(trg_emb.shape)} (vocab sizes "
                f"{source_vocab_size}/{target_vocab_size}; build the channels with --joint-vocab)"
            )
        model.encoder.embedding.weight = model.decoder.embedding.weight
    if kind.endswith("softmax"):
        out = model.decoder.output_layer.weight
        if out.shape != trg_emb.shape:
            raise ValueError(
                f"weight_tying_type={kind}: the output layer is {tuple(out.shape)} but the target embedding "
                f"is {tuple(trg_emb.shape)}; the decoder's output size must equal num_embed_target "
                f"(for rnn: rnn_num_hidden == num_embed_target)"
            )
        model.decoder.output_layer.weight = model.decoder.embedding.weight


def initialize(model: nn.Module, hp: Hyperparameters) -> None:
    """MXNet-style initialisation as the built-in algorithm does it: ``xavier`` draws uniformly from
    ``±sqrt(weight_init_scale / fan)`` with fan per ``xavier_factor_type``; ``uniform`` from
    ``±weight_init_scale``. Matrices and embeddings only; biases start at zero, norms at one."""
    for name, param in model.named_parameters():
        if param.dim() < 2:
            if name.endswith("bias"):
                nn.init.zeros_(param)
            continue
        if hp.weight_init_type == "uniform":
            bound = abs(hp.weight_init_scale)
        else:
            fan_out = param.shape[0]
            fan_in = param[0].numel()
            fan = {"in": fan_in, "out": fan_out, "avg": (fan_in + fan_out) / 2}[hp.xavier_factor_type]
            bound = math.sqrt(hp.weight_init_scale / fan)
        with torch.no_grad():
            param.uniform_(-bound, bound)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def source_mask(src: Tensor) -> Tensor:
    return src != PAD_ID


def selected(x: Tensor, select: Tensor | None) -> Tensor:
    """``x`` (``B×T×…``) at the ``select``ed positions (``N×…``), or all of it."""
    return x if select is None else x[select]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
