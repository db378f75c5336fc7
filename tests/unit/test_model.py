"""build_model: any encoder type with any decoder type, and MXNet-style initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from model.hyperparameters import Hyperparameters
from model.model import build_model, count_parameters
from tests.torch_helpers import stepwise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"num_embed_source": 8, "num_embed_target": 8, "rnn_num_hidden": 12, "cnn_num_hidden": 10,
         "transformer_model_size": 16, "transformer_attention_heads": 2, "transformer_feed_forward_num_hidden": 16}


@pytest.mark.parametrize("encoder", ["rnn", "cnn", "transformer"])
@pytest.mark.parametrize("decoder", ["rnn", "cnn", "transformer"])
def test_every_encoder_feeds_every_decoder(encoder, decoder):
    torch.manual_seed(0)
    model = build_model(Hyperparameters(encoder_type=encoder, decoder_type=decoder, **SMALL), 15, 17).eval()
    src = torch.tensor([[4, 5, 6, 3], [7, 3, 0, 0]])
    lengths = torch.tensor([4, 2])
    trg_in = torch.tensor([[2, 8, 9], [2, 10, 0]])
    with torch.no_grad():
        logits = model(src, lengths, trg_in)
        stepped, attention, _ = stepwise(model.decoder, model.encode(src, lengths), trg_in)
    assert logits.shape == (2, 3, 17)
    torch.testing.assert_close(stepped, logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 3), atol=1e-5)
    assert count_parameters(model) > 0
    # Training asks for the real target positions only: the same logits, without the padding rows.
    select = trg_in != 0
    with torch.no_grad():
        real = model(src, lengths, trg_in, select)
    assert real.shape == (5, 17)
    torch.testing.assert_close(real, logits[select], atol=1e-5, rtol=1e-5)


def test_uniform_initialisation_stays_within_the_scale():
    model = build_model(Hyperparameters(weight_init_type="uniform", weight_init_scale=0.05, **SMALL), 30, 40)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            assert p.abs().max() <= 0.05 + 1e-7, name
            assert p.abs().max() > 0.01, name


@pytest.mark.parametrize("factor", ["in", "out", "avg"])
def test_xavier_initialisation_follows_the_fan(factor):
    hp = Hyperparameters(xavier_factor_type=factor, **SMALL)
    model = build_model(hp, 30, 40)
    out = model.decoder.output_layer.weight  # 40 × 12: fan_in 12, fan_out 40
    fan = {"in": 12, "out": 40, "avg": 26}[factor]
    bound = math.sqrt(hp.weight_init_scale / fan)
    assert out.abs().max() <= bound + 1e-7
    assert out.abs().max() > 0.8 * bound
    assert (model.decoder.output_layer.bias == 0).all()
    assert (model.encoder.embedding.weight[0] == 0).all()  # the padding row
