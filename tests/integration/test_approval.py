"""The approval step (seq2seq_airflow/approval.py) in Airflow itself: a DAG of the operator between stand-ins
for the gate, evaluate and training tasks, run with ``dag.test()``. The task waits in ``awaiting_input``
until answered as a person would (tests/dag_runner.py): Approve or Reject through the REST API's
hitlDetails endpoint, logged in as a user, or no answer, resolved by the scheduler's own timeout sweep.
The whole DAG with approval on runs in tests/integration/test_dag.py and test_dag_sagemaker.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROBE_DAG = '''
import json
from airflow.sdk import Param, dag, task, teardown
from seq2seq_airflow.approval import PromotionApprovalOperator

@dag(dag_id="approval_probe", schedule=None, params={"require_approval": Param(True, type="boolean"),
                                                     "approval_timeout_hours": Param(24, type="number")})
def approval_probe():
    @task
    def gate():
        return {"promote": True, "reason": "test:bleu 20.5 vs promoted 18.25 (needed at least 18.25)",
                "model_package": None, "current": {"run_id": "manual__0", "model": "/m0.tar.gz",
                                                   "metrics": {"test:bleu": 18.25}}}

    @task
    def evaluate():
        return {"metrics": {"test:bleu": 20.5, "test:perplexity": 9.5}, "report": "/run/eval/report/index.html",
                "bleu_signature": "nrefs:1|case:mixed|13a"}

    @task
    def trained():
        return {"model": "/run/model.tar.gz", "job_name": "job-t1"}

    @task
    def promote(approval):
        print("PROMOTED WITH " + json.dumps(approval))

    @teardown
    def outcome(ti=None):
        print("OUTCOME " + json.dumps(ti.xcom_pull(task_ids="approval", key="approval")))

    approval = PromotionApprovalOperator(task_id="approval", decision=gate(), scores=evaluate(), model=trained())
    promote(approval.output) >> outcome()

approval_probe()
'''


@pytest.fixture(scope="module")
def probe_env(airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    dags = tmp_path_factory.mktemp("approval-dags")
    (dags / "approval_probe.py").write_text(PROBE_DAG)
    return {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}


def run_answered(env: dict[str, str], conf: dict, answer: dict, work: Path) -> tuple[dict, dict | None, str]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "conf.json").write_text(json.dumps(conf))
    (work / "answer.json").write_text(json.dumps(answer))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "dag_runner.py"), "approval_probe",
                           str(work / "conf.json"), str(work / "result.json"), str(work / "answer.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    [line] = [x for x in log.splitlines() if x.startswith("OUTCOME ")]
    return json.loads((work / "result.json").read_text()), json.loads(line.removeprefix("OUTCOME ")), log


def test_an_approved_promotion_goes_on_with_the_approvers_name(probe_env, tmp_path):
    result, outcome, log = run_answered(probe_env, {}, {"option": "Approve", "reason": "news BLEU up", "user": "anna"},
                                        tmp_path)
    assert result["state"] == "success" and result["tasks"]["promote"] == "success"
    assert "Waiting for Human-in-the-loop input for tasks: ['approval']" in log  # it waited for the answer
    assert outcome["approved"] is True and outcome["by"] == "anna" and outcome["reason"] == "news BLEU up"
    assert outcome["timed_out"] is False and outcome["at"]
    assert "| test:bleu | 20.5 | 18.25 |" in log and "- Report: /run/eval/report/index.html" in log
    assert "PROMOTED WITH " in log and "approved by anna: news BLEU up" in log


def test_a_rejected_promotion_skips_promote_and_keeps_the_reason(probe_env, tmp_path):
    result, outcome, log = run_answered(probe_env, {}, {"option": "Reject", "reason": "chrF fell on news",
                                                        "user": "ben"}, tmp_path)
    assert result["state"] == "success" and result["tasks"]["promote"] == "skipped"
    assert outcome == {"required": True, "approved": False, "by": "ben", "at": outcome["at"],
                       "reason": "chrF fell on news", "timed_out": False, "model_package_arn": None}
    assert "PROMOTED WITH" not in log


def test_no_answer_before_the_deadline_counts_as_a_rejection(probe_env, tmp_path):
    result, outcome, log = run_answered(probe_env, {"approval_timeout_hours": 0.001}, {"option": "timeout"}, tmp_path)
    assert "AWAITING_INPUT timeout sweep: 1 resolved" in log
    assert result["state"] == "success" and result["tasks"]["promote"] == "skipped"
    assert outcome["approved"] is False and outcome["timed_out"] is True and outcome["by"] is None
    assert outcome["reason"] == "no answer within 0.001 h: a timeout counts as a rejection"


def test_with_approval_off_the_task_approves_without_asking(probe_env, tmp_path):
    result, outcome, log = run_answered(probe_env, {"require_approval": False}, {"option": "timeout"}, tmp_path)
    assert result["state"] == "success" and result["tasks"]["promote"] == "success"
    assert outcome == {"required": False, "approved": True, "by": None, "at": None, "reason": None,
                       "timed_out": False}
    assert "Waiting for Human-in-the-loop" not in log
