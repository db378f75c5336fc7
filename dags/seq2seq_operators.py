"""The amazon provider's SageMaker operators, with the two behaviours our DAGs rely on.

- The job name is made per *try* at execute time (``pipeline_tasks.training_job.job_name``), so a
  retried task never collides with the job its previous try started, and downstream tasks read the
  name (and artifacts) from what the operator returns.
- A task that is killed (cleared or marked failed while running) or fails while its job runs stops
  the job, so no orphaned training or transform job keeps billing.

Not a DAG file (listed in .airflowignore); imported by dags/wmt_seq2seq*.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator, SageMakerTransformOperator

JOB_PREFIX_KEY = "JobNamePrefix"   # our key in the request: removed before the AWS call


def _name(prefix: str, context: Any) -> str:
    from pipeline_tasks.training_job import job_name

    return job_name(prefix, context["run_id"], context["ti"].try_number)


class Seq2SeqTrainingOperator(SageMakerTrainingOperator):
    """SageMakerTrainingOperator naming its job per run and try, and stopping it when killed."""

    def execute(self, context: Any) -> dict:
        prefix = self.config.pop(JOB_PREFIX_KEY, None) or self.config["TrainingJobName"]
        self.config["TrainingJobName"] = _name(prefix, context)
        try:
            return super().execute(context)
        except Exception:
            self._stop()
            raise

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, dict]:
        try:
            return super().execute_complete(context, event)
        except Exception:
            self._stop()
            raise

    def on_kill(self) -> None:
        self._stop()
        super().on_kill()

    def _stop(self) -> None:
        name = self.config.get("TrainingJobName")
        if not name:
            return
        with contextlib.suppress(Exception):  # already finished or never created: nothing to stop
            if self.hook.describe_training_job(name)["TrainingJobStatus"] in ("InProgress", "Stopping"):
                self.log.warning("stopping SageMaker training job %s", name)
                self.hook.conn.stop_training_job(TrainingJobName=name)


class Seq2SeqTransformOperator(SageMakerTransformOperator):
    """SageMakerTransformOperator naming its model and job per run and try, and stopping the job when killed."""

    def execute(self, context: Any) -> dict:
        prefix = self.config.pop(JOB_PREFIX_KEY, None) or self.config["Transform"]["TransformJobName"]
        name = _name(prefix, context)
        self.config["Transform"]["TransformJobName"] = name
        self.config["Model"]["ModelName"] = name
        self.config["Transform"]["ModelName"] = name
        try:
            return super().execute(context)
        except Exception:
            self._stop()
            raise

    def on_kill(self) -> None:
        self._stop()
        super().on_kill()

    def _stop(self) -> None:
        name = self.config.get("Transform", {}).get("TransformJobName")
        if not name:
            return
        with contextlib.suppress(Exception):
            if self.hook.describe_transform_job(name)["TransformJobStatus"] in ("InProgress", "Stopping"):
                self.log.warning("stopping SageMaker transform job %s", name)
                self.hook.conn.stop_transform_job(TransformJobName=name)
