"""The wmt_seq2seq DAG's ``sagemaker`` backend against moto's SageMaker and S3, and the behaviours our
operator subclasses add to the amazon provider's (seq2seq_airflow/operators.py).

End to end: ``dag.test()`` runs every task in a fresh interpreter (tests/dag_runner.py; Airflow binds
its configuration and database at import) with boto3 pointed at the module's moto server. Every
SageMaker request the provider's hooks send is recorded at botocore's ``_make_api_call`` (the dict the
operator handed to boto3, before serialisation) and asserted whole. Moto reports a training job
``Completed`` the moment it is created but writes no model, so the run's interpreter does what
SageMaker would: it uploads a real model.tar.gz to the ``ModelArtifacts.S3ModelArtifacts`` that
DescribeTrainingJob reports, and the evaluate step scores that model. Moto completes the transform job
without output; publish records the job.

The operators' own behaviours (a job name per try; stopping the job when the task fails or is killed)
are checked in another interpreter against moto where moto can play the part, and with a stub hook
where it cannot (moto's jobs are never InProgress, and it does not implement StopTrainingJob).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks import storage
from pipeline_tasks.jobs.names import job_name
from pipeline_tasks.runs import RunLayout
from tests.conftest import ROOT
from tests.models import TINY_RNN

DAGS = ROOT / "dags"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/wmt-seq2seq:1"
HYPERPARAMETERS = {"max_seq_len_source": 30, "max_seq_len_target": 30, "rnn_num_hidden": 32, "num_embed_source": 16,
                   "num_embed_target": 16, "max_num_batches": 40, "checkpoint_frequency_num_batches": 20,
                   "optimized_metric": "perplexity"}
JSONLINES = "application/jsonlines"
RECORDIO = "application/x-recordio-protobuf"

# Runs in the DAG's interpreter before tests/dag_runner.py: records every SageMaker request and plays
# SageMaker's part of writing the model artifact where the training job says it is.
RECORDING_RUNNER = """
import json, runpy, sys
import botocore.client
from botocore.exceptions import ClientError

record_file, archive, runner = sys.argv[1:4]
original = botocore.client.BaseClient._make_api_call

def recording(self, operation, params):
    if self.meta.service_model.service_name != "sagemaker":
        return original(self, operation, params)
    entry = {"operation": operation, "params": params}
    try:
        response = original(self, operation, params)
    except ClientError as e:
        entry["error"] = e.response["Error"]["Code"]
        raise
    finally:
        with open(record_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\\n")
    if operation == "CreateTrainingJob":
        job = original(self, "DescribeTrainingJob", {"TrainingJobName": params["TrainingJobName"]})
        from pipeline_tasks import storage
        storage.put_file(archive, job["ModelArtifacts"]["S3ModelArtifacts"])
    return response

botocore.client.BaseClient._make_api_call = recording
sys.argv = [runner, *sys.argv[4:]]
runpy.run_path(runner, run_name="__main__")
"""


@pytest.fixture
def aws_env(airflow_env: dict[str, str], moto_endpoint: str) -> dict[str, str]:
    """The moto environment the fixture set in this process, for the DAG's interpreter."""
    env = {k: v for k, v in airflow_env.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_") or k.lower() == "no_proxy"})
    assert env["AWS_ENDPOINT_URL"] == moto_endpoint
    return env


@pytest.fixture(scope="module")
def model_archive(wmt_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What SageMaker makes of /opt/ml/model: its files at the root of a model.tar.gz."""
    archive = tmp_path_factory.mktemp("artifact") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(wmt_model.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(wmt_model).as_posix())
    return archive


def run_recorded(env: dict[str, str], conf: dict, work: Path, archive: Path, answer: dict | None = None
                 ) -> tuple[dict, list[dict]]:
    """tests/dag_runner.py's result (and the log) and the SageMaker requests, in the order sent; `answer`:
    how a person answers the run's approval request."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "conf.json").write_text(json.dumps(conf))
    answering = []
    if answer:
        (work / "answer.json").write_text(json.dumps(answer))
        answering = [str(work / "answer.json")]
    record = work / "sagemaker-requests.jsonl"
    done = subprocess.run([sys.executable, "-c", RECORDING_RUNNER, str(record), str(archive),
                           str(ROOT / "tests" / "dag_runner.py"), "wmt_seq2seq", str(work / "conf.json"),
                           str(work / "result.json"), *answering], env=env, capture_output=True, text=True,
                          timeout=600)
    log = done.stdout + done.stderr
    (work / "log.txt").write_text(log)
    assert done.returncode == 0, log[-3000:]
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {**json.loads((work / "result.json").read_text()), "log": log}, calls


def read(s3, uri: str) -> bytes:
    loc = storage.parse(uri)
    return s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def boto3_client(service: str):
    """A client made under the moto environment the fixtures set in this process."""
    import boto3

    return boto3.client(service)


def the(calls: list[dict], operation: str) -> dict:
    """The parameters of the one request of this operation."""
    [params] = [c["params"] for c in calls if c["operation"] == operation]
    return params


# --- end to end ---------------------------------------------------------------------------------------------

def test_sagemaker_backend_end_to_end_on_moto(aws_env: dict[str, str], s3, bucket: str, model_archive: Path,
                                              wmt_model: Path, tmp_path: Path) -> None:
    conf = {"corpus": "wmt-toy-ende-sample", "subset_size": 500, "hyperparameters": HYPERPARAMETERS,
            "num_words_source": 2000, "num_words_target": 2000, "beam_size": 1, "eval_max_sentences": 30,
            "artifact_root": f"s3://{bucket}/root", "backend": "sagemaker", "role_arn": ROLE, "image": IMAGE,
            "use_spot": True, "max_runtime_s": 3600, "register_model_package": True,
            # the tracking server is down: the run succeeds and says loudly what was not recorded
            "tracking": {"enabled": True, "uri": "http://127.0.0.1:9", "experiment": "wmt_seq2seq",
                         "registered_model": None}}
    result, calls = run_recorded(aws_env, conf, tmp_path / "run", model_archive)
    assert result["state"] == "success", result["log"][-4000:]
    assert "TRACKING FAILED (start the run at http://127.0.0.1:9)" in result["log"]
    skipped = {"train_local", "transform_local", "tune_local", "tune_sagemaker"}
    assert {t for t, s in result["tasks"].items() if s != "success"} == skipped, result["tasks"]
    assert all(result["tasks"][t] == "skipped" for t in skipped)

    run_id = result["run_id"]
    layout = RunLayout(f"s3://{bucket}/root", "wmt_seq2seq", run_id)
    base = layout.base
    assert base.startswith(f"s3://{bucket}/root/wmt_seq2seq/")
    train_name = job_name("wmt_seq2seq", run_id, 1)
    transform_name = job_name("wmt_seq2seq-transform", run_id, 1)
    assert train_name.endswith("-t1") and transform_name.endswith("-t1") and train_name != transform_name

    # What was asked of SageMaker, in order: each name checked free before it was taken, nothing stopped
    # (the jobs ended well). How often a job is described depends on deferral (DEFERRABLE), so only the
    # writes are compared in full.
    assert [c["operation"] for c in calls if not c["operation"].startswith("Describe")] == [
        "CreateTrainingJob", "CreateModelPackageGroup", "CreateModelPackage", "CreateModel",
        "CreateTransformJob"], calls
    ops = [c["operation"] for c in calls]
    assert ops.index("DescribeTrainingJob") < ops.index("CreateTrainingJob")
    assert ops.index("DescribeTransformJob") < ops.index("CreateTransformJob")
    assert ops.index("DescribeModel") < ops.index("CreateModel")
    for op in ("DescribeTrainingJob", "DescribeTransformJob", "DescribeModel"):
        assert next(c for c in calls if c["operation"] == op).get("error") == "ValidationException", op

    assert the(calls, "CreateTrainingJob") == {
        "TrainingJobName": train_name,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": ROLE,
        "InputDataConfig": [
            {"ChannelName": name,
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{base}/channels/{name}",
                                             "S3DataDistributionType": "FullyReplicated"}},
             "ContentType": content_type, "CompressionType": "None"}
            for name, content_type in (("train", RECORDIO), ("validation", RECORDIO), ("vocab", "application/json"))],
        "OutputDataConfig": {"S3OutputPath": f"{base}/model"},
        "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        "HyperParameters": {"max_seq_len_source": "30", "max_seq_len_target": "30", "rnn_num_hidden": "32",
                            "num_embed_source": "16", "num_embed_target": "16", "max_num_batches": "40",
                            "checkpoint_frequency_num_batches": "20", "optimized_metric": "perplexity"},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": f"{base}/model/checkpoints", "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [{"Key": "dag_id", "Value": "wmt_seq2seq"}, {"Key": "run_id", "Value": run_id}],
    }
    assert {"Name": "validation:bleu", "Regex": "validation:bleu=([0-9.eE+-]+)"} in METRIC_DEFINITIONS
    # The channels the request names are there, as the upload step published them.
    for name in ("train", "validation", "vocab"):
        assert storage.list_files(f"{base}/channels/{name}"), name

    # The model the transform serves is the one the training job reported, not a name guessed from the run.
    artifact = f"{base}/model/{train_name}/output/model.tar.gz"
    assert read(s3, artifact) == model_archive.read_bytes()
    tags = [{"Key": "dag_id", "Value": "wmt_seq2seq"}]
    assert the(calls, "CreateModel") == {
        "ModelName": transform_name, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": artifact,
                             "Environment": {"SEQ2SEQ_BATCH_SIZE": "32", "SEQ2SEQ_BEAM_SIZE": "1",
                                             "SEQ2SEQ_UNKNOWN_TOKENS": "unk", "SEQ2SEQ_ON_ERROR": "fail"}},
        "Tags": tags}
    assert the(calls, "CreateTransformJob") == {
        "TransformJobName": transform_name, "ModelName": transform_name, "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": f"{base}/transform/input"}},
                           "ContentType": JSONLINES, "SplitType": "Line", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": f"{base}/transform/output", "Accept": JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        "Tags": tags}
    # The transform's input: the test set's sources as JSON Lines, one per line of the bundled test.en.
    test_en = (ROOT / "pipeline_tasks/sample_data/wmt-toy-ende/test.en").read_text(encoding="utf-8").splitlines()
    jsonl = read(s3, f"{base}/transform/input/test.jsonl")
    assert [json.loads(line)["source"] for line in jsonl.decode().splitlines()] == test_en

    # Downstream tasks used what the jobs reported: evaluation scored the trained artifact, publish names both.
    summary = json.loads(read(s3, f"{base}/run.json"))
    assert summary["backend"] == "sagemaker" and summary["promoted"] is True
    assert summary["model"] == artifact and summary["training_job"] == train_name
    assert summary["transform_job"] == transform_name
    assert summary["transform_output"] == f"{base}/transform/output"
    metrics = json.loads(read(s3, f"{base}/eval/metrics.json"))
    assert metrics["sentences"]["total"] == 30 and summary["metrics"] == metrics["metrics"]
    pointer = json.loads(read(s3, layout.pointer))
    assert pointer["model"] == artifact and pointer["training_job"] == train_name
    # The promotion is mirrored in the SageMaker Model Registry: a package in the language pair's group,
    # Approved (no approval asked), served as the transform serves it, with the evaluation as its quality.
    assert the(calls, "CreateModelPackageGroup")["ModelPackageGroupName"] == "wmt-seq2seq-en-de"
    package = the(calls, "CreateModelPackage")
    assert {k: v for k, v in package.items() if k not in ("CustomerMetadataProperties", "ClientToken")} == {
        "ModelPackageGroupName": "wmt-seq2seq-en-de",
        "ModelPackageDescription": f"wmt_seq2seq run {run_id}: {summary['gate']}",
        "InferenceSpecification": {
            "Containers": [{"Image": IMAGE, "ModelDataUrl": artifact,
                            "Environment": the(calls, "CreateModel")["PrimaryContainer"]["Environment"]}],
            "SupportedContentTypes": [JSONLINES, "application/json"],
            "SupportedResponseMIMETypes": [JSONLINES, "application/json"],
            "SupportedTransformInstanceTypes": ["ml.m5.xlarge"]},
        "ModelApprovalStatus": "Approved",
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                         "S3Uri": f"{base}/eval/metrics.json"}}},
        "Tags": [{"Key": "dag_id", "Value": "wmt_seq2seq"}]}
    assert len(package["ClientToken"]) == 36  # one package per run and model, however often promote is retried
    assert package["CustomerMetadataProperties"]["run_id"] == run_id
    assert package["CustomerMetadataProperties"]["training_job"] == train_name
    assert float(package["CustomerMetadataProperties"]["test:bleu"]) == pytest.approx(metrics["metrics"]["test:bleu"])
    sagemaker = boto3_client("sagemaker")
    first_package = sagemaker.describe_model_package(ModelPackageName=summary["model_package_arn"])
    assert first_package["ModelApprovalStatus"] == "Approved" and first_package["ModelPackageVersion"] == 1

    # The weekly retrain: init_model=promoted starts from that artifact (the wmt test model: Moses + joint
    # BPE, an RNN of TINY_RNN's architecture). The request carries it as the model channel; the parent's
    # tokenizer and vocabularies made the channels.
    # It waits for a person's approval, with the package PendingManualApproval meanwhile, so AWS-side
    # pipelines see what is waiting; approving through the REST API approves the package too.
    conf2 = {**conf, "init_model": "promoted", "use_spot": False, "require_approval": True,
             "hyperparameters": {**TINY_RNN, "max_num_batches": "40"}}
    result2, calls2 = run_recorded(aws_env, conf2, tmp_path / "run2", model_archive,
                                   answer={"option": "Approve", "reason": "same scores, newer data",
                                           "user": "reviewer"})
    assert result2["state"] == "success", result2["log"][-4000:]
    assert result2["tasks"]["approval"] == "success" and result2["tasks"]["promote"] == "success"
    writes = [c for c in calls2 if c["operation"] in ("CreateModelPackage", "UpdateModelPackage")]
    assert [(c["operation"], c["params"]["ModelApprovalStatus"]) for c in writes] == [
        ("CreateModelPackage", "PendingManualApproval"), ("UpdateModelPackage", "Approved")]
    assert writes[1]["params"]["ApprovalDescription"] == "approved by reviewer: same scores, newer data"
    versions = sagemaker.list_model_packages(ModelPackageGroupName="wmt-seq2seq-en-de")["ModelPackageSummaryList"]
    assert sorted((v["ModelPackageVersion"], v["ModelApprovalStatus"]) for v in versions) == [(1, "Approved"),
                                                                                               (2, "Approved")]
    base2 = RunLayout(f"s3://{bucket}/root", "wmt_seq2seq", result2["run_id"]).base
    request = the(calls2, "CreateTrainingJob")
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "validation", "vocab", "model"]
    assert request["InputDataConfig"][3] == {
        "ChannelName": "model",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": artifact,
                                        "S3DataDistributionType": "FullyReplicated"}},
        "ContentType": "application/x-sagemaker-model", "CompressionType": "None"}
    assert request["Environment"] == {"SEQ2SEQ_PARENT_MODEL_URI": artifact}
    assert read(s3, f"{base2}/tok/tokenizer.json") == (wmt_model / "tokenizer.json").read_bytes()
    [spm] = wmt_model.glob("spm.*.model")
    assert read(s3, f"{base2}/tok/{spm.name}") == spm.read_bytes()
    for name in ("vocab.src.json", "vocab.trg.json"):
        assert json.loads(read(s3, f"{base2}/channels/vocab/{name}")) == json.loads((wmt_model / name).read_text())
    summary2 = json.loads(read(s3, f"{base2}/run.json"))
    assert summary2["parent"]["model"] == artifact and summary2["parent"]["run_id"] == run_id
    assert summary2["parent"]["metrics"] == metrics["metrics"]  # the same model on the same sentences
    assert summary2["promoted"] is True and summary2["approval"]["by"] == "reviewer"
    assert summary2["model_package_arn"] == writes[1]["params"]["ModelPackageArn"]


# --- the operators: a job per try ------------------------------------------------------------------------------

TUNING_RANGES = {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.0001", "MaxValue": "0.01",
                                                "ScalingType": "Logarithmic"}]}

RUN_ID = "scheduled__2026-03-01T00:00:00+00:00"

# Runs each try as Airflow does: a fresh operator on the request rendered afresh, with the try's context.
TRIES = """
import copy, json, sys
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
from seq2seq_airflow.operators import Seq2SeqTrainingOperator

request, run_id, tries = json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
out = []
for try_number in tries:
    op = Seq2SeqTrainingOperator(task_id="train_sagemaker", config=copy.deepcopy(request), wait_for_completion=True,
                                 deferrable=True, check_interval=60, print_log=False, action_if_job_exists="fail")
    try:
        job = op.execute({"run_id": run_id, "ti": SimpleNamespace(try_number=try_number)})["Training"]
        out.append({"name": job["TrainingJobName"], "status": job["TrainingJobStatus"]})
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
print(json.dumps(out))
"""


def test_a_retried_train_task_starts_a_job_of_its_own(aws_env: dict[str, str], s3, bucket: str) -> None:
    """Against moto: try 2 creates its own job beside try 1's; without the per-try name (try 1's name
    again) the provider refuses the name (``action_if_job_exists="fail"``, as the DAG sets it)."""
    from pipeline_tasks.jobs.requests import training_job_config

    channels = {}
    for name in ("train", "validation", "vocab"):
        s3.put_object(Bucket=bucket, Key=f"channels/{name}/part-0", Body=b"x")
        channels[name] = f"s3://{bucket}/channels/{name}"
    request = {**training_job_config(job_name=job_name("wmt_seq2seq", RUN_ID, 1), image_uri=IMAGE, role_arn=ROLE,
                                     channels=channels, output_uri=f"s3://{bucket}/model",
                                     hyperparameters=HYPERPARAMETERS),
               "JobNamePrefix": "wmt_seq2seq"}
    done = subprocess.run([sys.executable, "-c", TRIES, str(DAGS), json.dumps(request), RUN_ID, "[1, 2, 1]"],
                          env=aws_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, again = json.loads(done.stdout.strip().splitlines()[-1])
    t1, t2 = job_name("wmt_seq2seq", RUN_ID, 1), job_name("wmt_seq2seq", RUN_ID, 2)
    assert t1.endswith("-t1") and t2.endswith("-t2")
    assert first == {"name": t1, "status": "Completed"} and second == {"name": t2, "status": "Completed"}
    assert "already exists" in again["error"] and t1 in again["error"]
    client = boto3_client("sagemaker")
    this_run = [j["TrainingJobName"] for j in client.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
                if j["TrainingJobName"].startswith(t1.removesuffix("t1"))]
    assert sorted(this_run) == [t1, t2]
    assert client.describe_training_job(TrainingJobName=t2)["ModelArtifacts"]["S3ModelArtifacts"] == (
        f"s3://{bucket}/model/{t2}/output/model.tar.gz")


# --- the operators: stopping the job ----------------------------------------------------------------------------

# Moto's jobs are Completed the moment they exist and moto has no StopTrainingJob, so these scenarios give
# the operators a stub hook that answers DescribeXJob with scripted statuses and records every call; the
# operators' own code and the provider's execute/execute_complete run unchanged around it.
STOP_SCENARIOS = """
import copy, json, sys
from types import SimpleNamespace
from botocore.exceptions import ClientError
sys.path.insert(0, sys.argv[1])
from airflow.sdk.exceptions import TaskDeferred
from seq2seq_airflow.operators import Seq2SeqTrainingOperator, Seq2SeqTransformOperator, Seq2SeqTuningOperator

train_request, transform_request, run_id = json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
tuning_request = json.loads(sys.argv[5])


class StubHook:
    non_terminal_states = {"InProgress", "Stopping"}
    failed_states = {"Failed"}
    conn_partition, conn_region_name = "aws", "us-east-1"

    def __init__(self, kind, statuses, stop_fails=False, models=()):
        self.kind, self.statuses, self.calls, self.models = kind, list(statuses), [], set(models)

        def stop(operation):
            def call(**params):
                self.calls.append([operation, params])
                if stop_fails:
                    raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, operation)
            return call
        self.conn = SimpleNamespace(stop_training_job=stop("StopTrainingJob"),
                                    stop_transform_job=stop("StopTransformJob"),
                                    stop_hyper_parameter_tuning_job=stop("StopHyperParameterTuningJob"))

    def describe(self, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.calls.append([f"Describe{self.kind}Job", name, status])
        if status in ("missing", "throttled"):
            code = "ValidationException" if status == "missing" else "ThrottlingException"
            raise ClientError({"Error": {"Code": code, "Message": status}}, f"Describe{self.kind}Job")
        return {f"{self.kind}JobName": name, f"{self.kind}JobStatus": status, "FailureReason": "the algorithm said no",
                "ModelName": name}

    describe_training_job = describe_transform_job = describe_tuning_job = describe

    def create_tuning_job(self, config, **kwargs):
        self.calls.append(["CreateHyperParameterTuningJob", config["HyperParameterTuningJobName"]])
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def describe_model(self, name):
        if name not in self.models:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": "missing"}}, "DescribeModel")
        return {"ModelName": name}

    def configure_s3_resources(self, config):
        pass

    def create_training_job(self, config, **kwargs):
        self.calls.append(["CreateTrainingJob", config["TrainingJobName"]])
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def create_model(self, config):
        self.calls.append(["CreateModel", config["ModelName"]])
        self.models.add(config["ModelName"])

    def create_transform_job(self, config, **kwargs):
        self.calls.append(["CreateTransformJob", config["TransformJobName"], config["ModelName"]])
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}


def context(try_number):
    return {"run_id": run_id, "ti": SimpleNamespace(try_number=try_number, xcom_push=lambda **kw: None)}


def operator(kind, statuses, **hook_kw):
    if kind == "HyperParameterTuning":
        op = Seq2SeqTuningOperator(task_id="tune_sagemaker", config=copy.deepcopy(tuning_request),
                                   wait_for_completion=True, deferrable=True, check_interval=60)
    elif kind == "Training":
        op = Seq2SeqTrainingOperator(task_id="train_sagemaker", config=copy.deepcopy(train_request),
                                     wait_for_completion=True, deferrable=True, check_interval=60,
                                     print_log=False, action_if_job_exists="fail")
    else:
        op = Seq2SeqTransformOperator(task_id="transform_sagemaker", config=copy.deepcopy(transform_request),
                                      wait_for_completion=True, deferrable=True, check_interval=60,
                                      action_if_job_exists="fail", check_if_model_exists=True,
                                      action_if_model_exists="fail")
    op.__dict__["hook"] = StubHook(kind, statuses, **hook_kw)
    return op


def run(op, call):
    try:
        value = call()
        return {"returned": sorted(value), "calls": op.hook.calls}
    except TaskDeferred as d:
        t = d.trigger
        return {"deferred": {"job_name": t.job_name, "job_type": t.job_type, "method": d.method_name,
                             "wait_s": t.attempts * t.waiter_delay}, "calls": op.hook.calls}
    except Exception as e:
        return {"raised": f"{type(e).__name__}: {e}", "calls": op.hook.calls}


out = {}
for kind in ("Training", "Transform"):
    # try 2 starts its job, which runs: the task defers; killed (cleared or marked failed) in the worker,
    # it stops that job
    op = operator(kind, ["missing", "InProgress"])
    out[f"{kind}: deferred"] = run(op, lambda: op.execute(context(2)))
    op.hook.calls = []
    op.on_kill()
    out[f"{kind}: killed"] = op.hook.calls
    # try 2 resumes in a fresh process (the request rendered afresh: try 1's name in it) and the wait
    # failed (here: timed out) while the job still runs: stop try 2's job, the one it waited for
    for event in ("timeout", "success"):
        op = operator(kind, ["InProgress" if event == "timeout" else "Completed"], models=[op_name[kind]])
        out[f"{kind}: resumed {event}"] = run(op, lambda: op.execute_complete(
            context(2), {"status": event, "job_name": op_name[kind], "message": "gave up waiting"}))
# a tuning job: the task defers under try 2's name for as long as its trials may run; killed, it stops the
# tuning job (and SageMaker its training jobs)
op = operator("HyperParameterTuning", ["InProgress"])
out["Tuning: deferred"] = run(op, lambda: op.execute(context(2)))
op.hook.calls = []
op.on_kill()
out["Tuning: killed"] = op.hook.calls
# a task that fails after creating its job (the first status check is throttled) stops it
op = operator("Training", ["missing", "throttled", "InProgress"])
out["Training: error after create"] = run(op, lambda: op.execute(context(2)))
# a job that failed by itself: the task fails with its reason; nothing to stop
op = operator("Training", ["missing", "Failed"])
out["Training: job failed"] = run(op, lambda: op.execute(context(2)))
# killed after its job completed: nothing to stop
op = operator("Training", ["missing", "Completed"])
out["Training: completed"] = run(op, lambda: op.execute(context(2)))
op.hook.calls = []
op.on_kill()
out["Training: killed after completion"] = op.hook.calls
# the stop call itself fails: the task still fails with the wait's error, and the log says so
op = operator("Training", ["InProgress"], stop_fails=True)
out["Training: stop refused"] = run(op, lambda: op.execute_complete(
    context(2), {"status": "error", "job_name": op_name["Training"], "message": "waiter broke"}))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def stop_scenarios(airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipeline_tasks.jobs.requests import training_job_config, transform_job_config
    from pipeline_tasks.transform import TransformConfig

    channels = {name: f"s3://bucket/channels/{name}" for name in ("train", "validation", "vocab")}
    train = {**training_job_config(job_name=job_name("wmt_seq2seq", RUN_ID, 1), image_uri=IMAGE, role_arn=ROLE,
                                   channels=channels, output_uri="s3://bucket/model", hyperparameters=HYPERPARAMETERS,
                                   max_runtime_s=36000, use_spot=True),
             "JobNamePrefix": "wmt_seq2seq"}
    t1 = job_name("wmt_seq2seq-transform", RUN_ID, 1)
    transform = {**transform_job_config(job_name=t1, model_name=t1, image_uri=IMAGE, role_arn=ROLE,
                                        model_data_url="s3://bucket/model/x/output/model.tar.gz",
                                        input_uri="s3://bucket/transform/input", output_uri="s3://bucket/out",
                                        cfg=TransformConfig(beam_size=1)),
                 "JobNamePrefix": "wmt_seq2seq-transform"}
    from pipeline_tasks.jobs.names import TUNING_JOB_NAME_MAX
    from pipeline_tasks.jobs.tuning import tuning_job_config

    tuning = {**tuning_job_config(job_name=job_name("wmt_seq2seq-tune", RUN_ID, 1, TUNING_JOB_NAME_MAX),
                                  training_request={k: v for k, v in train.items() if k != "JobNamePrefix"},
                                  objective="validation:bleu", ranges=TUNING_RANGES, max_jobs=6, max_parallel=2),
              "JobNamePrefix": "wmt_seq2seq-tune"}
    names = {"Training": job_name("wmt_seq2seq", RUN_ID, 2), "Transform": job_name("wmt_seq2seq-transform", RUN_ID, 2),
             "HyperParameterTuning": job_name("wmt_seq2seq-tune", RUN_ID, 2, TUNING_JOB_NAME_MAX)}
    script = STOP_SCENARIOS.replace("out = {}", f"op_name = {names!r}\nout = {{}}", 1)
    env = {k: v for k, v in airflow_env.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-c", script, str(DAGS), json.dumps(train), json.dumps(transform), RUN_ID,
                           json.dumps(tuning)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "log": done.stdout + done.stderr, "names": names}


@pytest.mark.parametrize("kind", ["Training", "Transform"])
def test_a_running_job_defers_under_this_tries_name_for_as_long_as_it_may_run(stop_scenarios: dict,
                                                                                kind: str) -> None:
    name = stop_scenarios["names"][kind]
    got = stop_scenarios[f"{kind}: deferred"]
    # spot training: MaxWaitTimeInSeconds (2 x 36000 s) plus an hour to start and to upload the model;
    # a transform job has no stopping condition: a day
    wait_s = 2 * 36000 + 3600 if kind == "Training" else 24 * 3600
    assert got["deferred"] == {"job_name": name, "job_type": kind, "method": "execute_complete", "wait_s": wait_s}
    creates = [c for c in got["calls"] if c[0].startswith("Create")]
    if kind == "Training":
        assert creates == [["CreateTrainingJob", name]]
    else:
        assert creates == [["CreateModel", name], ["CreateTransformJob", name, name]]
    assert not [c for c in got["calls"] if c[0].startswith("Stop")]


@pytest.mark.parametrize("kind", ["Training", "Transform"])
def test_a_killed_or_failed_task_stops_its_running_job(stop_scenarios: dict, kind: str) -> None:
    name = stop_scenarios["names"][kind]
    stop = [f"Stop{kind}Job", {f"{kind}JobName": name}]
    assert stop_scenarios[f"{kind}: killed"] == [[f"Describe{kind}Job", name, "InProgress"], stop]
    failed = stop_scenarios[f"{kind}: resumed timeout"]
    assert "gave up waiting" in failed["raised"] and failed["calls"][-1] == stop
    assert name.endswith("-t2") and job_name("wmt_seq2seq", RUN_ID, 1) not in json.dumps(failed["calls"])
    finished = stop_scenarios[f"{kind}: resumed success"]
    assert finished["returned"] == (["Training"] if kind == "Training" else ["Model", "Transform"])
    assert not [c for c in finished["calls"] if c[0].startswith("Stop")]


def test_a_task_failing_after_creating_its_job_stops_it_and_a_finished_job_is_left_alone(stop_scenarios: dict
                                                                                         ) -> None:
    name = stop_scenarios["names"]["Training"]
    stop = ["StopTrainingJob", {"TrainingJobName": name}]
    errored = stop_scenarios["Training: error after create"]
    assert "ThrottlingException" in errored["raised"] and errored["calls"][-2:] == [
        ["DescribeTrainingJob", name, "InProgress"], stop]
    failed = stop_scenarios["Training: job failed"]
    assert "the algorithm said no" in failed["raised"]
    assert not [c for c in failed["calls"] if c[0].startswith("Stop")]
    assert stop_scenarios["Training: killed after completion"] == [["DescribeTrainingJob", name, "Completed"]]
    refused = stop_scenarios["Training: stop refused"]
    assert "waiter broke" in refused["raised"] and refused["calls"][-1] == stop
    assert f"could not stop SageMaker training job {name}" in stop_scenarios["log"]


def test_a_tuning_task_defers_under_this_tries_name_and_stops_its_tuning_job_when_killed(stop_scenarios: dict
                                                                                        ) -> None:
    name = stop_scenarios["names"]["HyperParameterTuning"]
    assert len(name) <= 32 and name.endswith("-t2")
    got = stop_scenarios["Tuning: deferred"]
    # 6 spot trials, 2 at a time: 3 rounds of MaxWaitTimeInSeconds (2 x 36000 s) plus an hour each
    assert got["deferred"] == {"job_name": name, "job_type": "tuning", "method": "execute_complete",
                               "wait_s": 3 * (2 * 36000 + 3600)}
    assert [c for c in got["calls"] if c[0].startswith("Create")] == [["CreateHyperParameterTuningJob", name]]
    assert stop_scenarios["Tuning: killed"] == [
        ["DescribeHyperParameterTuningJob", name, "InProgress"],
        ["StopHyperParameterTuningJob", {"HyperParameterTuningJobName": name}]]


TUNING_TRIES = """
import copy, json, sys
from types import SimpleNamespace
import botocore.client
sys.path.insert(0, sys.argv[1])
from seq2seq_airflow.operators import Seq2SeqTuningOperator

request, run_id, tries = json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
sent = []
original = botocore.client.BaseClient._make_api_call
def recording(self, operation, params):
    if operation == "CreateHyperParameterTuningJob":
        sent.append(params)
    return original(self, operation, params)
botocore.client.BaseClient._make_api_call = recording
names = []
for try_number in tries:
    op = Seq2SeqTuningOperator(task_id="tune_sagemaker", config=copy.deepcopy(request), wait_for_completion=False)
    names.append(op.execute({"run_id": run_id, "ti": SimpleNamespace(try_number=try_number)})["Tuning"][
        "HyperParameterTuningJobName"])
print(json.dumps({"names": names, "sent": sent}, default=str))
"""


def test_the_tuning_request_reaches_sagemaker_as_built_under_each_tries_name(aws_env: dict[str, str], s3,
                                                                             bucket: str) -> None:
    from pipeline_tasks.jobs.names import TUNING_JOB_NAME_MAX
    from pipeline_tasks.jobs.requests import training_job_config
    from pipeline_tasks.jobs.tuning import tuning_job_config

    channels = {}
    for name in ("train", "validation", "vocab"):  # the provider checks that the channels are there
        s3.put_object(Bucket=bucket, Key=f"channels/{name}/part-0", Body=b"x")
        channels[name] = f"s3://{bucket}/channels/{name}"
    training = training_job_config(job_name=job_name("wmt_seq2seq", RUN_ID, 1), image_uri=IMAGE, role_arn=ROLE,
                                   channels=channels, output_uri=f"s3://{bucket}/model",
                                   hyperparameters=HYPERPARAMETERS)
    built = tuning_job_config(job_name=job_name("wmt_seq2seq-tune", RUN_ID, 1, TUNING_JOB_NAME_MAX),
                              training_request=training, objective="validation:bleu", ranges=TUNING_RANGES,
                              max_jobs=4, max_parallel=2, early_stopping="Auto")
    request = {**built, "JobNamePrefix": "wmt_seq2seq-tune"}
    done = subprocess.run([sys.executable, "-c", TUNING_TRIES, str(DAGS), json.dumps(request), RUN_ID, "[1, 2]"],
                          env=aws_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    t1, t2 = (job_name("wmt_seq2seq-tune", RUN_ID, n, TUNING_JOB_NAME_MAX) for n in (1, 2))
    assert got["names"] == [t1, t2]
    assert got["sent"] == [{**built, "HyperParameterTuningJobName": t} for t in (t1, t2)]  # exactly as built
    client = boto3_client("sagemaker")
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=t2)
    assert described["HyperParameterTuningJobConfig"] == built["HyperParameterTuningJobConfig"]
