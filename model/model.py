"""The model that joins an encoder and a decoder, built and initialised as the hyperparameters say.

The contract between the two halves is :mod:`model.encoder_decoder`; the architectures implementing it
are :mod:`model.rnn`, :mod:`model.cnn` and :mod:`model.transformer`, any encoder type with any decoder type.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model import cnn, rnn, transformer
from model.encoder_decoder import Decoder, Encoder, EncoderOutput
from model.hyperparameters import Hyperparameters


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
