"""What the checkpoints score BLEU on."""

from __future__ import annotations

from model.checkpoint_decoder import bleu_sample


def test_bleu_sample_rules():
    from model.hyperparameters import Hyperparameters

    assert bleu_sample(100, Hyperparameters()) is None
    assert len(bleu_sample(100, Hyperparameters(optimized_metric="bleu"))) == 100  # bleu needs BLEU: all
    assert len(bleu_sample(100, Hyperparameters(bleu_sample_size=-1))) == 100
    sample = bleu_sample(100, Hyperparameters(bleu_sample_size=10))
    assert len(sample) == 10 and len(set(sample.tolist())) == 10
    assert (sample == bleu_sample(100, Hyperparameters(bleu_sample_size=10))).all()
