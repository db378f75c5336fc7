"""wmt_seq2seq_batch_transform: translate a JSON Lines input with the promoted model, whenever a new
model is promoted (the ``wmt_seq2seq_model`` Asset that wmt_seq2seq's ``promote`` task emits), or on a
manual trigger.

promoted model (pointer) → transform request → local/docker emulation or SageMaker transform job → publish

The input is the ``transform_input`` param, else ``AIRFLOW_VAR_WMT_SEQ2SEQ_TRANSFORM_INPUT``, else the
promoting run's own test input. Wiring only; the work is pipeline_tasks.transform's.
"""

from __future__ import annotations

from airflow.sdk import Param, TriggerRule, dag, task

from pipeline_tasks.jobs.names import JOB_PREFIX_KEY
from seq2seq_airflow.assets import MODEL
from seq2seq_airflow.branches import transform_branch, transform_task_id
from seq2seq_airflow.settings import (
    DEFAULT_ARGS,
    DEFAULT_TRANSFORM_INPUT,
    START_DATE,
    TRAINING_DAG_ID,
    artifact_root_param,
    backend_param,
    beam_size_param,
    image_param,
    max_output_length_param,
    role_arn,
    role_arn_param,
)

DAG_ID = "wmt_seq2seq_batch_transform"

PARAMS = {
    "artifact_root": artifact_root_param("Where wmt_seq2seq keeps its runs and the promoted-model pointer."),
    "transform_input": Param(DEFAULT_TRANSFORM_INPUT, type=["string", "null"], title="Input",
                             description="JSON Lines {\"source\": …} prefix or object (path or s3://); null: the "
                                         "promoting run's test input."),
    "backend": backend_param("Backend", "local: container/serve as a process here; docker: the built image; "
                                        "sagemaker: a SageMaker batch transform job (artifact root must be s3://)."),
    "image": image_param(),
    "role_arn": role_arn_param(),
    "instance_type": Param("ml.m5.xlarge", type="string", pattern="^ml\\.", title="Transform instance type",
                           description="SageMaker instance type of the transform job (sagemaker backend)."),
    "instance_count": Param(1, type="integer", minimum=1, title="Transform instances",
                            description="SageMaker transform instances; the input objects are split among them."),
    "beam_size": beam_size_param("Beam size", "Beam width of the decoder; 1 is greedy (fastest)."),
    "max_output_length": max_output_length_param(),
    "batch_size": Param(32, type="integer", minimum=1, title="Sentences per decoder batch",
                        description="Sentences decoded together (sorted by length within a request)."),
    "on_error": Param("fail", enum=["fail", "record"], title="Bad lines",
                      description="fail: the job fails naming the line; record: the line gets {\"error\": …}."),
    "max_payload_mb": Param(6, type="integer", minimum=1, maximum=100, title="MaxPayloadInMB",
                            description="Largest mini-batch the job sends to the container, in MB (SageMaker's "
                                        "MaxPayloadInMB)."),
}


@dag(
    dag_id=DAG_ID,
    schedule=[MODEL],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["seq2seq", "sagemaker", "wmt", "batch-transform"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def wmt_seq2seq_batch_transform():
    @task
    def transform_request(params=None, run_id=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline_tasks.gate import read_pointer
        from pipeline_tasks.jobs.names import job_name
        from pipeline_tasks.jobs.requests import transform_job_config
        from pipeline_tasks.plan import PlanError, check_conf
        from pipeline_tasks.runs import RunLayout
        from pipeline_tasks.transform import TransformConfig

        try:
            check_conf(dag_run.conf if dag_run else None, PARAMS)
        except PlanError as e:
            raise AirflowFailException(str(e)) from None
        root = params["artifact_root"]
        pointer = read_pointer(RunLayout(root, TRAINING_DAG_ID, "x").pointer)
        if pointer is None:
            raise RuntimeError(f"no promoted model under {root}/{TRAINING_DAG_ID}: run wmt_seq2seq first")
        if params["backend"] == "sagemaker" and not root.startswith("s3://"):
            raise ValueError("backend=sagemaker needs an s3:// artifact_root")
        source = params["transform_input"] or RunLayout(root, TRAINING_DAG_ID, pointer["run_id"]).uri(
            "transform", "input")
        name = job_name(DAG_ID, run_id, 1)
        config = transform_job_config(
            job_name=name, model_name=name, image_uri=params["image"], model_data_url=pointer["model"],
            role_arn=role_arn(params["role_arn"]), input_uri=source,
            output_uri=RunLayout(root, DAG_ID, run_id).uri("transform", "output"),
            instance_type=params["instance_type"], instance_count=params["instance_count"],
            cfg=TransformConfig(batch_size=params["batch_size"], beam_size=params["beam_size"],
                                max_output_length=params["max_output_length"],
                                on_error=params["on_error"]),
            max_payload_mb=params["max_payload_mb"], tags={"dag_id": DAG_ID})
        print(f"model {pointer['model']} (promoted by run {pointer['run_id']}), input {source}")
        return {**config, JOB_PREFIX_KEY: DAG_ID}

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def publish(params=None, ti=None) -> dict:
        job = ti.xcom_pull(task_ids=transform_task_id(params["backend"]))["Transform"]
        out = job["TransformOutput"]["S3OutputPath"]
        print(f"batch transform {job['TransformJobName']}: {job.get('TransformJobStatus')}, output {out}")
        return {"job": job["TransformJobName"], "output": out, "lines": job.get("Lines"),
                "errors": job.get("ErrorLines")}

    transform_branch(transform_request(), branch_task_id="backend") >> publish()


wmt_seq2seq_batch_transform()
