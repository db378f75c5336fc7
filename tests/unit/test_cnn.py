"""ConvS2S encoder/decoder: training and incremental decoding agree, causality, padding invariance,
attention, mixing with other encoders, and that the model actually learns."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from model.cnn import CnnDecoder, CnnEncoder
from model.encoder_decoder import EncoderOutput, reorder_state
from model.hyperparameters import Hyperparameters
from model.model import Seq2Seq, initialize, tie_weights
from model.vocab import BOS_ID, EOS_ID, PAD_ID
from tests.torch_helpers import stepwise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 20


def make_hp(**overrides: object) -> Hyperparameters:
    base: dict[str, object] = {
        "encoder_type": "cnn",
        "decoder_type": "cnn",
        "cnn_num_hidden": 8,
        "num_embed_source": 6,
        "num_embed_target": 6,
        "num_layers_encoder": 2,
        "num_layers_decoder": 2,
        "cnn_kernel_width_encoder": 3,
        "cnn_kernel_width_decoder": 3,
        "max_seq_len_source": 10,
        "max_seq_len_target": 10,
        "embed_dropout_source": 0.1,
        "embed_dropout_target": 0.1,
        "cnn_hidden_dropout": 0.1,
    }
    base.update(overrides)
    return Hyperparameters(**base)  # type: ignore[arg-type]


def make_model(hp: Hyperparameters, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    encoder = CnnEncoder(hp, VOCAB)
    model = Seq2Seq(encoder, CnnDecoder(hp, VOCAB, encoder.output_size))
    initialize(model, hp)
    return model.eval()


def batch(lengths: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    """Random ids 4..VOCAB-1 ending in </s>, right-padded with PAD_ID."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=gen)
        ids[i, n - 1] = EOS_ID
    return ids, torch.tensor(lengths)


def trg_input(lengths: list[int], seed: int = 2) -> Tensor:
    ids, _ = batch(lengths, seed)
    return torch.cat([torch.full((len(lengths), 1), BOS_ID), ids[:, :-1]], dim=1)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("activation", ["glu", "relu", "softrelu", "sigmoid", "tanh"])
def test_forward_equals_step_by_step(activation: str, kernel: int):
    hp = make_hp(cnn_activation_type=activation, cnn_kernel_width_encoder=kernel, cnn_kernel_width_decoder=kernel)
    model = make_model(hp)
    src, lengths = batch([7, 4, 2])
    trg_in = trg_input([6, 3, 5])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        steps, _, _ = stepwise(model.decoder, enc, trg_in)
    assert full.shape == (3, 6, VOCAB)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    if kernel > 1:
        state = model.decoder.init_state(enc)
        assert state["win0"].shape == (3, kernel - 1, hp.cnn_num_hidden)  # a window, not the whole prefix


def test_step_state_follows_beam_reordering():
    model = make_model(make_hp(cnn_kernel_width_decoder=4))
    src, lengths = batch([5, 3])
    trg_in = trg_input([5, 4])
    order = torch.tensor([1, 0, 1])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        full = model.decoder(enc.index_select(order), trg_in.index_select(0, order))
        state = model.decoder.init_state(enc)
        for t in range(2):
            _, _, state = model.decoder.step(enc, trg_in[:, t], state, t)
        enc, state = enc.index_select(order), reorder_state(state, order)
        logits, _, _ = model.decoder.step(enc, trg_in.index_select(0, order)[:, 2], state, 2)
    torch.testing.assert_close(logits, full[:, 2], atol=1e-5, rtol=1e-5)


def test_positions_past_the_table_are_clamped():
    hp = make_hp(max_seq_len_source=2, max_seq_len_target=2)  # tables of 4 positions
    model = make_model(hp)
    src, lengths = batch([9, 6])
    trg_in = trg_input([8, 7])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        steps, _, _ = stepwise(model.decoder, enc, trg_in)
    assert enc.states.shape == (2, 9, hp.cnn_num_hidden)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [2, 5])
def test_decoder_is_causal(kernel: int):
    model = make_model(make_hp(cnn_kernel_width_decoder=kernel))
    src, lengths = batch([6, 6])
    trg_in = trg_input([7, 7])
    changed = trg_in.clone()
    t = 4
    changed[:, t] = (changed[:, t] - 4 + 1) % (VOCAB - 4) + 4  # another real token
    with torch.no_grad():
        enc = model.encode(src, lengths)
        before, after = model.decoder(enc, trg_in), model.decoder(enc, changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=0, rtol=0)
    assert not torch.allclose(after[:, t], before[:, t])


@pytest.mark.parametrize("kernel", [3, 4])
def test_padding_invariance(kernel: int):
    model = make_model(make_hp(cnn_kernel_width_encoder=kernel))
    src, lengths = batch([3, 8])
    trg_in = trg_input([4, 7])
    with torch.no_grad():
        enc_batch = model.encode(src, lengths)
        logits_batch = model.decoder(enc_batch, trg_in)
        enc_alone = model.encode(src[:1, :3], lengths[:1])
        logits_alone = model.decoder(enc_alone, trg_in[:1, :4])
    torch.testing.assert_close(enc_batch.states[:1, :3], enc_alone.states, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(enc_batch.extras["values"][:1, :3], enc_alone.extras["values"], atol=1e-6, rtol=1e-5)
    assert torch.all(enc_batch.states[0, 3:] == 0) and torch.all(enc_batch.extras["values"][0, 3:] == 0)
    assert torch.all(enc_batch.mask == torch.tensor([[True] * 3 + [False] * 5, [True] * 8]))
    torch.testing.assert_close(logits_batch[:1, :4], logits_alone, atol=1e-5, rtol=1e-5)


def test_attention_sums_to_one_over_real_tokens():
    model = make_model(make_hp())
    src, lengths = batch([2, 6, 4])
    trg_in = trg_input([5, 5, 5])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        _, attention, _ = stepwise(model.decoder, enc, trg_in)
        _, full_attention = model.decoder.forward_with_attention(enc, trg_in)
    assert attention.shape == (3, 5, 6) and attention.dtype == torch.float32
    real = enc.mask[:, None, :].expand_as(attention)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 5))
    assert torch.all(attention[~real] == 0)
    assert torch.all(attention[real] > 0)
    torch.testing.assert_close(full_attention, attention, atol=1e-5, rtol=1e-5)


def test_decoder_accepts_a_non_cnn_encoder_output():
    hp = make_hp()
    torch.manual_seed(0)
    decoder = CnnDecoder(hp, VOCAB, encoder_size=7).eval()
    lengths = torch.tensor([5, 3])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    enc = EncoderOutput(states=torch.randn(2, 5, 7) * mask[..., None], mask=mask, lengths=lengths)
    trg_in = trg_input([4, 4])
    with torch.no_grad():
        full = decoder(enc, trg_in)
        steps, attention, state = stepwise(decoder, enc, trg_in)
    assert decoder.encoder_proj is not None
    assert state["keys"].shape == state["values"].shape == (2, 5, hp.cnn_num_hidden)
    assert full.shape == (2, 4, VOCAB) and torch.isfinite(full).all()
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    assert torch.all(attention[1, -1, 3:] == 0)


def test_invalid_activation_is_rejected():
    with pytest.raises(ValueError, match="cnn_activation_type"):
        CnnEncoder(make_hp(cnn_activation_type="swish"), VOCAB)
    with pytest.raises(ValueError, match="cnn_kernel_width_decoder"):
        CnnDecoder(make_hp(cnn_kernel_width_decoder=0), VOCAB, 8)


def test_weight_tying_shapes_fit():
    hp = make_hp(weight_tying=True, weight_tying_type="src_trg_softmax")
    model = make_model(hp)
    tie_weights(model, hp, VOCAB, VOCAB)
    assert model.decoder.output_layer.weight is model.decoder.embedding.weight is model.encoder.embedding.weight
    src, lengths = batch([4, 3])
    assert model(src, lengths, trg_input([3, 3])).shape == (2, 3, VOCAB)


def test_runs_under_bfloat16_autocast():
    model = make_model(make_hp())
    src, lengths = batch([5, 3])
    trg_in = trg_input([4, 4])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc = model.encode(src, lengths)
        full = model.decoder(enc, trg_in)
        steps, attention, _ = stepwise(model.decoder, enc, trg_in)
    assert torch.isfinite(full.float()).all() and torch.isfinite(steps.float()).all()
    assert attention.dtype == torch.float32
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(steps.float(), full.float(), atol=0.1, rtol=0.05)


def test_gradients_reach_every_parameter():
    model = make_model(make_hp(num_embed_source=8, num_embed_target=8, cnn_num_hidden=12)).train()
    src, lengths = batch([6, 4, 5])
    trg_in = trg_input([5, 5, 3])
    model(src, lengths, trg_in).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_adam_learns_a_tiny_copy_task():
    hp = make_hp(cnn_num_hidden=16, num_embed_source=16, num_embed_target=16, weight_init_scale=1.0,
                 embed_dropout_source=0.0, embed_dropout_target=0.0, cnn_hidden_dropout=0.0)
    model = make_model(hp).train()
    src, lengths = batch([6] * 8, seed=3)
    trg_in = torch.cat([torch.full((8, 1), BOS_ID), src[:, :-1]], dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    def loss() -> Tensor:
        logits = model(src, lengths, trg_in)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), src.reshape(-1), ignore_index=PAD_ID)

    first = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * first
