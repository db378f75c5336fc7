"""The training loop's rules: losses, stopping, epochs, precision — on the tiny copy task."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model import metrics
from model.sagemaker import SageMakerPaths
from model.train import run
from model.training import bleu_sample, token_losses
from tests.system.copy_task import make_sagemaker_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"batch_size": "16", "rnn_num_hidden": "16", "num_embed_source": "8", "num_embed_target": "8",
        "max_seq_len_source": "12", "max_seq_len_target": "12"}


def train(tmp_path, **hp) -> dict:
    root = make_sagemaker_tree(tmp_path, {**TINY, **hp}, n_train=160, n_val=20)
    assert run(SageMakerPaths(root)) == 0
    return json.loads((root / "model" / "metrics.json").read_text())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_losses_match_torch_cross_entropy_and_ignore_padding(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(1, 11, (3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0
    loss, nll, correct = token_losses(logits, targets, smoothing)
    expected = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=0, reduction="sum",
                               label_smoothing=smoothing)
    assert torch.allclose(loss, expected, atol=1e-4)
    plain = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=0, reduction="sum")
    assert torch.allclose(nll, plain, atol=1e-4)  # perplexity never sees the smoothing
    mask = targets != 0
    assert int(correct) == int(((logits.argmax(-1) == targets) & mask).sum())


def test_early_stop_waits_for_min_num_epochs(tmp_path):
    # A learning rate too small to change accuracy: no checkpoint after the first improves.
    common = {"learning_rate": "1e-12", "optimized_metric": "accuracy", "checkpoint_frequency_num_batches": "2",
              "checkpoint_threshold": "1", "max_num_epochs": "5"}
    eager = train(tmp_path / "a", **common)
    assert eager["stop_reason"] == "1 checkpoints without improvement of accuracy"
    assert eager["num_updates"] == 4 and eager["epochs_completed"] == 0
    patient = train(tmp_path / "b", **common, min_num_epochs="2")
    assert patient["stop_reason"] == "1 checkpoints without improvement of accuracy"
    assert patient["epochs_completed"] == 2  # 160 pairs / 16 = 10 batches an epoch
    assert patient["num_updates"] == 22  # first checkpoint after epoch 2 is done: update 22


def test_max_num_epochs_and_a_final_checkpoint(tmp_path):
    summary = train(tmp_path, max_num_epochs="1", checkpoint_frequency_num_batches="4")
    assert summary["stop_reason"] == "max_num_epochs=1 reached"
    assert summary["num_updates"] == 10
    assert [h["updates"] for h in summary["history"]] == [4, 8, 10]  # the tail after the last checkpoint counts


def test_max_training_seconds_stops_on_time_with_a_final_checkpoint_and_the_best_model(tmp_path):
    root = make_sagemaker_tree(tmp_path, {**TINY, "max_training_seconds": "2", "max_num_epochs": "100000",
                                          "checkpoint_frequency_num_batches": "100000"}, n_train=160, n_val=20)
    assert run(SageMakerPaths(root)) == 0
    summary = json.loads((root / "model" / "metrics.json").read_text())
    assert summary["stop_reason"] == "max_training_seconds=2 reached"
    assert 2.0 <= summary["training_seconds"] < 10.0
    # the only checkpoint is the one after the time ran out, at the last update, and it is the model kept
    assert [h["updates"] for h in summary["history"]] == [summary["num_updates"]]
    assert summary["num_updates"] > 10 and summary["best_checkpoint"] == 1
    assert (root / "model" / "params.pt").is_file()
    saved = torch.load(root / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["seconds"] >= 2.0  # one budget over restarts: a restarted job counts on from here


def test_a_training_step_that_fails_to_compile_trains_on_uncompiled(tmp_path, monkeypatch, caplog):
    compiled = []

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, *args):
            compiled.append(len(args))
            raise RuntimeError("backend compiler failed: no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    common = {"max_num_batches": "6", "checkpoint_frequency_num_batches": "3"}
    with caplog.at_level("WARNING"):
        summary = train(tmp_path / "on", torch_compile="on", **common)
    assert compiled == [4]  # tried once, then never again
    assert any("torch.compile failed (RuntimeError: backend compiler failed" in r.message for r in caplog.records)
    plain = train(tmp_path / "off", torch_compile="off", **common)
    assert compiled == [4]  # off: never compiled
    assert summary["num_updates"] == plain["num_updates"] == 6
    assert summary["best_metrics"] == plain["best_metrics"]  # the failed try changed nothing


def test_bf16_autocast_path_runs_on_cpu(tmp_path):
    summary = train(tmp_path, precision="bf16", max_num_batches="6", checkpoint_frequency_num_batches="3",
                    encoder_type="transformer", decoder_type="transformer", transformer_model_size="16",
                    transformer_attention_heads="2", transformer_feed_forward_num_hidden="16")
    ppl = [h["metrics"]["validation:perplexity"] for h in summary["history"]]
    assert len(ppl) == 2 and all(math.isfinite(p) for p in ppl)


def test_plateau_reduce_lowers_the_rate_in_the_history(tmp_path):
    summary = train(tmp_path, learning_rate="1e-12", optimized_metric="accuracy", max_num_batches="8",
                    checkpoint_frequency_num_batches="2", checkpoint_threshold="10",
                    plateau_reduce_lr_threshold="1", plateau_reduce_lr_factor="0.5")
    rates = [h["learning_rate"] for h in summary["history"]]
    assert rates[0] == pytest.approx(1e-12) and rates[-1] < rates[0]


def test_bleu_sample_rules():
    from model.hyperparameters import Hyperparameters

    assert bleu_sample(100, Hyperparameters()) is None
    assert len(bleu_sample(100, Hyperparameters(optimized_metric="bleu"))) == 100  # bleu needs BLEU: all
    assert len(bleu_sample(100, Hyperparameters(bleu_sample_size=-1))) == 100
    sample = bleu_sample(100, Hyperparameters(bleu_sample_size=10))
    assert len(sample) == 10 and len(set(sample.tolist())) == 10
    assert (sample == bleu_sample(100, Hyperparameters(bleu_sample_size=10))).all()


def test_metric_definitions_read_what_emit_prints():
    import io
    import re

    out = io.StringIO()
    metrics.emit({"validation:bleu": 21.37, "validation:perplexity": 12.8, "train:loss": 1.5e-7,
                  "validation:accuracy": 0.51}, out)
    text = out.getvalue()
    found = {d["Name"]: re.findall(d["Regex"], text) for d in metrics.METRIC_DEFINITIONS}
    assert float(found["validation:bleu"][0]) == 21.37
    assert float(found["validation:perplexity"][0]) == 12.8
    assert float(found["train:loss"][0]) == 1.5e-7
    assert float(found["validation:accuracy"][0]) == 0.51
    assert found["train:perplexity"] == []
    assert set(metrics.OBJECTIVE_METRICS) <= {d["Name"] for d in metrics.METRIC_DEFINITIONS}


def test_progress_lines_come_during_validation_too_and_rates_are_per_window(caplog):
    """The task log hears from training at least every interval, whatever it is doing, and the rates
    describe the last window: an idle window reads 0, not the average since the start."""
    import logging
    import time
    from types import SimpleNamespace

    from model.hyperparameters import parse_hyperparameters
    from model.training import DistInfo, Progress, TrainingState

    hp = parse_hyperparameters({"max_num_batches": "1000"})
    trainer = SimpleNamespace(state=TrainingState(), hp=hp, dist=DistInfo(),
                              schedule=SimpleNamespace(current_lr=0.0003))
    caplog.set_level(logging.INFO, logger="model.training")
    with Progress(trainer, interval=3600) as progress:
        progress.num_batches = 50
        trainer.state.num_updates, trainer.state.target_tokens, trainer.state.batch_in_epoch = 100, 5000, 10
        time.sleep(0.05)
        progress.log_line()
        assert "update 100/1000" in caplog.text and " 0.00 updates/s" not in caplog.text
        caplog.clear()
        progress.log_line()  # nothing trained since the last line
        assert " 0.00 updates/s, 0 target tokens/s" in caplog.text
        caplog.clear()
        with progress.phase("checkpoint 1: validating"):
            time.sleep(0.05)
            progress.log_line()
        assert "checkpoint 1: validating (0m00s so far; update 100)" in caplog.text
        assert progress.checkpoint_seconds >= 0.05
    caplog.clear()
    with Progress(trainer, interval=0.02):
        time.sleep(0.2)  # the thread alone must speak up
    assert caplog.text.count("target tokens/s") >= 2
