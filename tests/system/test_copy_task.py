"""System tests: train tiny models through the real entrypoint on a synthetic copy/reverse task and
check that beam search and greedy decoding translate held-out sequences (BLEU ≥ 90), for every
architecture; plus determinism with a seed on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import data_io, metrics
from model.beam_search import beam_search, greedy_search
from model.checkpoint import load_model
from model.sagemaker import SageMakerPaths
from model.train import run
from tests.system.copy_task import make_sagemaker_tree, pairs, sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "batch_size": "32",
    "checkpoint_frequency_num_batches": "100",
    "learning_rate": "0.003",
    "num_embed_source": "32",
    "num_embed_target": "32",
    "rnn_num_hidden": "64",
    "cnn_num_hidden": "64",
    "transformer_model_size": "32",
    "transformer_attention_heads": "4",
    "transformer_feed_forward_num_hidden": "64",
    "transformer_dropout": "0.0",
    "max_seq_len_source": "20",
    "max_seq_len_target": "20",
}


def held_out_bleu(model_dir, reverse: bool, search: str = "beam") -> float:
    loaded = load_model(model_dir)
    test = pairs(sequences(200, seed=99), reverse)
    data = data_io.from_lists([s for s, _ in test], [t for _, t in test])
    batch = data_io.collate(data, np.arange(len(test)))
    if search == "beam":
        out = beam_search(loaded.model, batch.src, batch.lengths, beam_size=5, max_output_length=21)
    else:
        out = greedy_search(loaded.model, batch.src, batch.lengths, max_output_length=21)
    hyps = [" ".join(loaded.target_tokens[i] for i in o.tokens) for o in out]
    refs = [" ".join(loaded.target_tokens[i] for i in t) for _, t in test]
    return metrics.corpus_bleu(hyps, refs)


CASES = {
    "rnn-copy": ("rnn", False, {"max_num_batches": "500"}),
    "rnn-gru-bilinear-reverse": ("rnn", True, {
        "max_num_batches": "600", "rnn_cell_type": "gru", "rnn_attention_type": "bilinear",
        "num_layers_encoder": "2", "num_layers_decoder": "2", "rnn_residual_connections": "true"}),
    "cnn-reverse": ("cnn", True, {"max_num_batches": "600", "num_layers_encoder": "2", "num_layers_decoder": "2"}),
    "transformer-reverse": ("transformer", True, {
        "max_num_batches": "600", "num_layers_encoder": "2", "num_layers_decoder": "2",
        "optimized_metric": "bleu", "bleu_sample_size": "50"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_model_learns_the_task(tmp_path, case):
    arch, reverse, extra = CASES[case]
    hp = {**TINY, "encoder_type": arch, "decoder_type": arch, **extra}
    root = make_sagemaker_tree(tmp_path, hp, reverse=reverse)
    assert run(SageMakerPaths(root)) == 0
    assert held_out_bleu(root / "model", reverse) >= 90
    assert held_out_bleu(root / "model", reverse, search="greedy") >= 90


def test_training_is_deterministic_with_a_seed_on_cpu(tmp_path):
    hp = {**TINY, "encoder_type": "transformer", "decoder_type": "transformer", "max_num_batches": "30",
          "checkpoint_frequency_num_batches": "30", "transformer_dropout": "0.1", "seed": "7"}
    params = []
    for name in ("a", "b"):
        root = make_sagemaker_tree(tmp_path / name, hp, n_train=500, n_val=50)
        assert run(SageMakerPaths(root)) == 0
        params.append(torch.load(root / "model" / "params.pt", weights_only=True))
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    root = make_sagemaker_tree(tmp_path / "c", {**hp, "seed": "8"}, n_train=500, n_val=50)
    assert run(SageMakerPaths(root)) == 0
    other = torch.load(root / "model" / "params.pt", weights_only=True)
    assert not all(torch.equal(params[0][k], other[k]) for k in other)
