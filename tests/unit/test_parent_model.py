"""Warm start, the pipeline's side (pipeline_tasks/parent_model.py): which model a run starts from, the
checks made before any data is prepared, and one tokenizer and vocabulary across runs (a saved
tokenizer applied as it is; a parent's vocabularies reused, unseen words counted as <unk>)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from model.constants import PARAMS_FILE, TOKENIZER_FILE
from pipeline_tasks.channels import VocabConfig, make_channels
from pipeline_tasks.gate import write_pointer
from pipeline_tasks.parent_model import (
    PARENT_FILE,
    ParentModelError,
    check_parent,
    keep_parent_files,
    resolve_init_model,
)
from pipeline_tasks.tokenization import Tokenizer, TokenizerConfig, tokenize_corpus
from tests.conftest import SAMPLE

HP = {"rnn_num_hidden": 32, "num_embed_source": 16, "num_embed_target": 16, "learning_rate": 0.001}
WORDS = TokenizerConfig()


def model_dir(root: Path, hyperparameters: dict | None = None, tokenizer: dict | None = None) -> Path:
    """A model folder as the container writes it (its small files through the container's own writer)."""
    import torch

    from model import vocab
    from model.checkpoint import save_model_files
    from model.hyperparameters import parse_hyperparameters
    from pipeline_tasks.jobs.requests import hyperparameter_strings

    hp = parse_hyperparameters(hyperparameter_strings(hyperparameters or HP))
    words = vocab.prune({"hallo": 3, "welt": 2}, 100, 1)
    save_model_files(root, hp, words, words)
    torch.save({"embedding.weight": torch.zeros(4, 2)}, root / PARAMS_FILE)
    if tokenizer is not None:
        (root / TOKENIZER_FILE).write_text(json.dumps(tokenizer), encoding="utf-8")
    return root


# --- resolving init_model ----------------------------------------------------------------------------------

def test_none_trains_from_scratch():
    assert resolve_init_model("none", "/nowhere/promoted.json") is None
    assert resolve_init_model(None, "/nowhere/promoted.json") is None
    assert resolve_init_model(" None ", "/nowhere/promoted.json") is None


def test_promoted_with_nothing_promoted_trains_from_scratch_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_init_model("promoted", str(tmp_path / "promoted.json")) is None
    assert "no model is promoted yet" in caplog.text and "trains from scratch" in caplog.text


def test_promoted_is_the_model_the_pointer_names_now(tmp_path):
    pointer = str(tmp_path / "promoted.json")
    model = tmp_path / "run1" / "model.tar.gz"
    model.parent.mkdir()
    model.write_bytes(b"archive")
    write_pointer(pointer, {"model": str(model), "run_id": "manual__1", "training_job": "job-1",
                            "metrics": {"test:bleu": 12.5}})
    assert resolve_init_model("promoted", pointer) == {
        "init_model": "promoted", "model": str(model), "pointer": pointer, "run_id": "manual__1",
        "training_job": "job-1", "metrics": {"test:bleu": 12.5}}
    write_pointer(pointer, {"run_id": "manual__1"})
    with pytest.raises(ParentModelError, match="names no model"):
        resolve_init_model("promoted", pointer)


def test_a_uri_must_exist_and_sagemaker_wants_s3(tmp_path, monkeypatch):
    with pytest.raises(ParentModelError, match=r"init_model .*missing.tar.gz: no model there"):
        resolve_init_model(str(tmp_path / "missing.tar.gz"), "unused")
    (tmp_path / "model.tar.gz").write_bytes(b"archive")
    monkeypatch.chdir(tmp_path)
    assert resolve_init_model("model.tar.gz", "unused") == {"init_model": "model.tar.gz",
                                                           "model": str(tmp_path / "model.tar.gz")}
    with pytest.raises(ParentModelError, match="a SageMaker training job reads its model channel from S3 only"):
        resolve_init_model("model.tar.gz", "unused", backend="sagemaker")


# --- checking the parent ------------------------------------------------------------------------------------

def test_a_parent_of_the_same_architecture_passes_with_its_tokenizer(tmp_path):
    tok = {"mode": "moses", "source_lang": "en", "target_lang": "de"}
    parent = model_dir(tmp_path / "m", tokenizer=tok)
    cfg = check_parent(parent, {**HP, "learning_rate": 0.01, "batch_size": 8}, "en", "de", WORDS)
    assert cfg == TokenizerConfig(mode="moses")  # training hyperparameters may differ
    assert check_parent(model_dir(tmp_path / "w"), HP, "en", "de", WORDS) is None  # word level, no tokenizer


def test_each_architecture_difference_is_named_with_both_values(tmp_path):
    parent = model_dir(tmp_path / "m")
    with pytest.raises(ParentModelError) as e:
        check_parent(parent, {**HP, "rnn_num_hidden": 64, "num_layers_encoder": 2}, "en", "de", WORDS)
    assert "rnn_num_hidden: parent 32, this job 64" in str(e.value)
    assert "num_layers_encoder: parent 1, this job 2" in str(e.value)
    assert "learning_rate" not in str(e.value)


def test_a_parent_that_is_not_ours_or_for_other_languages_or_without_subwords(tmp_path):
    parent = model_dir(tmp_path / "m", tokenizer={"source_lang": "de", "target_lang": "en"})
    with pytest.raises(ParentModelError, match="the parent translates de→en, this run en→de"):
        check_parent(parent, HP, "en", "de", WORDS)
    with pytest.raises(ParentModelError, match="needs bpe_vocab_size null"):
        check_parent(model_dir(tmp_path / "w"), HP, "en", "de", TokenizerConfig(bpe_vocab_size=500))
    (parent / "vocab.trg.json").unlink()
    with pytest.raises(ParentModelError, match=r"the parent model has no vocab\.trg\.json"):
        check_parent(parent, HP, "de", "en", WORDS)


def test_what_the_run_keeps_of_its_parent(tmp_path):
    parent = model_dir(tmp_path / "m", tokenizer={"mode": "whitespace"})
    record = keep_parent_files(parent, tmp_path / "kept", {"init_model": "promoted", "model": "/runs/1/model.tar.gz"},
                               TokenizerConfig())
    kept = tmp_path / "kept"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["config.json", "hyperparameters.json", "vocab.src.json", "vocab.trg.json", TOKENIZER_FILE, PARENT_FILE])
    assert not (kept / PARAMS_FILE).exists()  # the training job fetches the weights itself
    assert json.loads((kept / PARENT_FILE).read_text()) == record
    assert record["params_sha256"] == hashlib.sha256((parent / PARAMS_FILE).read_bytes()).hexdigest()
    assert record["model"] == "/runs/1/model.tar.gz" and record["tokenizer"] == "whitespace, words"


# --- one tokenizer and one vocabulary across runs -------------------------------------------------------------

def _corpus(tmp_path: Path, name: str, start: int, n: int) -> dict[str, tuple[str, str]]:
    """`n` pairs of the real sample from line `start` on, as train; 50 validation pairs."""
    out = {}
    for split, skip, count in (("train", start, n), ("val", 0, 50)):
        pair = []
        for lang in ("en", "de"):
            src = SAMPLE / f"{split}.{lang}"
            lines = src.read_bytes().splitlines(keepends=True)[skip:skip + count]
            dst = tmp_path / name / f"{split}.{lang}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(b"".join(lines))
            pair.append(str(dst))
        out[split] = (pair[0], pair[1])
    return out


def test_a_saved_tokenizer_is_applied_as_it_is(tmp_path):
    first = tmp_path / "tok1"
    tokenize_corpus(_corpus(tmp_path, "c1", 0, 400), first, TokenizerConfig(mode="moses", bpe_vocab_size=300,
                                                                            bpe_joint=True), workers=1)
    second = tmp_path / "tok2"
    report = tokenize_corpus(_corpus(tmp_path, "c2", 400, 200), second, WORDS, workers=1, saved=first)
    assert report["reused_tokenizer"] == str(first)
    assert (second / TOKENIZER_FILE).read_bytes() == (first / TOKENIZER_FILE).read_bytes()
    assert (second / "spm.joint.model").read_bytes() == (first / "spm.joint.model").read_bytes()  # not relearned
    tokenizer = Tokenizer.load(first)
    raw = Path(_corpus(tmp_path, "c3", 400, 200)["train"][0]).read_text(encoding="utf-8").splitlines()
    assert (second / "train.en").read_text(encoding="utf-8").splitlines() == [tokenizer.encode(x) for x in raw]


def test_a_parents_vocabularies_keep_their_ids_and_unseen_words_are_counted(tmp_path):
    c1, c2 = _corpus(tmp_path, "c1", 0, 300), _corpus(tmp_path, "c2", 300, 300)
    make_channels(*c1["train"], *c1["val"], tmp_path / "ch1", VocabConfig(), workers=1)
    vocab1 = tmp_path / "ch1" / "vocab"
    report = make_channels(*c2["train"], *c2["val"], tmp_path / "ch2",
                           VocabConfig(num_words_source=10, source_json=str(vocab1 / "vocab.src.json"),
                                       target_json=str(vocab1 / "vocab.trg.json")),
                           workers=1, vocab_origin="s3://b/runs/1/model.tar.gz")
    for name in ("vocab.src.json", "vocab.trg.json"):
        assert json.loads((tmp_path / "ch2" / "vocab" / name).read_text()) == json.loads((vocab1 / name).read_text())
    assert report["vocab"]["reused_from"] == "s3://b/runs/1/model.tar.gz"
    known = json.loads((vocab1 / "vocab.src.json").read_text())
    unseen = sum(tok not in known for line in Path(c2["train"][0]).read_text(encoding="utf-8").splitlines()
                 for tok in line.split())
    assert unseen > 0 and report["train"]["source_unk_tokens"] == unseen
