"""RNN encoder/decoder: teacher-forced pass equals stepping, padding is inert, every parameter learns."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from model.encoder_decoder import EncoderOutput, reorder_state
from model.hyperparameters import Hyperparameters
from model.model import Seq2Seq, initialize, tie_weights
from model.rnn import RnnDecoder, RnnEncoder
from model.vocab import BOS_ID, EOS_ID, PAD_ID
from tests.torch_helpers import stepwise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 20
TINY = Hyperparameters(
    num_embed_source=8,
    num_embed_target=8,
    rnn_num_hidden=8,
    rnn_attention_num_hidden=6,
    num_layers_encoder=2,
    num_layers_decoder=2,
    embed_dropout_source=0.1,
    embed_dropout_target=0.1,
    rnn_decoder_hidden_dropout=0.1,
)


def make_model(hp: Hyperparameters, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    encoder = RnnEncoder(hp, VOCAB)
    model = Seq2Seq(encoder, RnnDecoder(hp, VOCAB, encoder.output_size))
    initialize(model, hp)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two sentences of different lengths, padded; targets start with <s>."""
    src = torch.tensor([[5, 6, 7, 8, 9, EOS_ID], [10, 11, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
    lengths = torch.tensor([6, 3])
    trg_in = torch.tensor([[BOS_ID, 12, 13, 14, 15], [BOS_ID, 16, 17, PAD_ID, PAD_ID]])
    return src, lengths, trg_in


CASES = list(itertools.product(("dot", "bilinear", "mlp", "fixed"), ("lstm", "gru"), ("last", "avg", "zero")))


@pytest.mark.parametrize(("attention", "cell", "init"), CASES)
def test_forward_equals_step_by_step(attention, cell, init):
    # Residuals and attention placement alternate across cases, so each is seen with every type.
    index = CASES.index((attention, cell, init))
    hp = replace(
        TINY, rnn_attention_type=attention, rnn_cell_type=cell, rnn_decoder_state_init=init,
        rnn_residual_connections=index % 2 == 0, rnn_first_residual_layer=1 + index % 3 // 2,
        rnn_attention_in_upper_layers=index // 2 % 2 == 0,
    )
    model = make_model(hp).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        full = model(src, lengths, trg_in)
        stepped, weights, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    assert full.shape == (2, 5, VOCAB)
    torch.testing.assert_close(full, stepped, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 5, 6)


@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("residual", [True, False])
def test_forward_equals_step_with_three_layers(upper, residual):
    hp = replace(TINY, num_layers_encoder=3, num_layers_decoder=3, rnn_attention_in_upper_layers=upper,
                 rnn_residual_connections=residual)
    model = make_model(hp).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        full = model(src, lengths, trg_in)
        stepped, _, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    torch.testing.assert_close(full, stepped, atol=1e-5, rtol=1e-5)


def test_encoder_residual_adds_the_layer_input():
    src, lengths, _ = batch()
    plain = make_model(TINY).encoder.eval()
    residual = make_model(replace(TINY, rnn_residual_connections=True)).encoder.eval()
    with torch.no_grad():
        difference = residual(src, lengths).states - plain(src, lengths).states
        plain.layers = plain.layers[:1]
        first_layer = plain(src, lengths).states
    torch.testing.assert_close(difference, first_layer)


def test_decoder_options_change_the_decoder():
    _, lengths, trg_in = batch()
    enc = EncoderOutput(states=torch.randn(2, 6, 8), mask=torch.arange(6) < lengths[:, None], lengths=lengths)
    outputs = []
    for options in ({}, {"rnn_attention_in_upper_layers": False}, {"rnn_residual_connections": True}):
        with torch.no_grad():
            outputs.append(make_model(replace(TINY, **options)).decoder.eval()(enc, trg_in))
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_does_not_change_encoder_or_decoder(cell):
    model = make_model(replace(TINY, rnn_cell_type=cell)).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        enc_pair = model.encode(src, lengths)
        enc_alone = model.encode(src[1:, :3], lengths[1:])
        logits_pair = model(src, lengths, trg_in)
        logits_alone = model(src[1:, :3], lengths[1:], trg_in[1:, :3])
    torch.testing.assert_close(enc_pair.states[1, :3], enc_alone.states[0], atol=1e-6, rtol=1e-5)
    assert torch.equal(enc_pair.states[1, 3:], torch.zeros(3, 8))
    assert enc_pair.mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert enc_pair.states.shape == (2, 6, model.encoder.output_size)
    torch.testing.assert_close(logits_pair[1, :3], logits_alone[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attention", ["dot", "bilinear", "mlp"])
def test_attention_weights_ignore_padding_and_sum_to_one(attention):
    model = make_model(replace(TINY, rnn_attention_type=attention)).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        _, weights, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    assert weights.dtype == torch.float32
    assert torch.equal(weights[1, :, 3:], torch.zeros(5, 3))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert (weights[:, :, :3] > 0).all()


def test_fixed_attention_puts_all_weight_on_last_token():
    model = make_model(replace(TINY, rnn_attention_type="fixed")).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        _, weights, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    expected = torch.zeros(2, 5, 6)
    expected[0, :, 5] = 1.0
    expected[1, :, 2] = 1.0
    assert torch.equal(weights, expected)


@pytest.mark.parametrize(("attention", "init"), [("dot", "avg"), ("bilinear", "last"), ("mlp", "zero")])
def test_decoder_accepts_another_encoder_size(attention, init):
    # A transformer encoder may feed this decoder: only the encoder's states, mask and lengths are used.
    hp = replace(TINY, rnn_attention_type=attention, rnn_decoder_state_init=init)
    torch.manual_seed(0)
    decoder = RnnDecoder(hp, VOCAB, encoder_size=6).eval()
    _, lengths, trg_in = batch()
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    states = torch.randn(2, 6, 6)
    enc = EncoderOutput(states=states, mask=mask, lengths=lengths)
    with torch.no_grad():
        full = decoder(enc, trg_in)
        # Garbage at padded positions must not matter: the decoder masks rather than trusting zeros.
        noisy = decoder(EncoderOutput(states=states + 100 * ~mask.unsqueeze(-1), mask=mask, lengths=lengths), trg_in)
    stepped, _, _ = stepwise(decoder, enc, trg_in)
    assert full.shape == (2, 5, VOCAB)
    torch.testing.assert_close(full, stepped, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, noisy, atol=1e-5, rtol=1e-5)


def test_state_is_batch_first_and_reorders_like_the_batch():
    model = make_model(replace(TINY, rnn_attention_type="mlp")).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad():
        enc = model.encode(src, lengths)
        state = model.decoder.init_state(enc)
        assert set(state) == {"h0", "c0", "h1", "c1", "keys"}
        assert all(v.size(0) == 2 for v in state.values())
        index = torch.tensor([1, 0])
        swapped, _, _ = model.decoder.step(enc.index_select(index), trg_in[index, 0], reorder_state(state, index), 0)
        straight, _, _ = model.decoder.step(enc, trg_in[:, 0], state, 0)
    torch.testing.assert_close(swapped, straight[index])


@pytest.mark.parametrize(("attention", "cell", "init"), [("mlp", "lstm", "last"), ("dot", "gru", "avg"),
                                                         ("bilinear", "lstm", "zero"), ("fixed", "gru", "last")])
def test_gradients_reach_every_parameter(attention, cell, init):
    hp = replace(TINY, rnn_attention_type=attention, rnn_cell_type=cell, rnn_decoder_state_init=init,
                 rnn_residual_connections=True)
    model = make_model(hp).train()
    src, lengths, trg_in = batch()
    model(src, lengths, trg_in).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert torch.equal(model.encoder.embedding.weight.grad[PAD_ID], torch.zeros(8))


def test_a_few_adam_steps_learn_a_copy_task():
    hp = replace(TINY, rnn_num_hidden=16, rnn_attention_type="mlp", embed_dropout_source=0.0,
                 embed_dropout_target=0.0, rnn_decoder_hidden_dropout=0.0)
    model = make_model(hp).train()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, VOCAB, (16, 5), generator=generator)
    src = torch.cat([tokens, torch.full((16, 1), EOS_ID)], 1)
    lengths = torch.full((16,), 6)
    trg_in = torch.cat([torch.full((16, 1), BOS_ID), tokens], 1)
    trg_out = src
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(src, lengths, trg_in).reshape(-1, VOCAB), trg_out.reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_output_layer_can_be_tied_to_target_embedding():
    hp = replace(TINY, weight_tying=True, weight_tying_type="src_trg_softmax")
    model = make_model(hp)
    tie_weights(model, hp, VOCAB, VOCAB)
    assert model.decoder.output_layer.weight is model.decoder.embedding.weight
    assert model.encoder.embedding.weight is model.decoder.embedding.weight


def test_runs_under_bf16_autocast():
    model = make_model(replace(TINY, rnn_attention_type="mlp")).eval()
    src, lengths, trg_in = batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(src, lengths, trg_in)
        stepped, weights, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    assert torch.isfinite(full.float()).all()
    assert weights.dtype == torch.float32
    torch.testing.assert_close(full.float(), stepped.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"rnn_num_hidden": 7}, "even"), ({"rnn_cell_type": "rnn"}, "rnn_cell_type"),
     ({"rnn_attention_type": "coverage"}, "rnn_attention_type"), ({"rnn_decoder_state_init": "x"}, "state_init")],
)
def test_invalid_hyperparameters_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        make_model(replace(TINY, **options))


def test_build_model_makes_rnn_models():
    pytest.importorskip("model.cnn")
    pytest.importorskip("model.transformer")
    from model.model import build_model

    hp = replace(TINY, encoder_type="rnn", decoder_type="rnn", weight_tying=True)
    model = build_model(hp, VOCAB, VOCAB)
    assert isinstance(model.encoder, RnnEncoder) and isinstance(model.decoder, RnnDecoder)
    assert model.decoder.output_layer.weight is model.decoder.embedding.weight
    src, lengths, trg_in = batch()
    assert model(src, lengths, trg_in).shape == (2, 5, VOCAB)
