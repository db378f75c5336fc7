"""Pre-norm Transformer encoder and decoder (Vaswani et al., 2017, arranged as in Sockeye 3).

An extension: the built-in algorithm only knows ``rnn`` and ``cnn``; ``encoder_type=transformer`` /
``decoder_type=transformer`` select these. Pre-norm (LayerNorm before each sub-layer, one final
LayerNorm) is used because it trains stably without the long warm-up post-norm needs, which matters
with the built-in algorithm's schedulers.

Sizes come from ``transformer_*`` hyperparameters only: embeddings are ``transformer_model_size``
wide, so ``num_embed_source`` / ``num_embed_target`` do not apply to a Transformer side. Either side
may be paired with an RNN or CNN other side; the decoder projects a foreign encoder's states to its
own width.

Training runs attention through :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels
on GPU); search needs the attention weights for alignment, so :meth:`TransformerDecoder.step` computes
the softmax explicitly, in float32 so that it is the same under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.encoder_decoder import Decoder, Encoder, EncoderOutput, selected, source_mask
from model.hyperparameters import Hyperparameters
from model.vocab import PAD_ID

POSITIONAL_TYPES = ("fixed", "learned")


def _check(hp: Hyperparameters) -> None:
    """Reject a configuration that would otherwise fail deep inside a reshape, naming the knob to change."""
    d, heads = hp.transformer_model_size, hp.transformer_attention_heads
    if d <= 0 or heads <= 0 or d % heads:
        raise ValueError(
            f"transformer_model_size ({d}) must be a positive multiple of transformer_attention_heads ({heads})"
        )
    if hp.transformer_feed_forward_num_hidden <= 0:
        raise ValueError(
            f"transformer_feed_forward_num_hidden must be positive, got {hp.transformer_feed_forward_num_hidden}"
        )
    if hp.transformer_positional_embedding_type not in POSITIONAL_TYPES:
        raise ValueError(
            f"transformer_positional_embedding_type must be one of {POSITIONAL_TYPES}, "
            f"got {hp.transformer_positional_embedding_type!r}"
        )


class PositionalEmbedding(nn.Module):
    """Position vectors added to the scaled token embeddings.

    ``fixed`` sinusoids are computed on demand so that any length works (decoding may run past the
    training lengths). ``learned`` is a table; positions past its end reuse the last row rather than
    crash, because search or an over-long inference request must still produce output.
    """

    def __init__(self, kind: str, model_size: int, max_positions: int) -> None:
        super().__init__()
        self.kind = kind
        self.model_size = model_size
        self.table = nn.Embedding(max_positions, model_size) if kind == "learned" else None
        self._cache: Tensor | None = None  # fixed sinusoids of positions 0..n-1, for decoding steps

    def at(self, position: int, device: torch.device) -> Tensor:
        """The vector of one position (``1×D``), as a decoding step needs it: sinusoids are computed once
        for a run of positions and reused, instead of three transcendental passes every step."""
        if self.table is not None:
            return self.forward(torch.full((1,), position, dtype=torch.long, device=device))
        cache = self._cache
        if cache is None or cache.device != device or cache.size(0) <= position:
            n = max(2 * position + 2, 128)
            cache = self.forward(torch.arange(n, device=device))
            self._cache = cache
        return cache[position:position + 1]

    def forward(self, positions: Tensor) -> Tensor:
        """``positions`` (any shape, int64) → ``positions.shape × D``, float32 for ``fixed``."""
        if self.table is not None:
            return self.table(positions.clamp(max=self.table.num_embeddings - 1))
        # Sockeye / tensor2tensor layout: sines in the first half, cosines in the second.
        half = self.model_size // 2
        scale = math.log(10000.0) / max(half - 1, 1)
        inv_timescales = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -scale)
        angles = positions.float().unsqueeze(-1) * inv_timescales
        signal = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        if self.model_size % 2:
            signal = F.pad(signal, (0, 1))
        return signal


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with separate key/value projection, so the decoder can
    project the encoder's states once per sentence and cache its own keys/values per step."""

    def __init__(self, model_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_size = model_size // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(model_size, model_size, bias=False)
        self.k_proj = nn.Linear(model_size, model_size, bias=False)
        self.v_proj = nn.Linear(model_size, model_size, bias=False)
        self.out_proj = nn.Linear(model_size, model_size, bias=False)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """``B×S×D`` keys and values (heads still merged: the layout the decoder state keeps)."""
        return self.k_proj(memory), self.v_proj(memory)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_size).transpose(1, 2)  # B×H×T×dh

    def _merge(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, t, self.heads * self.head_size))

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """Fused attention for training. ``key_mask`` is ``B×S`` (True = real key). A query row with
        no real key at all (an empty source) gets a zero context instead of the NaN a fully masked
        softmax would give."""
        q, k, v = self._split(self.q_proj(query)), self._split(keys), self._split(values)
        dropout = self.dropout if self.training else 0.0
        if key_mask is None:
            ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
            return self._merge(ctx)
        has_key = key_mask.any(dim=-1)  # B
        mask = (key_mask | ~has_key.unsqueeze(-1))[:, None, None, :]  # B×1×1×S, never all False
        if causal:
            t, s = q.shape[2], k.shape[2]
            mask = mask & torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        ctx = ctx * has_key.view(-1, 1, 1, 1).to(ctx.dtype)
        return self._merge(ctx)

    def forward_with_weights(
        self, query: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Explicit float32 softmax, for when the weights themselves are wanted (search). Returns the
        output and ``B×H×T×S`` weights; padded keys get exactly 0, an all-padding row all zeros."""
        q, k, v = self._split(self.q_proj(query)), self._split(keys), self._split(values)
        mask = key_mask[:, None, None, :]
        # Autocast would run these matmuls in bf16 whatever the inputs are; the weights are reported.
        with torch.autocast(device_type=q.device.type, enabled=False):
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(self.head_size)
            probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            probs = torch.where(mask.any(dim=-1, keepdim=True), probs, torch.zeros_like(probs))
            used = F.dropout(probs, p=self.dropout) if self.training and self.dropout > 0 else probs
            ctx = torch.matmul(used, v.float()).to(v.dtype)
        return self._merge(ctx), probs


class FeedForward(nn.Module):
    def __init__(self, model_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(model_size, hidden)
        self.outer = nn.Linear(hidden, model_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(F.relu(self.inner(x))))


class EncoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters) -> None:
        super().__init__()
        d = hp.transformer_model_size
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, hp.transformer_attention_heads, hp.transformer_dropout)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = FeedForward(d, hp.transformer_feed_forward_num_hidden, hp.transformer_dropout)
        self.dropout = nn.Dropout(hp.transformer_dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.self_norm(x)
        k, v = self.self_attn.project_kv(h)
        x = x + self.dropout(self.self_attn(h, k, v, key_mask=mask))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters) -> None:
        super().__init__()
        d, heads, drop = hp.transformer_model_size, hp.transformer_attention_heads, hp.transformer_dropout
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, heads, drop)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attn = MultiHeadAttention(d, heads, drop)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = FeedForward(d, hp.transformer_feed_forward_num_hidden, drop)
        self.dropout = nn.Dropout(drop)


def _max_positions(hp: Hyperparameters) -> int:
    # +2: room for <s> and </s> beyond the truncation length on either side.
    return max(hp.max_seq_len_source, hp.max_seq_len_target) + 2


class TransformerEncoder(Encoder):
    """Self-attention encoder; states are ``transformer_model_size`` wide with padding positions zeroed.

    ``num_embed_source`` is ignored (the embedding is ``transformer_model_size`` wide), which is what
    ``weight_tying_type=src_trg*`` compares against the target embedding.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int) -> None:
        super().__init__()
        _check(hp)
        d = hp.transformer_model_size
        self.output_size = d
        self.embed_scale = math.sqrt(d)
        self.embedding = nn.Embedding(vocab_size, d, padding_idx=PAD_ID)
        self.positions = PositionalEmbedding(hp.transformer_positional_embedding_type, d, _max_positions(hp))
        self.embed_dropout = nn.Dropout(hp.embed_dropout_source)
        self.input_dropout = nn.Dropout(hp.transformer_dropout)
        self.layers = nn.ModuleList(EncoderLayer(hp) for _ in range(hp.num_layers_encoder))
        self.final_norm = nn.LayerNorm(d)

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        mask = source_mask(src)
        pos = self.positions(torch.arange(src.shape[1], device=src.device))
        x = self.input_dropout(self.embed_dropout(self.embedding(src) * self.embed_scale) + pos)
        for layer in self.layers:
            x = layer(x, mask)
        states = self.final_norm(x) * mask.unsqueeze(-1).to(x.dtype)
        return EncoderOutput(states=states, mask=mask, lengths=lengths)


class TransformerDecoder(Decoder):
    """Causal self-attention + cross-attention decoder.

    ``num_embed_target`` is ignored: the target embedding and the output layer are both
    ``transformer_model_size`` wide, so ``weight_tying_type=*softmax`` always fits. An encoder of a
    different width (``encoder_size``) is projected to ``transformer_model_size`` first.

    The search state holds, per layer ``l``, the cross-attention keys/values ``ck{l}``/``cv{l}``
    (``B×S×D``, computed once in :meth:`init_state`) and the self-attention cache ``sk{l}``/``sv{l}``
    (``B×t×D`` after ``t`` steps), all batch-first for :func:`model.encoder_decoder.reorder_state`.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int, encoder_size: int) -> None:
        super().__init__()
        _check(hp)
        d = hp.transformer_model_size
        self.model_size = d
        self.embed_scale = math.sqrt(d)
        self.embedding = nn.Embedding(vocab_size, d, padding_idx=PAD_ID)
        self.positions = PositionalEmbedding(hp.transformer_positional_embedding_type, d, _max_positions(hp))
        self.embed_dropout = nn.Dropout(hp.embed_dropout_target)
        self.input_dropout = nn.Dropout(hp.transformer_dropout)
        self.encoder_projection: nn.Module = nn.Linear(encoder_size, d) if encoder_size != d else nn.Identity()
        self.layers = nn.ModuleList(DecoderLayer(hp) for _ in range(hp.num_layers_decoder))
        self.final_norm = nn.LayerNorm(d)
        self.output_layer = nn.Linear(d, vocab_size)
        self.static_state = frozenset(f"{kind}{i}" for i in range(hp.num_layers_decoder) for kind in ("ck", "cv"))

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        # Reads self.embedding at call time, so tie_weights' replacement Parameter is what is used.
        tokens = self.embed_dropout(self.embedding(ids) * self.embed_scale)
        return self.input_dropout(tokens + self.positions(positions))

    def _embed_step(self, ids: Tensor, position: int) -> Tensor:
        tokens = self.embed_dropout(self.embedding(ids) * self.embed_scale)
        return self.input_dropout(tokens + self.positions.at(position, ids.device))

    def forward(self, enc: EncoderOutput, trg_in: Tensor, select: Tensor | None = None) -> Tensor:
        memory = self.encoder_projection(enc.states)
        x = self._embed(trg_in, torch.arange(trg_in.shape[1], device=trg_in.device))
        for layer in self.layers:
            h = layer.self_norm(x)
            k, v = layer.self_attn.project_kv(h)
            x = x + layer.dropout(layer.self_attn(h, k, v, causal=True))
            ck, cv = layer.cross_attn.project_kv(memory)
            x = x + layer.dropout(layer.cross_attn(layer.cross_norm(x), ck, cv, key_mask=enc.mask))
            x = x + layer.dropout(layer.ff(layer.ff_norm(x)))
        return self.output_layer(self.final_norm(selected(x, select)))

    def init_state(self, enc: EncoderOutput) -> dict[str, Tensor]:
        memory = self.encoder_projection(enc.states)
        state: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            ck, cv = layer.cross_attn.project_kv(memory)
            state[f"ck{i}"], state[f"cv{i}"] = ck, cv
            empty = ck.new_zeros(ck.shape[0], 0, self.model_size)
            state[f"sk{i}"], state[f"sv{i}"] = empty, empty
        return state

    def step(
        self, enc: EncoderOutput, prev: Tensor, state: dict[str, Tensor], position: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = self._embed_step(prev.unsqueeze(1), position)  # B×1×D
        new_state: dict[str, Tensor] = {}
        attention: Tensor | None = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.self_norm(x)
            k, v = layer.self_attn.project_kv(h)
            sk = torch.cat([state[f"sk{i}"], k.to(state[f"sk{i}"].dtype)], dim=1)
            sv = torch.cat([state[f"sv{i}"], v.to(state[f"sv{i}"].dtype)], dim=1)
            # The cache holds only positions <= this one: no causal mask needed.
            x = x + layer.dropout(layer.self_attn(h, sk, sv))
            ck, cv = state[f"ck{i}"], state[f"cv{i}"]
            q = layer.cross_norm(x)
            if i == last:
                ctx, probs = layer.cross_attn.forward_with_weights(q, ck, cv, enc.mask)
                attention = probs[:, :, 0, :].mean(dim=1)  # B×S, float32
            else:
                ctx = layer.cross_attn(q, ck, cv, key_mask=enc.mask)
            x = x + layer.dropout(ctx)
            x = x + layer.dropout(layer.ff(layer.ff_norm(x)))
            new_state.update({f"ck{i}": ck, f"cv{i}": cv, f"sk{i}": sk, f"sv{i}": sv})
        logits = self.output_layer(self.final_norm(x)).squeeze(1)
        if attention is None:  # zero layers: nothing attends to the source
            attention = enc.mask.new_zeros(enc.mask.shape, dtype=torch.float32)
        return logits, attention, new_state
