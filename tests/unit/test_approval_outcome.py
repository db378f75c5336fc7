"""The approval step's pure part (pipeline_tasks/approval.py): what an approver is shown and what an answer
means, including the timeout that counts as a rejection; and the model package request a promotion makes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline_tasks.approval import NOT_REQUIRED, describe, outcome, request_text
from pipeline_tasks.jobs.requests import APPROVED, PENDING_MANUAL_APPROVAL, model_package_config
from pipeline_tasks.transform import TransformConfig

SCORES = {"metrics": {"test:bleu": 21.04, "test:chrf": 50.1, "test:perplexity": 7.31},
          "report": "s3://b/run/eval/report/index.html", "bleu_signature": "nrefs:1|case:mixed|13a|2.5"}
MODEL = {"model": "s3://b/run/model/job-t1/output/model.tar.gz", "job_name": "job-t1"}


def test_the_approver_sees_both_models_metrics_the_verdict_and_the_report():
    current = {"run_id": "manual__1", "model": "s3://b/old.tar.gz", "metrics": {"test:bleu": 19.5, "test:chrf": 49.0}}
    subject, body = request_text("manual__2", {"reason": "test:bleu 21.04 vs promoted 19.5"}, SCORES, current,
                                 MODEL, 72)
    assert subject == "Promote the model of run manual__2?"
    assert "The quality gate would promote this run's model: test:bleu 21.04 vs promoted 19.5." in body
    assert "| test metric | this run | promoted now (run manual__1) |" in body
    assert "| test:bleu | 21.04 | 19.5 |" in body and "| test:perplexity | 7.31 | – |" in body
    assert "test:accuracy" not in body  # neither model has it
    assert "- Report: s3://b/run/eval/report/index.html" in body and "- Training job: job-t1" in body
    assert "No answer within 72 h counts as a rejection." in body
    _, first = request_text("manual__2", {"reason": "no model promoted yet"}, SCORES, None, MODEL, 0.5)
    assert "promoted now (none yet)" in first and "| test:bleu | 21.04 | – |" in first and "within 0.5 h" in first


def test_an_answer_becomes_the_outcome_run_json_and_the_run_history_keep():
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    approved = outcome({"chosen_options": ["Approve"], "params_input": {"reason": " "},
                        "responded_by_user": {"id": "1", "name": "anna"}, "responded_at": at}, 72)
    assert approved == {"required": True, "approved": True, "by": "anna", "at": "2026-12-01T09:30:00+00:00",
                        "reason": None, "timed_out": False}
    assert describe(approved) == "approved by anna"
    rejected = outcome({"chosen_options": ["Reject"], "params_input": {"reason": "chrF fell on news"},
                        "responded_by_user": {"id": "2", "name": "ben"}, "responded_at": at}, 72)
    assert rejected["approved"] is False and describe(rejected) == "rejected by ben: chrF fell on news"
    # The scheduler's timeout sweep answers with the default (Reject) and no user.
    late = outcome({"chosen_options": ["Reject"], "params_input": {"reason": ""}, "responded_by_user": None,
                    "responded_at": at, "timedout": True}, 2.5)
    assert late["approved"] is False and late["timed_out"] is True and late["by"] is None
    assert describe(late) == "not approved: no answer within 2.5 h: a timeout counts as a rejection"
    assert describe(NOT_REQUIRED) == "approval not required (require_approval=false)"
    with pytest.raises(ValueError, match="one of 'Approve' or 'Reject'"):
        outcome({"chosen_options": ["Maybe"]}, 1)


def test_the_model_package_request_matches_the_create_model_package_api():
    request = model_package_config(
        group="wmt-seq2seq-en-de", image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/wmt-seq2seq:1",
        model_data_url=MODEL["model"], status=PENDING_MANUAL_APPROVAL, description="wmt_seq2seq run r: gate",
        metrics_uri="s3://b/run/eval/metrics.json", transform_instance_type="ml.m5.xlarge",
        metadata={"run_id": "r", "test:bleu": 21.04, "training_job": None}, cfg=TransformConfig(beam_size=1),
        client_token="5c0e3f7e-0b1a-5d2c-9e7f-1a2b3c4d5e6f", tags={"dag_id": "wmt_seq2seq"})
    assert request["ModelPackageGroupName"] == "wmt-seq2seq-en-de"
    assert request["ModelApprovalStatus"] == "PendingManualApproval"
    [container] = request["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == MODEL["model"] and container["Environment"]["SEQ2SEQ_BEAM_SIZE"] == "1"
    assert request["InferenceSpecification"]["SupportedContentTypes"] == ["application/jsonlines", "application/json"]
    assert request["InferenceSpecification"]["SupportedTransformInstanceTypes"] == ["ml.m5.xlarge"]
    assert request["ModelMetrics"] == {"ModelQuality": {"Statistics": {
        "ContentType": "application/json", "S3Uri": "s3://b/run/eval/metrics.json"}}}
    assert request["CustomerMetadataProperties"] == {"run_id": "r", "test:bleu": "21.04"}
    assert request["Tags"] == [{"Key": "dag_id", "Value": "wmt_seq2seq"}]
    assert request["ClientToken"] == "5c0e3f7e-0b1a-5d2c-9e7f-1a2b3c4d5e6f"
    with pytest.raises(ValueError, match="ModelDataUrl must be in S3"):
        model_package_config(group="g", image_uri="i", model_data_url="/tmp/model.tar.gz", status=APPROVED,
                             description="d")
    with pytest.raises(ValueError, match="ModelApprovalStatus must be"):
        model_package_config(group="g", image_uri="i", model_data_url="s3://b/m.tar.gz", status="Yes",
                             description="d")
