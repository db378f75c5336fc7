"""The provider's SageMakerTrigger, plus stopping the job when a user kills the deferred task.

Airflow 3.3 calls a trigger's ``on_kill`` when a deferred task is cleared, marked failed or marked
success; the provider's trigger does not implement it, so without this a cleared run would leave its
training or transform job running (and billing). ``on_kill`` is not called on triggerer restarts or
redistribution, so a healthy job survives a rolling deploy.
"""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

log = logging.getLogger(__name__)


class StoppingSageMakerTrigger(SageMakerTrigger):
    """SageMakerTrigger whose ``on_kill`` stops the training, transform or tuning job it waits for."""

    @classmethod
    def from_trigger(cls, trigger: SageMakerTrigger) -> StoppingSageMakerTrigger:
        _, kwargs = trigger.serialize()
        return cls(**kwargs)

    async def on_kill(self) -> None:
        kind = self.job_type.lower()
        if kind not in ("training", "transform", "tuning"):
            return
        hook = self.hook()
        async with await hook.get_async_conn() as client:
            if kind == "training":
                status = (await client.describe_training_job(TrainingJobName=self.job_name))["TrainingJobStatus"]
                if status == "InProgress":
                    log.warning("task killed while deferred: stopping SageMaker training job %s", self.job_name)
                    await client.stop_training_job(TrainingJobName=self.job_name)
            elif kind == "tuning":
                described = await client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job_name)
                if described["HyperParameterTuningJobStatus"] == "InProgress":
                    log.warning("task killed while deferred: stopping SageMaker tuning job %s", self.job_name)
                    await client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job_name)
            else:
                status = (await client.describe_transform_job(TransformJobName=self.job_name))["TransformJobStatus"]
                if status == "InProgress":
                    log.warning("task killed while deferred: stopping SageMaker transform job %s", self.job_name)
                    await client.stop_transform_job(TransformJobName=self.job_name)
