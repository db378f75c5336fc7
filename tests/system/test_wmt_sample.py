"""System test on real text: a few hundred updates on the bundled WMT sample (through the data-prep
step's channels and the real entrypoint) must make validation perplexity fall steadily."""

from __future__ import annotations

import json
import math
import re

import pytest

from model.sagemaker import SageMakerPaths
from model.train import run
from pipeline_tasks.channels import VocabConfig, make_channels
from tests.conftest import SAMPLE, head_lines

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_validation_perplexity_falls_on_the_wmt_sample(tmp_path, capsys):
    files = {f"train.{lang}": str(SAMPLE / f"train.{lang}") for lang in ("en", "de")}
    for lang in ("en", "de"):
        files[f"val.{lang}"] = str(head_lines(SAMPLE / f"val.{lang}", tmp_path / f"val.{lang}", 300))
    make_channels(files["train.en"], files["train.de"], files["val.en"], files["val.de"], tmp_path / "ml/input/data",
                  VocabConfig(num_words_source=4000, num_words_target=4000), workers=1)
    config = tmp_path / "ml/input/config"
    config.mkdir(parents=True)
    config.joinpath("hyperparameters.json").write_text(json.dumps({
        "max_seq_len_source": "40", "max_seq_len_target": "40", "batch_size": "32",
        "checkpoint_frequency_num_batches": "100", "max_num_batches": "300", "rnn_num_hidden": "64",
        "num_embed_source": "32", "num_embed_target": "32", "learning_rate": "0.003",
    }))
    assert run(SageMakerPaths(tmp_path / "ml")) == 0
    printed = [float(v) for v in re.findall(r"validation:perplexity=([0-9.eE+-]+)", capsys.readouterr().out)]
    summary = json.loads((tmp_path / "ml/model/metrics.json").read_text())
    history = [h["metrics"]["validation:perplexity"] for h in summary["history"]]
    assert len(history) == 3 and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(printed, history))
    assert history[0] > history[1] > history[2]
    assert history[2] < 0.75 * history[0]
    assert history[2] < 4004  # better than a uniform guess over the target vocabulary
    assert summary["best_checkpoint"] == 3 and math.isclose(summary["best_metric"], history[2])
