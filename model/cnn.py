"""Convolutional encoder and decoder (``encoder_type=cnn`` / ``decoder_type=cnn``): Gehring et al. 2017,
"Convolutional Sequence to Sequence Learning" (ConvS2S), as Sockeye implements it for the built-in algorithm.

Why the pieces are there:

- Learned positional embeddings, because convolutions alone only see relative order within a kernel.
- Every residual sum is scaled by ``sqrt(0.5)`` so the variance of the activations stays constant with depth.
- Encoder padding is zeroed before every convolution: a centred kernel would otherwise read padding into real
  positions and a sentence's states would depend on what it is batched with.
- The decoder's convolutions are causal (left padding ``k - 1``), so teacher-forced training and incremental
  decoding see the same model; :meth:`CnnDecoder.step` keeps only the last ``k - 1`` inputs of each block.
- Attention values are ``z + e`` (encoder output plus its input embedding), queries mix in the target embedding,
  and the context is rescaled by ``sqrt(source length)`` to undo the shrinking effect of averaging — all as in
  the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.encoder_decoder import Decoder, Encoder, EncoderOutput, selected
from model.hyperparameters import Hyperparameters
from model.vocab import PAD_ID

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "glu": lambda x: F.glu(x, dim=1),  # convolutions are channel-first: B×2H×T → B×H×T
    "relu": F.relu,
    "softrelu": F.softplus,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

SQRT_HALF = math.sqrt(0.5)


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"cnn_activation_type must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def _positions(length: int, table_size: int, device: torch.device) -> Tensor:
    """Positions ``0..length-1``; those past the learned table reuse its last row rather than crash,
    so a sentence longer than ``max_seq_len_*`` still decodes (the data pipeline normally truncates)."""
    return torch.arange(length, device=device).clamp(max=table_size - 1)


def _conv(hp: Hyperparameters, kernel_width: int) -> nn.Conv1d:
    """GLU halves its input, so its convolution produces twice the channels."""
    channels = hp.cnn_num_hidden * (2 if hp.cnn_activation_type == "glu" else 1)
    return nn.Conv1d(hp.cnn_num_hidden, channels, kernel_width)


class CnnEncoder(Encoder):
    """Embedding + learned positions → ``num_layers_encoder`` gated convolution blocks.

    ``states`` (``z``, padding zeroed) are the attention keys; ``extras["values"] = z + e`` the values.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int) -> None:
        super().__init__()
        _check_positive(
            cnn_num_hidden=hp.cnn_num_hidden,
            cnn_kernel_width_encoder=hp.cnn_kernel_width_encoder,
            num_layers_encoder=hp.num_layers_encoder,
        )
        self.activation = _activation(hp.cnn_activation_type)
        hidden = hp.cnn_num_hidden
        self.output_size = hidden
        self.kernel_width = hp.cnn_kernel_width_encoder
        self.embedding = nn.Embedding(vocab_size, hp.num_embed_source, padding_idx=PAD_ID)
        self.pos_embedding = nn.Embedding(hp.max_seq_len_source + 2, hp.num_embed_source)
        self.embed_dropout = nn.Dropout(hp.embed_dropout_source)
        self.embed_proj = nn.Linear(hp.num_embed_source, hidden)
        self.hidden_dropout = nn.Dropout(hp.cnn_hidden_dropout)
        self.convs = nn.ModuleList(_conv(hp, self.kernel_width) for _ in range(hp.num_layers_encoder))

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        seq_len = src.size(1)
        mask = torch.arange(seq_len, device=src.device)[None, :] < lengths[:, None]  # B×S
        keep = mask.unsqueeze(-1)  # B×S×1
        pos = _positions(seq_len, self.pos_embedding.num_embeddings, src.device)
        emb = self.embed_dropout(self.embedding(src) + self.pos_embedding(pos)[None])
        e = self.embed_proj(emb)  # B×S×H
        x = e
        # Centred "same" padding; for an even width the extra column goes to the right.
        left = (self.kernel_width - 1) // 2
        right = self.kernel_width - 1 - left
        for conv in self.convs:
            h = self.hidden_dropout(x).masked_fill(~keep, 0.0)
            h = F.pad(h.transpose(1, 2), (left, right))  # B×H×(S+k-1)
            y = self.activation(conv(h)).transpose(1, 2)  # B×S×H
            x = (x + y) * SQRT_HALF
        z = x.masked_fill(~keep, 0.0)
        values = (z + e).masked_fill(~keep, 0.0)
        return EncoderOutput(states=z, mask=mask, lengths=lengths, extras={"values": values})


class CnnDecoder(Decoder):
    """Causal gated convolutions, each block followed by its own dot-product attention over the source.

    Works with any encoder: keys are ``enc.states`` (projected when their size differs from
    ``cnn_num_hidden``), values ``enc.extras["values"]`` when a CNN encoder supplies them, else the keys.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int, encoder_size: int) -> None:
        super().__init__()
        _check_positive(
            cnn_num_hidden=hp.cnn_num_hidden,
            cnn_kernel_width_decoder=hp.cnn_kernel_width_decoder,
            num_layers_decoder=hp.num_layers_decoder,
        )
        self.activation = _activation(hp.cnn_activation_type)
        hidden = hp.cnn_num_hidden
        self.hidden_size = hidden
        self.num_layers = hp.num_layers_decoder
        self.kernel_width = hp.cnn_kernel_width_decoder
        self.embedding = nn.Embedding(vocab_size, hp.num_embed_target, padding_idx=PAD_ID)
        self.pos_embedding = nn.Embedding(hp.max_seq_len_target + 2, hp.num_embed_target)
        self.embed_dropout = nn.Dropout(hp.embed_dropout_target)
        self.embed_proj = nn.Linear(hp.num_embed_target, hidden)
        self.encoder_proj: nn.Linear | None = nn.Linear(encoder_size, hidden) if encoder_size != hidden else None
        self.hidden_dropout = nn.Dropout(hp.cnn_hidden_dropout)
        self.convs = nn.ModuleList(_conv(hp, self.kernel_width) for _ in range(self.num_layers))
        self.attention_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(self.num_layers))
        self.hidden_to_embed = nn.Linear(hidden, hp.num_embed_target)
        self.output_dropout = nn.Dropout(hp.cnn_hidden_dropout)
        # num_embed_target wide, so that weight tying with the target embedding has matching shapes.
        self.output_layer = nn.Linear(hp.num_embed_target, vocab_size)
        self.static_state = frozenset({"keys", "values"})

    # --- shared pieces: forward and step call the same code so they cannot drift apart ---

    def _memory(self, enc: EncoderOutput) -> tuple[Tensor, Tensor]:
        """Attention keys and values in the decoder's width (B×S×H each)."""
        keys = enc.states
        values = enc.extras.get("values", keys)
        if self.encoder_proj is not None:
            keys = self.encoder_proj(keys)
            values = keys if "values" not in enc.extras else self.encoder_proj(values)
        return keys, values

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        """``g``: target embedding + learned position, projected to H. ``ids`` B×T, ``positions`` T."""
        pos = positions.clamp(max=self.pos_embedding.num_embeddings - 1)
        return self.embed_proj(self.embed_dropout(self.embedding(ids) + self.pos_embedding(pos)[None]))

    def _attend(
        self, layer: int, h: Tensor, g: Tensor, keys: Tensor, values: Tensor, enc: EncoderOutput
    ) -> tuple[Tensor, Tensor]:
        """ConvS2S attention for ``h`` (B×T×H): returns the context (B×T×H) and float32 weights (B×T×S)."""
        query = (self.attention_proj[layer](h) + g) * SQRT_HALF
        # Scores and softmax in float32 even under bf16 autocast (which would otherwise downcast the bmm):
        # unscaled dot products over H channels are large, and bf16 would flatten the distribution.
        with torch.autocast(device_type=query.device.type, enabled=False):
            scores = torch.bmm(query.float(), keys.float().transpose(1, 2))  # B×T×S
            scores = scores.masked_fill(~enc.mask[:, None, :], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.to(values.dtype), values)
        # Averaging over s real tokens shrinks the context's variance; ConvS2S multiplies by s * sqrt(1/s).
        scale = enc.lengths.to(torch.float32).clamp(min=1.0).sqrt()[:, None, None]
        return context * scale.to(context.dtype), weights

    def _block_output(self, x: Tensor, conv_out: Tensor, layer: int, g: Tensor, keys: Tensor, values: Tensor,
                      enc: EncoderOutput) -> tuple[Tensor, Tensor]:
        h = self.activation(conv_out).transpose(1, 2)  # B×T×H
        context, weights = self._attend(layer, h, g, keys, values, enc)
        h = (h + context) * SQRT_HALF
        return (x + h) * SQRT_HALF, weights

    def _logits(self, x: Tensor) -> Tensor:
        return self.output_layer(self.output_dropout(self.hidden_to_embed(x)))

    # --- the Decoder interface ---

    def forward(self, enc: EncoderOutput, trg_in: Tensor, select: Tensor | None = None) -> Tensor:
        logits, _ = self.forward_with_attention(enc, trg_in, select)
        return logits

    def forward_with_attention(self, enc: EncoderOutput, trg_in: Tensor,
                               select: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits (B×T×V, or N×V at ``select``) and the last layer's attention (B×T×S,
        float32), e.g. for alignments."""
        keys, values = self._memory(enc)
        g = self._embed(trg_in, torch.arange(trg_in.size(1), device=trg_in.device))
        x = g
        weights = g.new_zeros(0)
        for layer, conv in enumerate(self.convs):
            h = F.pad(self.hidden_dropout(x).transpose(1, 2), (self.kernel_width - 1, 0))  # causal
            x, weights = self._block_output(x, conv(h), layer, g, keys, values, enc)
        return self._logits(selected(x, select)), weights

    def init_state(self, enc: EncoderOutput) -> dict[str, Tensor]:
        """Projected keys/values once per sentence, and per layer a window of the last ``k - 1`` block inputs
        (zeros: exactly the causal padding ``forward`` uses)."""
        keys, values = self._memory(enc)
        batch = enc.states.size(0)
        state = {"keys": keys, "values": values}
        for layer in range(self.num_layers):
            state[f"win{layer}"] = keys.new_zeros(batch, self.kernel_width - 1, self.hidden_size)
        return state

    def step(
        self, enc: EncoderOutput, prev: Tensor, state: dict[str, Tensor], position: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        keys, values = state["keys"], state["values"]
        g = self._embed(prev[:, None], torch.tensor([position], device=prev.device))  # B×1×H
        x = g
        new_state = {"keys": keys, "values": values}
        weights = g.new_zeros(0)
        for layer, conv in enumerate(self.convs):
            window = state[f"win{layer}"]
            inputs = torch.cat([window.to(x.dtype), x], dim=1)  # B×k×H: the conv's whole receptive field
            new_state[f"win{layer}"] = inputs[:, 1:]
            conv_out = conv(self.hidden_dropout(inputs).transpose(1, 2))  # B×C×1
            x, weights = self._block_output(x, conv_out, layer, g, keys, values, enc)
        return self._logits(x)[:, 0], weights[:, 0], new_state
