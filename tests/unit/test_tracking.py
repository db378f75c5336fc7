"""Run tracking (pipeline_tasks/tracking.py): where runs go by default, how params and learning curves are
recorded, the registry's champion alias, and that a tracking failure is reported, never raised."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline_tasks.tracking import (
    CHAMPION_ALIAS,
    Tracker,
    TrackingConfig,
    embedded_store_uri,
    flatten,
    history_metrics,
    registered_model_name,
    resolve_tracking_uri,
)


def test_where_runs_go(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert embedded_store_uri(str(tmp_path / "root")) == f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}"
    assert embedded_store_uri("s3://bucket/wmt", airflow_home=str(tmp_path / "home")) == \
        f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"  # SQLite cannot live in S3
    assert resolve_tracking_uri(TrackingConfig(), str(tmp_path)).startswith("sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert resolve_tracking_uri(TrackingConfig(), str(tmp_path)) == "http://mlflow.team:5000"
    assert resolve_tracking_uri(TrackingConfig(uri="http://other:5000"), str(tmp_path)) == "http://other:5000"
    assert registered_model_name("en", "de") == "wmt-seq2seq-en-de"
    with pytest.raises(ValueError, match="unknown tracking field"):
        TrackingConfig.from_dict({"enabld": False})


def test_params_are_flattened_and_learning_curves_keyed_by_update():
    assert flatten({"subset_size": 10000, "hyperparameters": {"rnn_num_hidden": 512, "learning_rate": 0.0003},
                    "gate": {"metric": "test:bleu", "threshold": None}, "corpus_layout": {}, "x": [1, 2]}) == {
        "subset_size": "10000", "hyperparameters.rnn_num_hidden": "512", "hyperparameters.learning_rate": "0.0003",
        "gate.metric": "test:bleu", "gate.threshold": "null", "corpus_layout": "{}", "x": "[1, 2]"}
    history = [{"checkpoint": 1, "updates": 200, "learning_rate": 0.003,
                "metrics": {"validation:perplexity": 900.5, "train:loss": 6.1, "validation:bleu": float("nan")}},
               {"checkpoint": 2, "updates": 400, "metrics": {"validation:perplexity": 700.0}}]
    assert history_metrics(history) == [("validation:perplexity", 900.5, 200), ("train:loss", 6.1, 200),
                                        ("train:learning_rate", 0.003, 200), ("validation:perplexity", 700.0, 400)]


def test_a_run_and_the_champion_in_the_embedded_store(tmp_path):
    tracker = Tracker(TrackingConfig(), str(tmp_path / "root"))
    run_id = tracker.start("manual__1", {"subset_size": 100, "hyperparameters": {"rnn_num_hidden": 32}},
                           {"dag_id": "wmt_seq2seq", "backend": "local", "parent_model": None})
    tracker.metrics(run_id, [("validation:perplexity", 90.0, 20), ("validation:perplexity", 80.0, 40)])
    (tmp_path / "run.json").write_text("{}")
    tracker.artifacts(run_id, tmp_path / "run.json")
    for name in ("a.tar.gz", "b.tar.gz"):
        (tmp_path / name).write_bytes(name.encode())
    first = tracker.register_champion(run_id, "wmt-seq2seq-en-de", str(tmp_path / "a.tar.gz"), {"test:bleu": 1.5})
    second = tracker.register_champion(run_id, "wmt-seq2seq-en-de", str(tmp_path / "b.tar.gz"), {})
    tracker.end(run_id)
    client = tracker.client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["backend"] == "local" and "parent_model" not in run.data.tags
    assert run.data.params == {"subset_size": "100", "hyperparameters.rnn_num_hidden": "32"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "validation:perplexity")] == [(20, 90.0),
                                                                                                      (40, 80.0)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["model", "run.json"]
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "root" / "mlflow")
    assert (first, second) == ("1", "2")
    champion = client.get_model_version_by_alias("wmt-seq2seq-en-de", CHAMPION_ALIAS)
    assert str(champion.version) == "2" and champion.run_id == run_id and champion.source == f"runs:/{run_id}/model"
    assert champion.tags == {"model_uri": str(tmp_path / "b.tar.gz")}
    assert client.get_model_version("wmt-seq2seq-en-de", "1").tags == {"test:bleu": "1.5",
                                                                       "model_uri": str(tmp_path / "a.tar.gz")}


def test_a_tracking_failure_is_logged_never_raised(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = Tracker(TrackingConfig(uri="http://127.0.0.1:9"), str(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert tracker.start("manual__1", {"a": 1}, {}) is None
        tracker.metrics("some-run", [("x", 1.0, 1)])
    assert "TRACKING FAILED (start the run at http://127.0.0.1:9)" in caplog.text
    assert "TRACKING SKIPPED (log metrics)" in caplog.text  # one failure, not one timeout per call
    off = Tracker(TrackingConfig(enabled=False), str(tmp_path))
    assert off.uri is None and off.start("manual__1", {"a": 1}, {}) is None


def test_a_rejected_promotion_is_recorded_with_the_approvers_reason(tmp_path):
    from pipeline_tasks.approval import outcome
    from pipeline_tasks.tracking import finish_run, start_run

    params = {"artifact_root": str(tmp_path / "root"), "tracking": None, "backend": "local", "source_lang": "en",
              "target_lang": "de", "subset_size": 10}
    tracking = start_run(params, "wmt_seq2seq", "manual__2", str(tmp_path / "run"), None)
    approval = outcome({"chosen_options": ["Reject"], "params_input": {"reason": "chrF fell on news"},
                        "responded_by_user": {"id": "7", "name": "anna"}, "responded_at": "2026-12-01T10:00:00Z"}, 72)
    (tmp_path / "run.json").write_text('{"promoted": false}')
    finish_run(tracking, params, {"promoted": False, "gate": "test:bleu 20 vs promoted 18", "approval": approval},
               str(tmp_path / "run.json"))
    run = Tracker(TrackingConfig(), params["artifact_root"]).client.get_run(tracking["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["promoted"] == "false"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("approval.")} == {
        "approval.required": "true", "approval.approved": "false", "approval.by": "anna",
        "approval.at": "2026-12-01T10:00:00Z", "approval.reason": "chrF fell on news", "approval.timed_out": "false"}
