"""The amazon provider's SageMaker operators, with the behaviours our DAGs rely on.

- The job name is made per *try* (``pipeline_tasks.jobs.names.name_for_try``), at execute time and
  again when a deferred try resumes, so a retried task never collides with the job its previous try
  started, and downstream tasks read the name (and artifacts) from what the operator returns.
- A task that is killed (cleared or marked failed) or fails while its job runs stops the job, so no
  orphaned training or transform job keeps billing: in the worker through ``on_kill``, and while
  deferred through the trigger's ``on_kill`` (seq2seq_airflow/triggers.py), which Airflow 3.3 calls
  when a user acts on a deferred task.
- The deferred wait lasts as long as the job may: the provider's default (60 checks, an hour at our
  interval) would fail the task, and so stop the job, in the middle of a healthy training run.

Deferral needs the provider's async client (``apache-airflow-providers-amazon[aiobotocore]``, with a
botocore that aiobotocore accepts); without it the SageMaker trigger cannot run, so ``DEFERRABLE`` is
on only where aiobotocore is installed (``AIRFLOW_VAR_WMT_SEQ2SEQ_DEFERRABLE=false`` turns it off) and
the operators otherwise wait in their worker, where clearing the task does stop the job.

Used by seq2seq_airflow/branches.py, which adds them to dags/wmt_seq2seq*.py.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerTrainingOperator,
    SageMakerTransformOperator,
    SageMakerTuningOperator,
)

__all__ = ["DEFERRABLE", "Seq2SeqTrainingOperator", "Seq2SeqTransformOperator", "Seq2SeqTuningOperator"]

DEFERRABLE = (importlib.util.find_spec("aiobotocore") is not None
              and os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_DEFERRABLE", "true").strip().lower() != "false")

JOB_OVERHEAD_S = 3600              # outside MaxRuntimeInSeconds: instance start, data download, model upload
TRANSFORM_MAX_WAIT_S = 24 * 3600   # a transform job has no stopping condition; wait this long at most


def _checks(seconds: float, check_interval: int) -> int:
    """Status checks that span `seconds` of waiting."""
    return math.ceil(seconds / max(int(check_interval), 1))


def _reported_name(event: Any) -> str | None:
    return event.get("job_name") if isinstance(event, dict) else None


def _stop_job(log: logging.Logger, kind: str, name: str | None, describe: Callable[[str], dict],
              stop: Callable[[str], Any]) -> None:
    """Stop the job if it still runs. Never raises: it runs while another error is on its way up."""
    if not name:
        return
    try:
        status = describe(name)[f"{kind}JobStatus"]
    except Exception as e:  # never created (or not visible): nothing to stop
        log.info("SageMaker %s job %s: nothing to stop (%s)", kind.lower(), name, e)
        return
    if status != "InProgress":
        return
    log.warning("stopping SageMaker %s job %s", kind.lower(), name)
    try:
        stop(name)
    except Exception:
        log.exception("could not stop SageMaker %s job %s: stop it in the console or with the AWS CLI",
                      kind.lower(), name)


def _stopping(trigger: Any) -> Any:
    """The provider's SageMakerTrigger as our StoppingSageMakerTrigger (same arguments)."""
    from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

    from seq2seq_airflow.triggers import StoppingSageMakerTrigger

    if isinstance(trigger, SageMakerTrigger) and not isinstance(trigger, StoppingSageMakerTrigger):
        return StoppingSageMakerTrigger.from_trigger(trigger)
    return trigger


class _PerTryStoppingJob:
    """What both operators add to the provider's: the job named per try (also when a deferred try
    resumes), the job stopped when the task fails or is killed, and our trigger when deferring.
    Subclasses say how to stop (``_stop``) their kind of job."""

    def _wait_s(self) -> float:
        raise NotImplementedError

    def _name_job(self, context: Any, reported: str | None = None) -> None:
        """Name the request for this try (and remove our prefix key, which AWS would refuse)."""
        from pipeline_tasks.jobs.names import name_for_try

        name_for_try(self.config, context["run_id"], context["ti"].try_number, reported)  # type: ignore[attr-defined]

    def _stop(self) -> None:
        raise NotImplementedError

    def _wait_for(self, checks: int) -> None:
        """Wait for at least `checks` status checks (the provider's operators count them differently)."""
        self.max_attempts = max(self.max_attempts, checks)

    def execute(self, context: Any) -> dict:
        self._name_job(context)
        self._wait_for(_checks(self._wait_s(), self.check_interval))
        try:
            return super().execute(context)  # type: ignore[misc]
        except Exception:
            self._stop()
            raise

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, dict]:
        self._name_job(context, _reported_name(event))  # a resumed try renders the request afresh
        try:
            return super().execute_complete(context, event)  # type: ignore[misc]
        except Exception:
            self._stop()
            raise

    def on_kill(self) -> None:
        self._stop()
        super().on_kill()  # type: ignore[misc]

    def defer(self, *, trigger: Any, method_name: str, **kwargs: Any) -> None:
        super().defer(trigger=_stopping(trigger), method_name=method_name, **kwargs)  # type: ignore[misc]


class Seq2SeqTrainingOperator(_PerTryStoppingJob, SageMakerTrainingOperator):
    """SageMakerTrainingOperator naming its job per run and try, and stopping it when killed."""

    def _wait_s(self) -> float:
        stopping = self.config.get("StoppingCondition") or {}
        return int(stopping.get("MaxWaitTimeInSeconds") or stopping.get("MaxRuntimeInSeconds") or 0) + JOB_OVERHEAD_S

    def _stop(self) -> None:
        _stop_job(self.log, "Training", self.config.get("TrainingJobName"), self.hook.describe_training_job,
                  lambda name: self.hook.conn.stop_training_job(TrainingJobName=name))


class Seq2SeqTransformOperator(_PerTryStoppingJob, SageMakerTransformOperator):
    """SageMakerTransformOperator naming its model and job per run and try, and stopping the job when killed."""

    def _wait_s(self) -> float:
        return TRANSFORM_MAX_WAIT_S

    def _stop(self) -> None:
        _stop_job(self.log, "Transform", self.config.get("Transform", {}).get("TransformJobName"),
                  self.hook.describe_transform_job,
                  lambda name: self.hook.conn.stop_transform_job(TransformJobName=name))


class Seq2SeqTuningOperator(_PerTryStoppingJob, SageMakerTuningOperator):
    """SageMakerTuningOperator naming its tuning job per run and try, and stopping it (and so its training
    jobs) when killed. It waits as long as the tuning job may run: its own limit, else every trial's in
    turns of MaxParallelTrainingJobs."""

    def _wait_s(self) -> float:
        limits = self.config["HyperParameterTuningJobConfig"]["ResourceLimits"]
        if limits.get("MaxRuntimeInSeconds"):
            return int(limits["MaxRuntimeInSeconds"]) + JOB_OVERHEAD_S
        stopping = self.config["TrainingJobDefinition"].get("StoppingCondition") or {}
        per_trial = int(stopping.get("MaxWaitTimeInSeconds") or stopping.get("MaxRuntimeInSeconds") or 0)
        trials = int(limits.get("MaxNumberOfTrainingJobs") or 1)
        return math.ceil(trials / int(limits.get("MaxParallelTrainingJobs", 1))) * (per_trial + JOB_OVERHEAD_S)

    def _wait_for(self, checks: int) -> None:
        # The provider's tuning operator has no max_attempts: in the worker it waits max_ingestion_time, and
        # its trigger the trigger's default attempts, which defer() raises to ours.
        self._checks = checks
        if self.max_ingestion_time is not None:
            self.max_ingestion_time = max(self.max_ingestion_time, checks * int(self.check_interval))

    def defer(self, *, trigger: Any, method_name: str, **kwargs: Any) -> None:
        if hasattr(trigger, "attempts"):
            trigger.attempts = max(trigger.attempts, getattr(self, "_checks", 0))
        if kwargs.get("timeout") is not None:
            kwargs["timeout"] = max(kwargs["timeout"], timedelta(seconds=self._wait_s()))
        super().defer(trigger=trigger, method_name=method_name, **kwargs)

    def _stop(self) -> None:
        _stop_job(self.log, "HyperParameterTuning", self.config.get("HyperParameterTuningJobName"),
                  self.hook.describe_tuning_job,
                  lambda name: self.hook.conn.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name))
