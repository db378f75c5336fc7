"""The quality gate's decisions, the promoted-model pointer, the run layout and whole-folder publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_tasks.gate import GateRule, decide, gate, read_pointer, write_pointer
from pipeline_tasks.pipeline import CorpusConfig, find_split
from pipeline_tasks.runs import COMPLETE_MARKER, RunLayout, get_tree, is_complete, put_tree, safe_segment

CURRENT = {"run_id": "r1", "metrics": {"test:bleu": 20.0, "test:perplexity": 10.0}}


@pytest.mark.parametrize(("new", "rule", "promote"), [
    ({"test:bleu": 20.0}, GateRule(), True),                              # at least as good
    ({"test:bleu": 19.99}, GateRule(), False),
    ({"test:bleu": 20.4}, GateRule(min_delta=0.5), False),
    ({"test:bleu": 20.5}, GateRule(min_delta=0.5), True),
    ({"test:perplexity": 9.0}, GateRule(metric="test:perplexity"), True),  # lower is better
    ({"test:perplexity": 11.0}, GateRule(metric="test:perplexity"), False),
    ({"test:perplexity": 11.0}, GateRule(metric="test:perplexity", mode="max"), True),
    ({"test:bleu": float("nan")}, GateRule(), False),
    ({}, GateRule(), False),
])
def test_decide_against_the_promoted_model(new: dict, rule: GateRule, promote: bool) -> None:
    decision = decide(new, CURRENT, rule)
    assert decision.promote is promote
    assert rule.metric in decision.reason


def test_first_promotion_and_threshold() -> None:
    assert decide({"test:bleu": 0.1}, None, GateRule()).promote
    no = decide({"test:bleu": 0.1}, None, GateRule(threshold=5.0))
    assert not no.promote and "threshold" in no.reason
    assert decide({"test:perplexity": 50.0}, None, GateRule(metric="test:perplexity", threshold=100.0)).promote
    assert decide({"test:bleu": 3.0}, {"metrics": {}}, GateRule()).promote  # the pointer lacks the metric


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        GateRule(mode="best")
    with pytest.raises(ValueError, match="min_delta"):
        GateRule(min_delta=-1)
    with pytest.raises(ValueError, match="unknown gate rule field"):
        GateRule.from_dict({"metric": "test:bleu", "delta": 1})


def test_gate_writes_the_pointer_only_when_promoting(tmp_path: Path) -> None:
    pointer = str(tmp_path / "wmt_seq2seq" / "promoted.json")
    assert read_pointer(pointer) is None
    first = gate({"test:bleu": 12.0}, pointer, GateRule(), {"run_id": "a", "model": "m1.tar.gz"})
    assert first["promote"] and read_pointer(pointer)["model"] == "m1.tar.gz"
    worse = gate({"test:bleu": 11.0}, pointer, GateRule(), {"run_id": "b", "model": "m2.tar.gz"})
    assert not worse["promote"] and worse["current_value"] == 12.0
    assert read_pointer(pointer)["model"] == "m1.tar.gz" and read_pointer(pointer)["metrics"] == {"test:bleu": 12.0}
    Path(pointer).write_text("{not json")
    with pytest.raises(ValueError, match="promoted-model pointer is not valid JSON"):
        read_pointer(pointer)
    write_pointer(pointer, {"model": "x"})
    assert json.loads(Path(pointer).read_text()) == {"model": "x"}


def test_run_layout_is_designs_and_safe() -> None:
    layout = RunLayout("s3://bucket/root", "wmt_seq2seq", "manual__2026-11-21T20:30:00.123+00:00")
    assert layout.base == "s3://bucket/root/wmt_seq2seq/manual__2026-11-21T20_30_00.123_00_00"
    assert layout.uri("channels", "train") == layout.base + "/channels/train"
    assert layout.pointer == "s3://bucket/root/wmt_seq2seq/promoted.json"
    assert set(layout.as_dict()) >= {"raw", "subset", "tok", "channels", "model", "eval", "transform"}
    with pytest.raises(ValueError, match="unknown stage"):
        layout.uri("models")
    assert safe_segment("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00_00_00_00_00"
    with pytest.raises(ValueError):
        safe_segment("///")


def test_put_tree_publishes_whole_and_get_tree_refuses_incomplete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    dest = str(tmp_path / "dest")
    assert not is_complete(dest)
    assert put_tree(src, dest) == ["a.txt", "sub/b.txt"]
    assert is_complete(dest)
    assert (Path(dest) / COMPLETE_MARKER).read_text().split() == ["a.txt", "sub/b.txt"]
    got = get_tree(dest, tmp_path / "copy")
    assert (got / "sub" / "b.txt").read_text() == "b" and not (got / COMPLETE_MARKER).exists()
    (Path(dest) / COMPLETE_MARKER).unlink()  # a task killed before its marker
    with pytest.raises(FileNotFoundError, match="not a complete artifact"):
        get_tree(dest, tmp_path / "copy2")


def test_put_tree_over_an_earlier_output_leaves_none_of_its_files(tmp_path: Path) -> None:
    """A try killed after publishing some files, or an earlier output, must not leave a file get_tree fetches."""
    dest = str(tmp_path / "recordio")
    (tmp_path / "recordio" / "train").mkdir(parents=True)
    (tmp_path / "recordio" / "train" / "stale.rec").write_bytes(b"old records")
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "train.rec").write_bytes(b"new records")
    assert put_tree(src, dest) == ["train/train.rec"]
    assert sorted(str(p.relative_to(dest)) for p in Path(dest).rglob("*") if p.is_file()) == \
        [COMPLETE_MARKER, "train/train.rec"]
    got = get_tree(dest, tmp_path / "copy")
    assert sorted(p.name for p in (got / "train").iterdir()) == ["train.rec"]


def test_corpus_layout_and_split_lookup(tmp_path: Path) -> None:
    assert CorpusConfig("wmt17-de-en-preprocessed").files()["train"] == "corpus.tc.{lang}"
    assert CorpusConfig("https://example.org/x.tgz", layout={"test": "nt.{lang}"}).files()["test"] == "nt.{lang}"
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "newstest2014.tc.en").write_text("x\n")
    assert find_split(tmp_path, "newstest2014.tc.{lang}", "en") == tmp_path / "dev" / "newstest2014.tc.en"
    with pytest.raises(FileNotFoundError, match=r"newstest2014\.tc\.de"):
        find_split(tmp_path, "newstest2014.tc.{lang}", "de")


def test_a_retried_train_step_reuses_an_earlier_trys_stored_job(tmp_path: Path, monkeypatch) -> None:
    """A try that trained and stored its model but died before returning is not trained again."""
    from pipeline_tasks import pipeline
    from pipeline_tasks.jobs import names
    from pipeline_tasks.jobs.local import training

    request = {"OutputDataConfig": {"S3OutputPath": str(tmp_path / "model")}, names.JOB_PREFIX_KEY: "wmt"}
    first = names.job_name("wmt", "run-1", 1)
    out = tmp_path / "model" / first / "output"   # what a completed try 1 left, as run_training_job writes it
    out.mkdir(parents=True)
    (out / "model.tar.gz").write_bytes(b"x" * 10)
    stored = {"TrainingJobName": first, "TrainingJobStatus": "Completed", "Backend": {"ModelArtifactsBytes": 10}}
    (out / "describe.json").write_text(json.dumps(stored))
    monkeypatch.setattr(training, "run_training_job", lambda *a, **k: pytest.fail("trained again"))
    assert pipeline.train_step(request, "local", "run-1", 3) == {"Training": stored}
    monkeypatch.setattr(training, "run_training_job",
                        lambda config, backend: {"TrainingJobName": config["TrainingJobName"],
                                                 "TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: x"})
    with pytest.raises(RuntimeError, match=r"-t1 failed: AlgorithmError: x"):
        pipeline.train_step(request, "local", "run-1", 1)
