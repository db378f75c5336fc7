"""``average_checkpoints``: the container averages the N best checkpoints at the end of training, scores
the average on the validation channel, prints both scores as metric lines and keeps the better model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from model.averaging import average_state_dicts
from model.checkpoint import load_model
from tests.integration.test_train_container import run_main, sagemaker_root
from tests.models import TINY_RNN

HP = {**TINY_RNN, "max_num_batches": "30", "checkpoint_frequency_num_batches": "5", "checkpoint_threshold": "100",
      "optimized_metric": "perplexity", "average_checkpoints": "3"}


def test_the_average_of_the_three_best_is_scored_and_the_better_model_kept(tmp_path, monkeypatch, capsys,
                                                                           copy_model: Path):
    root = sagemaker_root(tmp_path, copy_model.parent / "input" / "data", HP)
    assert run_main(monkeypatch, root) == 0
    out = capsys.readouterr().out
    average = float(re.search(r"^average:perplexity=([0-9.eE+-]+)$", out, re.M).group(1))
    best = float(re.search(r"^best_checkpoint:perplexity=([0-9.eE+-]+)$", out, re.M).group(1))
    summary = json.loads((root / "model" / "metrics.json").read_text())
    info = summary["checkpoint_average"]
    history = {h["checkpoint"]: h["metrics"]["validation:perplexity"] for h in summary["history"]}
    three_best = sorted(history, key=lambda c: (history[c], c))[:3]
    assert sorted(info["checkpoints"]) == sorted(three_best) and len(history) == 6
    assert abs(info["best_checkpoint_perplexity"] - min(history.values())) < 1e-9
    assert abs(info["perplexity"] - average) < 1e-3 * average and abs(best - min(history.values())) < 1e-3 * best
    assert info["kept"] == (average <= info["best_checkpoint_perplexity"])
    # The model directory holds what the decision says: the average of the three, or the best single one.
    params = torch.load(root / "model" / "params.pt", weights_only=True)
    states = [torch.load(root / "checkpoints" / "best" / f"params.{c}.pt", weights_only=True)
              for c in info["checkpoints"]]
    averaged = average_state_dicts(states)
    best_single = states[info["checkpoints"].index(summary["best_checkpoint"])]
    expected = averaged if info["kept"] else best_single
    assert all(torch.equal(params[k], expected[k]) for k in params)
    assert load_model(root / "model").model is not None


def test_off_by_default(tmp_path, monkeypatch, copy_model: Path):
    root = sagemaker_root(tmp_path, copy_model.parent / "input" / "data",
                          {**HP, "average_checkpoints": "1", "max_num_batches": "10"})
    assert run_main(monkeypatch, root) == 0
    assert "checkpoint_average" not in json.loads((root / "model" / "metrics.json").read_text())
    assert not (root / "checkpoints" / "best").exists()
