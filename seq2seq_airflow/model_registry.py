"""The SageMaker Model Registry: a promoted model as a model package version in its language pair's group.

I/O through the amazon provider's SageMakerHook (its connection, region and retries), on the request
pipeline_tasks.jobs.requests.model_package_config builds. The Approved/PendingManualApproval/Rejected
status is what AWS-side deployment pipelines react to (an EventBridge rule on "SageMaker Model Package
State Change", or a pipeline that deploys the group's latest Approved version). The promoted-model pointer
stays the source of truth for this pipeline; the package mirrors each promotion for AWS.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

AWS_CONN_ID = "aws_default"   # the SageMaker operators' connection


def _hook() -> Any:
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=AWS_CONN_ID)


def register_model_package(request: Mapping[str, Any]) -> str:
    """Creates the group when it does not exist yet, then the package; returns the package's ARN."""
    hook = _hook()
    group = request["ModelPackageGroupName"]
    hook.create_model_package_group(group, f"wmt_seq2seq models of one language pair ({group})")
    arn = hook.conn.create_model_package(**request)["ModelPackageArn"]
    log.info("model registry: %s is %s in group %s", arn, request["ModelApprovalStatus"], group)
    return arn


def set_model_package_status(arn: str, status: str, description: str) -> None:
    """Approve or reject a package that waited for approval, saying why (ApprovalDescription)."""
    _hook().conn.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status,
                                      ApprovalDescription=description[:1024])
    log.info("model registry: %s is now %s (%s)", arn, status, description)


def promote_model_package(request: Mapping[str, Any], approval: Mapping[str, Any] | None) -> str:
    """promote's part: the package the approval step registered becomes Approved, or (no approval asked)
    a new package is registered Approved. Returns its ARN."""
    from pipeline_tasks.approval import PACKAGE_ARN_KEY, describe
    from pipeline_tasks.jobs.requests import APPROVED

    arn = (approval or {}).get(PACKAGE_ARN_KEY)
    if arn:
        set_model_package_status(arn, APPROVED, describe(approval))
        return arn
    return register_model_package({**request, "ModelApprovalStatus": APPROVED})
