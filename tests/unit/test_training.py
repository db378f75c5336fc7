"""The training loop's rules: stopping, epochs, precision — on the tiny copy task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model import metrics
from model.sagemaker import SageMakerPaths
from model.train import run
from tests.system.copy_task import make_sagemaker_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"batch_size": "16", "rnn_num_hidden": "16", "num_embed_source": "8", "num_embed_target": "8",
        "max_seq_len_source": "12", "max_seq_len_target": "12"}


def train(tmp_path, **hp) -> dict:
    root = make_sagemaker_tree(tmp_path, {**TINY, **hp}, n_train=160, n_val=20)
    assert run(SageMakerPaths(root)) == 0
    return json.loads((root / "model" / "metrics.json").read_text())


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


def test_a_finished_job_restarted_with_a_larger_budget_trains_on_as_one_job_would(tmp_path, caplog):
    common = {"checkpoint_frequency_num_batches": "4", "max_num_epochs": "100"}
    straight = train(tmp_path / "straight", **common, max_num_batches="12")
    root = make_sagemaker_tree(tmp_path / "staged", {**TINY, **common, "max_num_batches": "6"}, n_train=160, n_val=20)
    assert run(SageMakerPaths(root)) == 0
    first = json.loads((root / "model" / "metrics.json").read_text())
    assert first["stop_reason"] == "max_num_batches=6 reached" and first["num_updates"] == 6

    hp_file = root / "input" / "config" / "hyperparameters.json"
    hp_file.write_text(json.dumps({**json.loads(hp_file.read_text()), "max_num_batches": "12"}))
    with caplog.at_level("INFO"):
        assert run(SageMakerPaths(root)) == 0
    staged = json.loads((root / "model" / "metrics.json").read_text())
    assert any("stopped at max_num_batches=6 reached; this job's budget is larger" in r.message
               for r in caplog.records)
    assert staged["stop_reason"] == "max_num_batches=12 reached" and staged["num_updates"] == 12
    # The same updates as one job of 12; the first job's last checkpoint (update 6) is one more in the history.
    assert [h["updates"] for h in staged["history"]] == [4, 6, 8, 12]
    assert [h["updates"] for h in straight["history"]] == [4, 8, 12]
    def validation(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h["metrics"].items() if k.startswith("validation:")} for h in history]

    assert validation([h for h in staged["history"] if h["updates"] != 6]) == validation(straight["history"])
    weights = [torch.load(r / "checkpoints" / "checkpoint.pt", weights_only=True)["model"]
               for r in (root, tmp_path / "straight")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])

    # The same budget again: the job stays finished, trains nothing and writes the same model.
    assert run(SageMakerPaths(root)) == 0
    again = json.loads((root / "model" / "metrics.json").read_text())
    assert again["num_updates"] == 12 and again["history"] == staged["history"]


def test_a_job_whose_budget_ran_out_at_a_checkpoint_stays_finished_when_restarted(tmp_path):
    # The budget's last update is also a checkpoint, which is saved before the stop: the restart must not
    # train one update more.
    root = make_sagemaker_tree(tmp_path, {**TINY, "checkpoint_frequency_num_batches": "3", "max_num_batches": "6",
                                          "max_num_epochs": "100"}, n_train=160, n_val=20)
    assert run(SageMakerPaths(root)) == 0
    first = json.loads((root / "model" / "metrics.json").read_text())
    assert run(SageMakerPaths(root)) == 0
    again = json.loads((root / "model" / "metrics.json").read_text())
    assert first["num_updates"] == again["num_updates"] == 6
    assert again["stop_reason"] == "max_num_batches=6 reached" and again["history"] == first["history"]


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
