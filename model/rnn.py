"""The RNN architecture of the built-in algorithm: a bidirectional-first LSTM/GRU encoder and an
attentional LSTM/GRU decoder (Luong/GNMT style).

Speed design: the decoder has **no input feeding** (the previous step's attentional hidden state is
not fed back into the first layer). The recurrence of every layer therefore depends only on that
layer's inputs, never on attention computed above it, so the teacher-forced pass runs each layer as
one ``nn.LSTM``/``nn.GRU`` call over the whole target sequence (one cuDNN kernel on GPU) and the
attention for all target positions is one batched matmul, instead of a Python loop of cell calls per
position. With ``rnn_attention_in_upper_layers`` (GNMT) the attention query is layer 1's output and
the context is concatenated to the inputs of layers 2..L; otherwise the layers stack plainly and the
top layer queries. Either way the output is ``tanh(W [h_L; c])`` as in Luong et al. (2015).

``step`` runs the very same ``nn.LSTM``/``nn.GRU`` modules on a length-1 sequence, so the search sees
the model that training saw. The decoder is causal, so padding at the end of ``trg_in`` cannot reach
earlier positions and the decoder runs unpacked; the encoder is bidirectional, so it packs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from model.encoder_decoder import Decoder, Encoder, EncoderOutput, selected
from model.hyperparameters import Hyperparameters

CELL_TYPES = ("lstm", "gru")
ATTENTION_TYPES = ("dot", "bilinear", "mlp", "fixed")
STATE_INITS = ("last", "avg", "zero")


def _rnn_class(cell_type: str) -> type[nn.LSTM] | type[nn.GRU]:
    if cell_type not in CELL_TYPES:
        raise ValueError(f"rnn_cell_type must be one of {CELL_TYPES}, got {cell_type!r}")
    return nn.LSTM if cell_type == "lstm" else nn.GRU


def _residual(hp: Hyperparameters, layer: int, input_size: int) -> bool:
    """Residuals only where the layer's (non-context) input has the output's size: a projection
    there would be a different model from the one the hyperparameter names."""
    return hp.rnn_residual_connections and layer >= hp.rnn_first_residual_layer and input_size == hp.rnn_num_hidden


def _recurrent(layer: nn.Module, inp: Any, hx: Any = None) -> tuple[Any, Any]:
    """``layer(inp, hx)``, in fp32 on CPU under autocast: oneDNN's bf16 LSTM/GRU needs CPU support
    (avx512_bf16 or AMX) and elsewhere fails to create its primitive, so a bf16 run on such a CPU keeps
    the recurrence in fp32 and the matmuls around it in bf16. On CUDA cuDNN runs the recurrence in bf16."""
    if not (inp.data if isinstance(inp, PackedSequence) else inp).is_cuda and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            if isinstance(inp, PackedSequence):
                inp = PackedSequence(inp.data.float(), inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)
            else:
                inp = inp.float()
            if hx is not None:
                hx = tuple(h.float() for h in hx) if isinstance(hx, tuple) else hx.float()
            return layer(inp, hx)
    return layer(inp, hx)


def _length_mask(lengths: Tensor, max_len: int) -> Tensor:
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def last_states(enc: EncoderOutput) -> Tensor:
    """``B×D``: each sentence's state at its last real token (``</s>``), for any encoder type."""
    index = (enc.lengths - 1).clamp(min=0).to(enc.states.device)
    return enc.states[torch.arange(enc.states.size(0), device=enc.states.device), index]


def average_states(enc: EncoderOutput) -> Tensor:
    """``B×D``: the mean over real tokens; masks explicitly rather than trusting zeroed padding."""
    mask = enc.mask.unsqueeze(-1)
    total = enc.states.float().masked_fill(~mask, 0.0).sum(1)
    return (total / mask.sum(1).clamp(min=1)).to(enc.states.dtype)


class RnnEncoder(Encoder):
    """Layer 1 bidirectional (half the hidden size each way), the rest unidirectional.

    The source is packed once and every layer runs on the packed data, so padding never enters any
    recurrence (it would, in the backward direction) and residuals/dropout apply to real tokens only.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int) -> None:
        super().__init__()
        if hp.rnn_num_hidden % 2:
            raise ValueError(f"rnn_num_hidden must be even (the first encoder layer is bidirectional), "
                             f"got {hp.rnn_num_hidden}")
        if hp.num_layers_encoder < 1:
            raise ValueError(f"num_layers_encoder must be >= 1, got {hp.num_layers_encoder}")
        rnn = _rnn_class(hp.rnn_cell_type)
        hidden = hp.rnn_num_hidden
        self.output_size = hidden
        self.embedding = nn.Embedding(vocab_size, hp.num_embed_source, padding_idx=0)
        self.embed_dropout = nn.Dropout(hp.embed_dropout_source)
        self.layers = nn.ModuleList([rnn(hp.num_embed_source, hidden // 2, batch_first=True, bidirectional=True)])
        self.layers.extend(rnn(hidden, hidden, batch_first=True) for _ in range(hp.num_layers_encoder - 1))
        sizes = [hp.num_embed_source] + [hidden] * (hp.num_layers_encoder - 1)
        self.residual = [_residual(hp, i + 1, size) for i, size in enumerate(sizes)]

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        max_len = src.size(1)
        x = self.embed_dropout(self.embedding(src))
        # pack_padded_sequence wants lengths on the CPU; a zero length would be rejected, and such a
        # row (never produced by the data pipeline) gets an all-padding mask anyway.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        for layer, residual in zip(self.layers, self.residual):
            out, _ = _recurrent(layer, packed)
            data = out.data + packed.data if residual else out.data
            packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        states, _ = pad_packed_sequence(packed, batch_first=True, total_length=max_len)  # zeros at padding
        return EncoderOutput(states=states, mask=_length_mask(lengths.to(src.device), max_len), lengths=lengths)


class Attention(nn.Module):
    """Scores decoder queries against source keys; ``keys`` are precomputed once per source.

    ``project_keys`` returns ``None`` where the keys are the encoder states themselves (or unused), so
    that beam search does not copy them with the decoder state every step.
    """

    def project_keys(self, states: Tensor) -> Tensor | None:
        return None

    def scores(self, query: Tensor, keys: Tensor | None, enc: EncoderOutput) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor | None, enc: EncoderOutput) -> tuple[Tensor, Tensor]:
        """``query`` ``B×T×Q`` → context ``B×T×C`` and float32 weights ``B×T×S`` (0 at padding)."""
        scores = self.scores(query, keys, enc).float().masked_fill(~enc.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.to(enc.states.dtype), enc.states)
        return context, weights


class DotAttention(Attention):
    """Luong "dot"; a projection only when query and state sizes differ (e.g. another encoder type)."""

    def __init__(self, query_size: int, encoder_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(encoder_size, query_size, bias=False) if query_size != encoder_size else None

    def project_keys(self, states: Tensor) -> Tensor | None:
        return self.proj(states) if self.proj is not None else None

    def scores(self, query: Tensor, keys: Tensor | None, enc: EncoderOutput) -> Tensor:
        keys = enc.states if keys is None else keys
        return torch.bmm(query, keys.transpose(1, 2))


class BilinearAttention(DotAttention):
    """Luong "general": ``q^T W k``; ``W k`` is the precomputed key."""

    def __init__(self, query_size: int, encoder_size: int) -> None:
        nn.Module.__init__(self)
        self.proj = nn.Linear(encoder_size, query_size, bias=False)


class MlpAttention(Attention):
    """Bahdanau "concat": ``v^T tanh(W_q q + W_k k)``.

    The teacher-forced pass materialises ``B×T×S×A``; that is inherent to additive attention (the
    per-step formulation keeps the same activations for the backward pass).
    """

    def __init__(self, query_size: int, encoder_size: int, num_hidden: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(encoder_size, num_hidden, bias=False)
        self.query_proj = nn.Linear(query_size, num_hidden)
        self.v = nn.Linear(num_hidden, 1, bias=False)

    def project_keys(self, states: Tensor) -> Tensor | None:
        return self.key_proj(states)

    def scores(self, query: Tensor, keys: Tensor | None, enc: EncoderOutput) -> Tensor:
        assert keys is not None
        hidden = torch.tanh(keys.unsqueeze(1) + self.query_proj(query).unsqueeze(2))  # B×T×S×A
        return self.v(hidden).squeeze(-1)


class FixedAttention(Attention):
    """Sockeye's "fixed": all weight on the last real source token, whatever the query."""

    def forward(self, query: Tensor, keys: Tensor | None, enc: EncoderOutput) -> tuple[Tensor, Tensor]:
        batch, steps = query.shape[:2]
        index = (enc.lengths - 1).clamp(min=0).to(enc.states.device)
        weights = F.one_hot(index, enc.states.size(1)).float().unsqueeze(1).expand(batch, steps, -1)
        context = last_states(enc).unsqueeze(1).expand(batch, steps, -1)
        return context, weights


def build_attention(hp: Hyperparameters, query_size: int, encoder_size: int) -> Attention:
    kind = hp.rnn_attention_type
    if kind == "dot":
        return DotAttention(query_size, encoder_size)
    if kind == "bilinear":
        return BilinearAttention(query_size, encoder_size)
    if kind == "mlp":
        return MlpAttention(query_size, encoder_size, hp.attention_num_hidden)
    if kind == "fixed":
        return FixedAttention()
    raise ValueError(f"rnn_attention_type must be one of {ATTENTION_TYPES}, got {kind!r}")


class RnnDecoder(Decoder):
    """``num_layers_decoder`` single-layer RNNs with attention; see the module docstring for the layout.

    State (all batch-first): ``h{l}`` (and ``c{l}`` for LSTM) ``B×H`` per layer, plus ``keys``
    (``B×S×K``) when the attention type projects the source.
    """

    def __init__(self, hp: Hyperparameters, vocab_size: int, encoder_size: int) -> None:
        super().__init__()
        if hp.num_layers_decoder < 1:
            raise ValueError(f"num_layers_decoder must be >= 1, got {hp.num_layers_decoder}")
        if hp.rnn_decoder_state_init not in STATE_INITS:
            raise ValueError(f"rnn_decoder_state_init must be one of {STATE_INITS}, "
                             f"got {hp.rnn_decoder_state_init!r}")
        rnn = _rnn_class(hp.rnn_cell_type)
        hidden = hp.rnn_num_hidden
        num_layers = hp.num_layers_decoder
        self.is_lstm = hp.rnn_cell_type == "lstm"
        self.num_layers = num_layers
        self.hidden_size = hidden
        self.state_init = hp.rnn_decoder_state_init
        # With one layer "upper layers" do not exist: the only layer queries, as in the plain stack.
        self.attention_in_upper = hp.rnn_attention_in_upper_layers and num_layers > 1

        self.embedding = nn.Embedding(vocab_size, hp.num_embed_target, padding_idx=0)
        self.embed_dropout = nn.Dropout(hp.embed_dropout_target)
        base_sizes = [hp.num_embed_target] + [hidden] * (num_layers - 1)
        context_in = [0] + [encoder_size if self.attention_in_upper else 0] * (num_layers - 1)
        self.layers = nn.ModuleList(
            rnn(size + extra, hidden, batch_first=True) for size, extra in zip(base_sizes, context_in)
        )
        self.residual = [_residual(hp, i + 1, size) for i, size in enumerate(base_sizes)]
        self.attention = build_attention(hp, hidden, encoder_size)
        self.init_h = self._init_linears(encoder_size)
        self.init_c = self._init_linears(encoder_size) if self.is_lstm else None
        self.hidden_proj = nn.Linear(hidden + encoder_size, hidden)
        self.hidden_dropout = nn.Dropout(hp.rnn_decoder_hidden_dropout)
        self.output_layer = nn.Linear(hidden, vocab_size)
        self.static_state = frozenset({"keys"})

    def _init_linears(self, encoder_size: int) -> nn.ModuleList | None:
        if self.state_init == "zero":
            return None
        return nn.ModuleList(nn.Linear(encoder_size, self.hidden_size) for _ in range(self.num_layers))

    def init_state(self, enc: EncoderOutput) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        if self.state_init == "zero":
            zeros = enc.states.new_zeros(enc.states.size(0), self.hidden_size)
            for i in range(self.num_layers):
                state[f"h{i}"] = zeros
                if self.is_lstm:
                    state[f"c{i}"] = zeros
        else:
            summary = last_states(enc) if self.state_init == "last" else average_states(enc)
            assert self.init_h is not None
            for i, linear in enumerate(self.init_h):
                state[f"h{i}"] = torch.tanh(linear(summary))
            if self.init_c is not None:
                for i, linear in enumerate(self.init_c):
                    state[f"c{i}"] = torch.tanh(linear(summary))
        keys = self.attention.project_keys(enc.states)
        if keys is not None:
            state["keys"] = keys
        return state

    def _run(
        self, enc: EncoderOutput, x: Tensor, state: dict[str, Tensor], select: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """All layers over ``x`` (``B×T×E``) from ``state``: logits ``B×T×V`` (``N×V`` at ``select``),
        weights ``B×T×S``, end state."""
        keys = state.get("keys")
        new_state: dict[str, Tensor] = {} if keys is None else {"keys": keys}
        context: Tensor | None = None
        weights: Tensor | None = None
        for i, (layer, residual) in enumerate(zip(self.layers, self.residual)):
            # nn.LSTM/GRU want (layers, B, H); the state keeps B first for reorder_state.
            h0 = state[f"h{i}"].unsqueeze(0)
            hx = (h0, state[f"c{i}"].unsqueeze(0)) if self.is_lstm else h0
            inp = x if context is None or not self.attention_in_upper else torch.cat([x, context], dim=-1)
            out, hn = _recurrent(layer, inp, hx)
            if self.is_lstm:
                new_state[f"h{i}"], new_state[f"c{i}"] = hn[0].squeeze(0), hn[1].squeeze(0)
            else:
                new_state[f"h{i}"] = hn.squeeze(0)
            x = out + x if residual else out
            if i == 0 and self.attention_in_upper:
                context, weights = self.attention(x, keys, enc)
        if not self.attention_in_upper:
            context, weights = self.attention(x, keys, enc)
        assert context is not None and weights is not None
        hidden = torch.tanh(self.hidden_proj(torch.cat([x, context.to(x.dtype)], dim=-1)))
        logits = self.output_layer(self.hidden_dropout(selected(hidden, select)))
        return logits, weights, new_state

    def forward(self, enc: EncoderOutput, trg_in: Tensor, select: Tensor | None = None) -> Tensor:
        x = self.embed_dropout(self.embedding(trg_in))
        logits, _, _ = self._run(enc, x, self.init_state(enc), select)
        return logits

    def step(
        self, enc: EncoderOutput, prev: Tensor, state: dict[str, Tensor], position: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = self.embed_dropout(self.embedding(prev.unsqueeze(1)))
        logits, weights, new_state = self._run(enc, x, state)
        return logits.squeeze(1), weights.squeeze(1), new_state
