"""Transformer encoder/decoder: training and search agree, masks hold, positions scale, tying works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.encoder_decoder import EncoderOutput, reorder_state
from model.hyperparameters import Hyperparameters
from model.model import Seq2Seq, initialize, tie_weights
from model.transformer import PositionalEmbedding, TransformerDecoder, TransformerEncoder
from model.vocab import BOS_ID, EOS_ID, PAD_ID
from tests.torch_helpers import stepwise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V = 20


def _hp(**kw) -> Hyperparameters:
    base = dict(
        encoder_type="transformer",
        decoder_type="transformer",
        transformer_model_size=16,
        transformer_attention_heads=2,
        transformer_feed_forward_num_hidden=32,
        transformer_dropout=0.1,
        num_layers_encoder=2,
        num_layers_decoder=2,
        max_seq_len_source=10,
        max_seq_len_target=10,
    )
    base.update(kw)
    return Hyperparameters(**base)


def _model(hp: Hyperparameters, vs: int = V, vt: int = V, seed: int = 0) -> Seq2Seq:
    """What build_model does for transformer/transformer, without needing the other architectures."""
    torch.manual_seed(seed)
    encoder = TransformerEncoder(hp, vs)
    model = Seq2Seq(encoder, TransformerDecoder(hp, vt, encoder.output_size))
    initialize(model, hp)
    if hp.weight_tying:
        tie_weights(model, hp, vs, vt)
    return model


def _batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded sources of the given lengths (</s> included) with random real tokens."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, V, (n - 1,), generator=g)
        src[i, n - 1] = EOS_ID
    return src, torch.tensor(lengths)


def _trg_in(b: int, t: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    trg = torch.randint(4, V, (b, t), generator=g)
    trg[:, 0] = BOS_ID
    return trg


@pytest.mark.parametrize("pos", ["fixed", "learned"])
def test_forward_equals_step_by_step(pos):
    model = _model(_hp(transformer_positional_embedding_type=pos)).eval()
    src, lengths = _batch([5, 3, 7])
    trg_in = _trg_in(3, 6)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        stepped, _, _ = stepwise(model.decoder, enc, trg_in)
    assert full.shape == (3, 6, V)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


def test_state_shapes_and_reorder_follow_the_batch():
    hp = _hp()
    model = _model(hp).eval()
    src, lengths = _batch([5, 3, 7])
    trg_in = _trg_in(3, 5)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        state = model.decoder.init_state(enc)
        assert state["ck1"].shape == (3, 7, 16) and state["sk0"].shape == (3, 0, 16)
        for t in range(2):
            _, _, state = model.decoder.step(enc, trg_in[:, t], state, t)
        assert state["sk1"].shape == (3, 2, 16) and state["sv0"].shape == (3, 2, 16)
        # Beam search reorders rows mid-sentence; continuing must equal forward on the reordered batch.
        index = torch.tensor([2, 0, 0, 1])
        enc_r, state, trg_r = enc.index_select(index), reorder_state(state, index), trg_in[index]
        rest = []
        for t in range(2, 5):
            out, _, state = model.decoder.step(enc_r, trg_r[:, t], state, t)
            rest.append(out)
        full = model.decoder(enc_r, trg_r)
    torch.testing.assert_close(torch.stack(rest, dim=1), full[:, 2:], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = _model(_hp()).eval()
    src, lengths = _batch([6, 4])
    trg_in = _trg_in(2, 7)
    changed = trg_in.clone()
    changed[:, 4] = (changed[:, 4] - 4 + 1) % (V - 4) + 4  # a different real token at position 4
    with torch.no_grad():
        enc = model.encode(src, lengths)
        a, b = model.decoder(enc, trg_in), model.decoder(enc, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_padding_does_not_change_a_sentence():
    model = _model(_hp()).eval()
    src, lengths = _batch([7, 4, 6])
    trg_in = _trg_in(3, 5)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        batched = model.decoder(enc, trg_in)
        enc1 = model.encode(src[1:2, :4], lengths[1:2])
        alone = model.decoder(enc1, trg_in[1:2])
    torch.testing.assert_close(enc.states[1:2, :4], enc1.states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)
    assert torch.all(enc.states[1, 4:] == 0) and enc.states[1, :4].abs().sum() > 0
    assert enc.mask.tolist()[1] == [True] * 4 + [False] * 3


def test_attention_rows_sum_to_one_and_skip_padding():
    model = _model(_hp()).eval()
    src, lengths = _batch([6, 2, 4])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        _, attention, _ = stepwise(model.decoder, enc, _trg_in(3, 4))
    for attn in attention.unbind(1):
        assert attn.shape == (3, 6) and attn.dtype == torch.float32
        torch.testing.assert_close(attn.sum(dim=-1), torch.ones(3))
        assert torch.all(attn[~enc.mask] == 0)
        assert torch.all(attn[enc.mask] > 0)


def test_empty_source_row_gives_no_nan():
    model = _model(_hp()).eval()
    src, lengths = _batch([5, 3])
    src[1] = PAD_ID  # a row with no real token: every cross-attention key is masked
    lengths[1] = 0
    trg_in = _trg_in(2, 4)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        stepped, attention, _ = stepwise(model.decoder, enc, trg_in)
    assert torch.isfinite(enc.states).all() and torch.isfinite(full).all()
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    assert torch.all(attention[1] == 0) and torch.isfinite(attention).all()


def test_learned_positions_clamp_beyond_the_table():
    hp = _hp(transformer_positional_embedding_type="learned")  # table: max(10, 10) + 2 = 12 rows
    model = _model(hp).eval()
    table = model.encoder.positions.table
    assert table is not None and table.num_embeddings == 12
    src, lengths = _batch([30, 25])
    trg_in = _trg_in(2, 40)
    with torch.no_grad():
        full = model(src, lengths, trg_in)
        pos = model.decoder.positions(torch.tensor([11, 12, 39]))
    assert full.shape == (2, 40, V) and torch.isfinite(full).all()
    torch.testing.assert_close(pos[1], pos[0])
    torch.testing.assert_close(pos[2], pos[0])


def test_fixed_positions_handle_any_length():
    emb = PositionalEmbedding("fixed", 16, max_positions=12)
    pos = emb(torch.arange(300))
    assert pos.shape == (300, 16) and torch.isfinite(pos).all()
    torch.testing.assert_close(emb(torch.tensor([299]))[0], pos[299])
    assert torch.unique(pos, dim=0).shape[0] == 300  # every position distinguishable
    torch.testing.assert_close(pos[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    model = _model(_hp()).eval()
    src, lengths = _batch([300, 120])
    with torch.no_grad():
        out = model(src, lengths, _trg_in(2, 300))
    assert out.shape == (2, 300, V) and torch.isfinite(out).all()


def test_cached_positions_equal_computed_ones():
    emb = PositionalEmbedding("fixed", 16, max_positions=12)
    for position in (0, 5, 127, 128, 500, 3):  # growing the cache past its end, then reading from it
        torch.testing.assert_close(emb.at(position, torch.device("cpu")), emb(torch.tensor([position])))


def test_beam_search_of_a_batch_equals_each_sentence_alone():
    """Sentences finish at different steps, so the batch shrinks: the source-side state (kept once per
    sentence, not reordered along the beam) must follow exactly the sentences still searched."""
    from model.beam_search import beam_search

    model = _model(_hp(transformer_dropout=0.0), seed=3).eval()
    src, lengths = _batch([7, 2, 9, 4, 5], seed=5)
    limits = torch.tensor([9, 3, 12, 2, 6])
    batched = beam_search(model, src, lengths, 3, limits, return_attention=True)
    for i, n in enumerate(lengths.tolist()):
        (alone,) = beam_search(model, src[i:i + 1, :n], lengths[i:i + 1], 3, int(limits[i]), return_attention=True)
        assert batched[i].tokens == alone.tokens
        assert batched[i].score == pytest.approx(alone.score, abs=1e-4)
        torch.testing.assert_close(torch.tensor(batched[i].attention), torch.tensor(alone.attention), atol=1e-5,
                                   rtol=1e-4)
    assert model.decoder.static_state == {"ck0", "cv0", "ck1", "cv1"}


def test_tied_weights_are_one_parameter_and_still_train():
    hp = _hp(weight_tying=True, weight_tying_type="src_trg_softmax", transformer_dropout=0.0)
    model = _model(hp)
    untied = _model(_hp(transformer_dropout=0.0))
    w = model.decoder.embedding.weight
    assert model.encoder.embedding.weight is w and model.decoder.output_layer.weight is w
    assert len(list(model.parameters())) == len(list(untied.parameters())) - 2

    # Copy task: the target is the source.
    src, lengths = _batch([6, 6, 5, 4], seed=3)
    trg_in = torch.cat([torch.full((4, 1), BOS_ID), src[:, :-1]], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        logits = model(src, lengths, trg_in)
        loss = F.cross_entropy(logits.reshape(-1, V), src.reshape(-1), ignore_index=PAD_ID)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.encoder.embedding.weight is model.decoder.output_layer.weight  # still tied after steps


def test_tying_mismatched_vocabularies_names_the_hyperparameter():
    hp = _hp(weight_tying=True, weight_tying_type="src_trg_softmax")
    with pytest.raises(ValueError, match="weight_tying_type"):
        _model(hp, vs=V, vt=V + 5)


def test_gradients_reach_every_parameter():
    hp = _hp(transformer_positional_embedding_type="learned", embed_dropout_source=0.1, embed_dropout_target=0.1)
    model = _model(hp).train()
    src, lengths = _batch([5, 3, 7])
    trg_in = _trg_in(3, 6)
    logits = model(src, lengths, trg_in)
    F.cross_entropy(logits.reshape(-1, V), trg_in.roll(-1, dims=1).reshape(-1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_foreign_encoder_size_is_projected():
    hp = _hp()
    torch.manual_seed(0)
    decoder = TransformerDecoder(hp, V, encoder_size=24).eval()
    initialize(decoder, hp)
    # Another encoder need not zero its padding states; the last row is an empty source.
    src, lengths = _batch([4, 6, 1])
    src[2], lengths[2] = PAD_ID, 0
    mask = src != PAD_ID
    enc = EncoderOutput(states=torch.randn(3, 6, 24), mask=mask, lengths=lengths)
    trg_in = _trg_in(3, 5)
    with torch.no_grad():
        full = decoder(enc, trg_in)
        stepped, _, state = stepwise(decoder, enc, trg_in)
    assert state["cv0"].shape == (3, 6, 16)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_and_keeps_float32_attention():
    model = _model(_hp()).eval()
    src, lengths = _batch([5, 3])
    trg_in = _trg_in(2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        stepped, attention, _ = stepwise(model.decoder, enc, trg_in)
    assert torch.isfinite(full.float()).all() and torch.isfinite(stepped.float()).all()
    assert (stepped.float() - full.float()).abs().max() < 0.1
    assert attention.dtype == torch.float32
    torch.testing.assert_close(attention[:, -1].sum(-1), torch.ones(2))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(transformer_model_size=15), "transformer_attention_heads"),
        (dict(transformer_positional_embedding_type="rotary"), "transformer_positional_embedding_type"),
        (dict(transformer_feed_forward_num_hidden=0), "transformer_feed_forward_num_hidden"),
    ],
)
def test_bad_configuration_names_the_hyperparameter(kw, name):
    with pytest.raises(ValueError, match=name):
        TransformerEncoder(_hp(**kw), V)


def test_build_model_selects_transformer():
    pytest.importorskip("model.rnn")
    pytest.importorskip("model.cnn")
    from model.model import build_model

    model = build_model(_hp(), V, V + 3)
    assert isinstance(model.encoder, TransformerEncoder) and isinstance(model.decoder, TransformerDecoder)
    assert model.decoder.output_layer.out_features == V + 3
