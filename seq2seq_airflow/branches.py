"""The backend branches of the DAGs: from a job request, a branch task picks by the ``backend`` param
either the task that runs the job on this machine (``local``, ``docker``) or the SageMaker operator, and
whichever ran returns the job's description (DescribeTrainingJob/DescribeTransformJob's shape) as its XCom.

The tasks join the DAG being defined as plain tasks, not a TaskGroup: a group id would prefix their task
ids and so cut them off from the runs already recorded. The work is pipeline_tasks.pipeline's.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TriggerRule, task

from seq2seq_airflow.operators import (
    DEFERRABLE,
    Seq2SeqTrainingOperator,
    Seq2SeqTransformOperator,
    Seq2SeqTuningOperator,
)
from seq2seq_airflow.settings import CHECK_INTERVAL_S


def training_task_id(backend: str, tuning: bool = False) -> str:
    """The task of the training branch that runs the job (a tuning job, with `tuning`) on `backend`."""
    return ("tune_" if tuning else "train_") + ("sagemaker" if backend == "sagemaker" else "local")


def transform_task_id(backend: str) -> str:
    """The task of the transform branch that runs the job on `backend`."""
    return "transform_sagemaker" if backend == "sagemaker" else "transform_local"


@task.branch
def training_backend(params=None) -> str:
    return training_task_id(params["backend"], bool(params.get("tuning")))


@task
def train_local(request: dict, params=None, run_id=None, ti=None) -> dict:
    """Runs the request on this machine (local process or docker); the training log streams here."""
    from pipeline_tasks.pipeline import train_step

    return train_step(request, params["backend"], run_id, ti.try_number)


@task
def tune_local(request: dict, params=None, run_id=None, dag_run=None, ti=None) -> dict:
    """Runs the tuning request here: each trial a local (or docker) training job, the trials' results kept
    in the DAG's tuning store, where a later tuning job's warm start finds them."""
    from pipeline_tasks.pipeline import tune_step
    from pipeline_tasks.runs import RunLayout

    store = RunLayout(params["artifact_root"], dag_run.dag_id, run_id).tuning_store
    return tune_step(request, params["backend"], run_id, ti.try_number, store)


def _best_training_job(tuning: dict) -> dict:
    """DescribeTrainingJob of a SageMaker tuning job's best training job (where its model is)."""
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    best = tuning.get("BestTrainingJob")
    if not best:
        raise RuntimeError(f"tuning job {tuning['HyperParameterTuningJobName']} ended "
                           f"{tuning.get('HyperParameterTuningJobStatus')} without a best training job")
    return SageMakerHook(aws_conn_id="aws_default").describe_training_job(best["TrainingJobName"])


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def trained(params=None, ti=None) -> dict:
    """What the backend's job reported: the model artifact and final metrics, never a guessed name (for a
    tuning job, its best training job's, with the tuning job's summary)."""
    from pipeline_tasks.pipeline import tuning_summary

    tuning = bool(params.get("tuning"))
    reported = ti.xcom_pull(task_ids=training_task_id(params["backend"], tuning))
    job = reported.get("Training") or _best_training_job(reported["Tuning"])
    if not job.get("ModelArtifacts", {}).get("S3ModelArtifacts"):
        raise RuntimeError(f"training job {job['TrainingJobName']} ended {job['TrainingJobStatus']} "
                           f"without a model")
    return {"job_name": job["TrainingJobName"], "status": job["TrainingJobStatus"],
            "model": job["ModelArtifacts"]["S3ModelArtifacts"],
            "final_metrics": {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList") or []},
            "tuning": tuning_summary(reported["Tuning"]) if tuning else None}


def training_branch(request: Any, tuning: Any) -> Any:
    """request → training_backend → train_local | train_sagemaker | tune_local | tune_sagemaker → trained
    (the tuning ones on the `tuning` request, when the run's ``tuning`` param asks for one); returns
    trained's XCom ({"job_name", "status", "model", "final_metrics", "tuning"})."""
    train_sagemaker = Seq2SeqTrainingOperator(
        task_id="train_sagemaker", config=request,
        wait_for_completion=True, deferrable=DEFERRABLE, check_interval=CHECK_INTERVAL_S, print_log=False,
        action_if_job_exists="fail")
    tune_sagemaker = Seq2SeqTuningOperator(
        task_id="tune_sagemaker", config=tuning, wait_for_completion=True, deferrable=DEFERRABLE,
        check_interval=CHECK_INTERVAL_S)
    choice = training_backend()
    runs = [train_local(request), train_sagemaker, tune_local(tuning), tune_sagemaker]
    [request, tuning] >> choice >> runs
    model = trained()
    runs >> model
    return model


@task.branch
def transform_backend(params=None) -> str:
    return transform_task_id(params["backend"])


@task
def transform_local(request: dict, params=None, run_id=None, ti=None) -> dict:
    """The transform job on this machine: container/serve as a process, or the image (backend docker)."""
    from pipeline_tasks.pipeline import transform_step

    return transform_step(request, run_id, ti.try_number, params["backend"])


def transform_branch(request: Any, branch_task_id: str = "transform_backend") -> list[Any]:
    """request → `branch_task_id` → transform_local | transform_sagemaker; returns those two tasks, for
    the task that reads the job (``ti.xcom_pull(task_ids=transform_task_id(backend))["Transform"]``)."""
    transform_sagemaker = Seq2SeqTransformOperator(
        task_id="transform_sagemaker", config=request,
        wait_for_completion=True, deferrable=DEFERRABLE, check_interval=CHECK_INTERVAL_S, action_if_job_exists="fail",
        check_if_model_exists=True, action_if_model_exists="fail")
    choice = transform_backend.override(task_id=branch_task_id)()
    local = transform_local(request)
    request >> choice >> [local, transform_sagemaker]
    return [local, transform_sagemaker]
