"""The approval step between the gate and promotion: the standard provider's ApprovalOperator, asked only
when the run's ``require_approval`` param is on.

- Off (the default): the task approves at once, without asking, so scheduled runs promote as before.
- On: the approver sees, in the Airflow UI's Required Actions (or through the REST API's hitlDetails),
  the gate's verdict, the new and the promoted model's test metrics and the report's location, and
  answers Approve or Reject with a reason. The task waits in Airflow 3.3's ``awaiting_input`` state,
  which holds no worker slot, for at most ``approval_timeout_hours``; then the scheduler answers with the
  default, Reject, so a timeout counts as a rejection.
- Reject skips ``promote`` (the ApprovalOperator skips its direct downstream tasks); ``publish`` records
  the outcome (pipeline_tasks/approval.py's dict) in run.json and the tracking run.
- With a SageMaker model package requested (the gate's ``model_package``), the package is registered
  ``PendingManualApproval`` when the question is asked, and set ``Rejected`` with the reason here, or
  ``Approved`` by promote.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from pipeline_tasks.approval import (
    APPROVE,
    NOT_REQUIRED,
    OUTCOME_KEY,
    PACKAGE_ARN_KEY,
    REASON_FIELD,
    REJECT,
    describe,
    outcome,
    request_text,
)

__all__ = ["PromotionApprovalOperator"]


class PromotionApprovalOperator(ApprovalOperator):
    """Approve or reject the gate's promotion. ``decision`` (the gate's XCom), ``scores`` (evaluate's) and
    ``model`` (the training job's) are rendered at run time; the params ``require_approval`` and
    ``approval_timeout_hours`` decide whether and how long to ask."""

    template_fields: Collection[str] = (*ApprovalOperator.template_fields, "decision", "scores", "model")

    def __init__(self, *, decision: Any, scores: Any, model: Any, **kwargs: Any) -> None:
        params = kwargs.pop("params", None)  # the DAG's, passed on by Airflow: the operator keeps only its own
        params = params if isinstance(params, ParamsDict) else ParamsDict(params or {})
        params[REASON_FIELD] = Param("", type="string", title="Reason", source="task",
                                     description="Why (kept in run.json and the run history).")
        super().__init__(subject="Promote this run's model?", defaults=REJECT, params=params, **kwargs)
        self.decision, self.scores, self.model = decision, scores, model

    def execute(self, context: Any) -> Any:
        params = context["params"]
        if not params["require_approval"]:
            self.log.info(describe(NOT_REQUIRED))
            context["ti"].xcom_push(OUTCOME_KEY, NOT_REQUIRED)
            return dict(NOT_REQUIRED)
        hours = float(params["approval_timeout_hours"])
        self.response_timeout = timedelta(hours=hours)
        self.subject, self.body = request_text(context["run_id"], self.decision, self.scores,
                                               self.decision.get("current"), self.model, hours)
        package = self.decision.get("model_package")
        if package:
            from seq2seq_airflow.model_registry import register_model_package

            context["ti"].xcom_push(PACKAGE_ARN_KEY, register_model_package(package))
        self.log.info("asking for approval (answer within %g h, or it counts as a rejection):\n%s", hours, self.body)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """The outcome is recorded before the base class acts on the answer: on Reject it skips promote by
        raising (Airflow 3's skip), so nothing after it would run."""
        result = None
        if "error" not in event:  # an error event: the base class raises it
            result = outcome(event, float(context["params"]["approval_timeout_hours"]))
            arn = context["ti"].xcom_pull(task_ids=self.task_id, key=PACKAGE_ARN_KEY)
            result[PACKAGE_ARN_KEY] = arn
            context["ti"].xcom_push(OUTCOME_KEY, result)
            self.log.info("%s: %s", APPROVE if result["approved"] else REJECT, describe(result))
            if arn and not result["approved"]:
                from pipeline_tasks.jobs.requests import REJECTED
                from seq2seq_airflow.model_registry import set_model_package_status

                set_model_package_status(arn, REJECTED, describe(result))
        super().execute_complete(context, event)
        return result
