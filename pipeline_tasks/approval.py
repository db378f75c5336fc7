"""The human approval between the gate and promotion: what the approver is shown, and what the answer means.

Pure functions, so the wording and the outcome are tested without Airflow; the waiting is the standard
provider's ApprovalOperator (seq2seq_airflow/approval.py). An approver sees the gate's verdict, the new and
the promoted model's test metrics side by side and where the report is, and answers Approve or Reject
with an optional reason. No answer before the deadline counts as a rejection: a model nobody looked at
does not reach production.

The outcome is one small dict, the same in the approval task's XCom, ``run.json`` (``approval``) and the
tracking run's ``approval.*`` tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

APPROVE = "Approve"   # the ApprovalOperator's two options
REJECT = "Reject"
REASON_FIELD = "reason"
OUTCOME_KEY = "approval"                 # the approval task's XCom key for the outcome, whatever the answer
PACKAGE_ARN_KEY = "model_package_arn"   # the SageMaker model package registered while the approval waits
# The test metrics an approver compares, in this order (those a run has).
SHOWN_METRICS = ("test:bleu", "test:chrf", "test:chrfpp", "test:ter", "test:tokenized_bleu", "test:perplexity",
                 "test:accuracy")

NOT_REQUIRED: dict[str, Any] = {"required": False, "approved": True, "by": None, "at": None, "reason": None,
                                "timed_out": False}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def request_text(run_id: str, decision: Mapping[str, Any], scores: Mapping[str, Any],
                 current: Mapping[str, Any] | None, model: Mapping[str, Any], timeout_hours: float) -> tuple[str, str]:
    """The subject and the Markdown body of the approval request (the Airflow UI's Required Actions)."""
    new = scores.get("metrics") or {}
    was = (current or {}).get("metrics") or {}
    # and, with several test sets, each other set's BLEU and the mean (the gate may decide on either)
    other_sets = sorted({k for k in (*new, *was) if k.endswith(":bleu") and not k.startswith("test:")})
    rows = [f"| {name} | {_fmt(new.get(name))} | {_fmt(was.get(name))} |"
            for name in (*SHOWN_METRICS, *other_sets) if name in new or name in was]
    now = f"promoted now (run {current.get('run_id')})" if current else "promoted now (none yet)"
    body = "\n".join([
        f"The quality gate would promote this run's model: {decision.get('reason')}.",
        "",
        f"| test metric | this run | {now} |",
        "| --- | --: | --: |",
        *rows,
        "",
        f"- Report: {scores.get('report')}",
        f"- Model: {model.get('model')}",
        f"- Training job: {model.get('job_name')}",
        f"- BLEU signature: {scores.get('bleu_signature')}",
        "",
        f"Approve to promote it; Reject (with a reason) to keep the promoted model. No answer within "
        f"{timeout_hours:g} h counts as a rejection.",
    ])
    return f"Promote the model of run {run_id}?", body


def outcome(answer: Mapping[str, Any], timeout_hours: float) -> dict[str, Any]:
    """The approval's outcome from the operator's answer (``chosen_options``, ``params_input``,
    ``responded_by_user``, ``responded_at``, ``timedout``)."""
    chosen = list(answer.get("chosen_options") or [])
    if len(chosen) != 1 or chosen[0] not in (APPROVE, REJECT):
        raise ValueError(f"an approval answer is one of {APPROVE!r} or {REJECT!r}, got {chosen!r}")
    user = answer.get("responded_by_user") or {}
    timed_out = bool(answer.get("timedout")) or not user
    at = answer.get("responded_at")
    reason = str((answer.get("params_input") or {}).get(REASON_FIELD) or "").strip()
    if timed_out:
        reason = f"no answer within {timeout_hours:g} h: a timeout counts as a rejection"
    return {"required": True, "approved": chosen[0] == APPROVE and not timed_out, "by": user.get("name"),
            "at": at.isoformat() if isinstance(at, datetime) else at, "reason": reason or None,
            "timed_out": timed_out}


def describe(result: Mapping[str, Any]) -> str:
    """One line for the task log and the run's printed outcome."""
    if not result.get("required"):
        return "approval not required (require_approval=false)"
    if result.get("timed_out"):
        return f"not approved: {result['reason']}"
    verdict = "approved" if result["approved"] else "rejected"
    return f"{verdict} by {result['by']}" + (f": {result['reason']}" if result.get("reason") else "")
