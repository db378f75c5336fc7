"""Warm start through the container's ``model`` channel: a child job begins from its parent's weights
(as an archive or as files), keeps them across a restart, records the parent, and refuses a parent
whose architecture or vocabulary does not fit, naming each difference."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from model import vocab
from model.archive import sha256_file
from model.hyperparameters import architecture_names
from tests.integration.test_train_container import failure, run_main, sagemaker_root

# The parent: the session's copy-task model (tests/models.py, trained to copy its input). The child keeps
# its architecture and changes only training hyperparameters (allowed): learning rate, stopping, checkpoints.
CHILD_TRAINING = {"max_num_batches": "5", "checkpoint_frequency_num_batches": "5", "learning_rate": "0.0003",
                  "optimized_metric": "perplexity", "checkpoint_threshold": "100000"}


@pytest.fixture(scope="module")
def parent(copy_model: Path) -> Path:
    return copy_model


@pytest.fixture(scope="module")
def parent_channels(copy_model: Path) -> Path:
    """The channels the parent was trained on (the child trains on the same, as a retrain on old data would)."""
    return copy_model.parent / "input" / "data"


def child_hp(parent: Path, **change: str) -> dict[str, str]:
    return {**json.loads((parent / "hyperparameters.json").read_text()), **CHILD_TRAINING, **change}


def child_root(tmp: Path, channels: Path, parent: Path, hp: dict[str, str], as_archive: bool) -> Path:
    root = sagemaker_root(tmp, channels, hp)
    channel = root / "input" / "data" / "model"
    channel.mkdir(parents=True)
    if as_archive:
        with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
            for f in sorted(parent.iterdir()):
                tar.add(f, arcname=f.name)
    else:
        shutil.copytree(parent, channel / "model")
    return root


def val_ppl(model_dir: Path) -> list[float]:
    history = json.loads((model_dir / "metrics.json").read_text())["history"]
    return [h["metrics"]["validation:perplexity"] for h in history]


@pytest.mark.parametrize("as_archive", [True, False], ids=["model.tar.gz", "files"])
def test_a_child_starts_from_its_parents_weights(tmp_path, monkeypatch, parent_channels, parent, as_archive):
    root = child_root(tmp_path / "child", parent_channels, parent, child_hp(parent), as_archive)
    monkeypatch.setenv("SEQ2SEQ_PARENT_MODEL_URI", "s3://bucket/runs/1/model/job/output/model.tar.gz")
    assert run_main(monkeypatch, root) == 0
    monkeypatch.delenv("SEQ2SEQ_PARENT_MODEL_URI")
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["parent"]["params_sha256"] == sha256_file(parent / "params.pt")
    # Where the parent came from: the request's Environment (the channel's files do not say).
    assert config["parent"]["uri"] == "s3://bucket/runs/1/model/job/output/model.tar.gz"
    assert json.loads((root / "model" / "metrics.json").read_text())["parent"] == config["parent"]
    # From scratch, the same 5 updates leave the model far behind the parent; warm-started, its first
    # checkpoint is within 10 % of the parent's best validation perplexity.
    scratch = sagemaker_root(tmp_path / "scratch", parent_channels, child_hp(parent))
    assert run_main(monkeypatch, scratch) == 0
    parent_best = min(val_ppl(parent))
    assert val_ppl(root / "model")[0] <= 1.1 * parent_best
    assert val_ppl(scratch / "model")[0] > 3 * parent_best
    assert "parent" not in json.loads((scratch / "model" / "config.json").read_text())


def test_a_restarted_warm_started_job_resumes_its_own_checkpoint(tmp_path, monkeypatch, parent_channels, parent):
    root = child_root(tmp_path, parent_channels, parent, child_hp(parent), as_archive=True)
    assert run_main(monkeypatch, root) == 0
    first = torch.load(root / "checkpoints" / "checkpoint.pt", weights_only=False)["state"]["num_updates"]
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(child_hp(parent, max_num_batches="10")))
    assert run_main(monkeypatch, root) == 0  # the checkpoint (warm-started weights, trained on) wins
    summary = json.loads((root / "model" / "metrics.json").read_text())
    assert first == 5 and summary["num_updates"] == 10
    assert [h["updates"] for h in summary["history"]] == [5, 10]
    assert max(val_ppl(root / "model")) <= 1.1 * min(val_ppl(parent))  # still the parent's quality
    assert json.loads((root / "model" / "config.json").read_text())["parent"]["params_sha256"] == \
        sha256_file(parent / "params.pt")


@pytest.mark.parametrize("change,needle", [
    ({"num_layers_encoder": "2"}, "num_layers_encoder: parent 1, this job 2"),
    ({"rnn_num_hidden": "48"}, "rnn_num_hidden: parent 64, this job 48"),
    ({"rnn_num_hidden": "48", "rnn_cell_type": "gru"}, "rnn_cell_type: parent lstm, this job gru"),
])
def test_an_architecture_mismatch_fails_naming_each_hyperparameter(tmp_path, monkeypatch, parent_channels, parent,
                                                                   change, needle):
    root = child_root(tmp_path, parent_channels, parent, child_hp(parent, **change), as_archive=True)
    assert run_main(monkeypatch, root) == 1
    text = failure(root)
    assert needle in text and "channel 'model'" in text
    for name in change:
        assert f"{name}: parent" in text
    assert not (root / "model" / "params.pt").exists()


def test_a_vocabulary_that_is_not_the_parents_fails(tmp_path, monkeypatch, parent_channels, parent):
    root = child_root(tmp_path, parent_channels, parent, child_hp(parent), as_archive=False)
    src = root / "input" / "data" / "vocab" / "vocab.src.json"
    words = vocab.load(src)
    vocab.save(dict(list(words.items())[:-1]), src)  # one word fewer: another vocabulary size
    trg = root / "input" / "data" / "vocab" / "vocab.trg.json"
    swapped = {t: i for t, i in vocab.load(trg).items()}
    a, b = (t for t, i in swapped.items() if i in (4, 5))
    swapped[a], swapped[b] = swapped[b], swapped[a]  # same size, two ids swapped
    vocab.save(dict(sorted(swapped.items(), key=lambda kv: kv[1])), trg)
    assert run_main(monkeypatch, root) == 1
    text = failure(root)
    assert f"vocab.src.json: parent {len(words)} entries, this job's vocab channel {len(words) - 1}" in text
    assert "vocab.trg.json: not the parent's vocabulary (id 4 is" in text


def test_a_corrupt_or_missing_parameter_file_is_named(tmp_path, monkeypatch, parent_channels, parent):
    root = child_root(tmp_path / "corrupt", parent_channels, parent, child_hp(parent), as_archive=False)
    params = root / "input" / "data" / "model" / "model" / "params.pt"
    params.write_bytes(params.read_bytes()[:200])
    assert run_main(monkeypatch, root) == 1
    assert "params.pt: cannot read this parent model parameter file" in failure(root)

    root = child_root(tmp_path / "missing", parent_channels, parent, child_hp(parent), as_archive=False)
    (root / "input" / "data" / "model" / "model" / "params.pt").unlink()
    assert run_main(monkeypatch, root) == 1
    assert "channel 'model'" in failure(root) and "params.pt" in failure(root)


def test_architecture_names_are_those_that_shape_tensors():
    names = set(architecture_names())
    assert {"encoder_type", "rnn_num_hidden", "num_layers_encoder", "num_embed_target", "transformer_model_size",
            "weight_tying", "cnn_kernel_width_encoder"} <= names
    assert not names & {"learning_rate", "batch_size", "max_num_batches", "embed_dropout_source", "optimizer_type",
                        "checkpoint_frequency_num_batches", "label_smoothing"}
