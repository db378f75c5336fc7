"""The trigger that stops a SageMaker job when a user kills the deferred task, and the operators handing
it to the triggerer instead of the provider's. Run in an Airflow interpreter of its own (airflow_env)."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = r"""
import asyncio, json
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import TaskDeferred
from seq2seq_airflow.operators import Seq2SeqTrainingOperator, Seq2SeqTransformOperator
from seq2seq_airflow.triggers import StoppingSageMakerTrigger

calls = []

class Client:
    def __init__(self, status):
        self.status = status
    async def describe_training_job(self, **kw):
        calls.append(["describe_training_job", kw]); return {"TrainingJobStatus": self.status}
    async def describe_transform_job(self, **kw):
        calls.append(["describe_transform_job", kw]); return {"TransformJobStatus": self.status}
    async def stop_training_job(self, **kw):
        calls.append(["stop_training_job", kw])
    async def stop_transform_job(self, **kw):
        calls.append(["stop_transform_job", kw])

class Conn:
    def __init__(self, status): self.client = Client(status)
    async def __aenter__(self): return self.client
    async def __aexit__(self, *exc): return False

class Hook:
    def __init__(self, status): self.status = status
    async def get_async_conn(self): return Conn(self.status)

out = {}
for job_type, status in (("Training", "InProgress"), ("Training", "Completed"), ("Transform", "InProgress")):
    trigger = StoppingSageMakerTrigger(job_name="job-t2", job_type=job_type, waiter_delay=5, waiter_max_attempts=9)
    trigger.hook = lambda status=status: Hook(status)
    calls.clear()
    asyncio.run(trigger.on_kill())
    out[f"{job_type}-{status}"] = list(calls)

# The operators defer with our trigger, same arguments, importable by class path.
provider = SageMakerTrigger(job_name="job-t1", job_type="Training", waiter_delay=60, waiter_max_attempts=100,
                            aws_conn_id="aws_default", region_name="eu-west-1")
for cls, config in ((Seq2SeqTrainingOperator, {"TrainingJobName": "x"}),
                    (Seq2SeqTransformOperator, {"Model": {}, "Transform": {"TransformJobName": "x"}})):
    op = cls(task_id="t", config=config)
    try:
        op.defer(trigger=provider, method_name="execute_complete")
    except TaskDeferred as deferred:
        path, kwargs = deferred.trigger.serialize()
        out[cls.__name__] = {"path": path, "kwargs": kwargs, "same": kwargs == provider.serialize()[1]}
print(json.dumps(out))
"""


def test_a_killed_deferred_task_stops_its_job_and_the_operators_use_that_trigger(airflow_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", CODE], env=airflow_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["Training-InProgress"] == [["describe_training_job", {"TrainingJobName": "job-t2"}],
                                          ["stop_training_job", {"TrainingJobName": "job-t2"}]]
    assert out["Training-Completed"] == [["describe_training_job", {"TrainingJobName": "job-t2"}]]
    assert out["Transform-InProgress"] == [["describe_transform_job", {"TransformJobName": "job-t2"}],
                                           ["stop_transform_job", {"TransformJobName": "job-t2"}]]
    for name in ("Seq2SeqTrainingOperator", "Seq2SeqTransformOperator"):
        assert out[name]["path"] == "seq2seq_airflow.triggers.StoppingSageMakerTrigger", out[name]
        assert out[name]["same"] and out[name]["kwargs"]["job_name"] == "job-t1"
