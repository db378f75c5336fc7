"""The training job spec (docs/ARCHITECTURE.md §5): the exact CreateTrainingJob request, early hyperparameter
validation, job names SageMaker accepts and that never collide across runs and tries, the docker
command and its no-engine error, metric parsing, and the request checks of the local backends."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.hyperparameters import HyperparameterError, UnknownHyperparameterError
from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks.jobs import metrics, requests
from pipeline_tasks.jobs.local import docker, process, training
from pipeline_tasks.jobs.local.docker import DockerUnavailableError
from pipeline_tasks.jobs.names import job_name, validate_job_name

CHANNELS = {"train": "s3://b/run/channels/train/", "validation": "s3://b/run/channels/validation/",
            "vocab": "s3://b/run/channels/vocab/"}
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/wmt-seq2seq:1.0"
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def config(**overrides):
    args = {"job_name": "wmt-20261121-abc-t1", "image_uri": IMAGE, "role_arn": ROLE, "channels": CHANNELS,
            "output_uri": "s3://b/run/model", "hyperparameters": {"batch_size": 16, "rnn_num_hidden": "32"}}
    return requests.training_job_config(**{**args, **overrides})


# --- the request ----------------------------------------------------------------------------------------------

def channel(name, uri, content_type):
    return {"ChannelName": name,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                            "S3DataDistributionType": "FullyReplicated"}},
            "ContentType": content_type, "CompressionType": "None"}


EXPECTED_BASE = {
    "TrainingJobName": "wmt-20261121-abc-t1",
    "AlgorithmSpecification": {
        "TrainingImage": IMAGE,
        "TrainingInputMode": "File",
        "MetricDefinitions": [
            {"Name": "train:loss", "Regex": "train:loss=([0-9.eE+-]+)"},
            {"Name": "train:perplexity", "Regex": "train:perplexity=([0-9.eE+-]+)"},
            {"Name": "train:accuracy", "Regex": "train:accuracy=([0-9.eE+-]+)"},
            {"Name": "validation:perplexity", "Regex": "validation:perplexity=([0-9.eE+-]+)"},
            {"Name": "validation:accuracy", "Regex": "validation:accuracy=([0-9.eE+-]+)"},
            {"Name": "validation:bleu", "Regex": "validation:bleu=([0-9.eE+-]+)"},
        ],
    },
    "RoleArn": ROLE,
    "InputDataConfig": [
        channel("train", "s3://b/run/channels/train/", "application/x-recordio-protobuf"),
        channel("validation", "s3://b/run/channels/validation/", "application/x-recordio-protobuf"),
        channel("vocab", "s3://b/run/channels/vocab/", "application/json"),
    ],
    "OutputDataConfig": {"S3OutputPath": "s3://b/run/model"},
    "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
    "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
    "HyperParameters": {"batch_size": "16", "rnn_num_hidden": "32"},
    "EnableManagedSpotTraining": False,
}


def test_config_is_the_exact_create_training_job_request():
    assert config() == EXPECTED_BASE


def test_config_with_spot_checkpoints_and_tags():
    got = config(instance_type="ml.g5.xlarge", instance_count=1, volume_gb=100, max_runtime_s=3600, use_spot=True,
                 max_wait_s=7200, checkpoint_uri="s3://b/run/checkpoints/", tags={"team": "mt", "dag": "wmt"})
    expected = {
        **EXPECTED_BASE,
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": "s3://b/run/checkpoints/", "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [{"Key": "dag", "Value": "wmt"}, {"Key": "team", "Value": "mt"}],
    }
    assert got == expected


def test_a_warm_start_adds_the_model_channel_and_names_the_parent_in_the_environment():
    parent = "s3://b/runs/1/model/job-1/output/model.tar.gz"
    got = config(model_uri=parent)
    assert got == {**EXPECTED_BASE,
                   "InputDataConfig": [*EXPECTED_BASE["InputDataConfig"],
                                       channel("model", parent, "application/x-sagemaker-model")],
                   "Environment": {"SEQ2SEQ_PARENT_MODEL_URI": parent}}
    with pytest.raises(ValueError, match="model_uri must be a non-empty string"):
        config(model_uri="")


@pytest.mark.parametrize("image,builtin", [
    ("224300973850.dkr.ecr.eu-west-1.amazonaws.com/seq2seq:1", True),
    ("811284229777.dkr.ecr.us-east-1.amazonaws.com/seq2seq:latest", True),
    ("390948362332.dkr.ecr.cn-north-1.amazonaws.com.cn/seq2seq:1", True),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/wmt-seq2seq:1.0", False),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/seq2seq:1", False),
    ("wmt-seq2seq:latest", False),
    ("seq2seq:1", False),
])
def test_the_built_in_image_is_recognised_and_refused_a_model_channel(image, builtin):
    assert requests.is_builtin_image(image) is builtin
    if builtin:
        with pytest.raises(ValueError, match="built-in seq2seq algorithm, which takes no 'model' channel"):
            config(image_uri=image, model_uri="s3://b/parent/model.tar.gz")


def test_spot_wait_defaults_to_twice_the_runtime_and_must_cover_it():
    assert config(use_spot=True, max_runtime_s=1000)["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 1000, "MaxWaitTimeInSeconds": 2000}
    with pytest.raises(ValueError, match=r"max_wait_s \(999\) must be >= max_runtime_s \(1000\)"):
        config(use_spot=True, max_runtime_s=1000, max_wait_s=999)
    with pytest.raises(ValueError, match="spot training only"):
        config(max_wait_s=5000)
    with pytest.raises(ValueError, match=r"max_runtime_s must be 1\.\.2419200"):
        config(max_runtime_s=30 * 24 * 3600)


def test_the_metric_definitions_are_a_copy():
    cfg = config()
    cfg["AlgorithmSpecification"]["MetricDefinitions"][0]["Regex"] = "changed"
    assert METRIC_DEFINITIONS[0]["Regex"] == "train:loss=([0-9.eE+-]+)"


def test_hyperparameters_are_stringified_as_the_container_reads_them():
    got = config(hyperparameters={"batch_size": 64, "learning_rate": 0.0003, "bucketing_enabled": False,
                                  "max_num_epochs": None, "clip_gradient": 1e-05, "rnn_cell_type": "gru"})
    assert got["HyperParameters"] == {"batch_size": "64", "learning_rate": "0.0003", "bucketing_enabled": "false",
                                      "max_num_epochs": "none", "clip_gradient": "1e-05", "rnn_cell_type": "gru"}


def test_a_bad_hyperparameter_fails_at_config_time_naming_it():
    with pytest.raises(HyperparameterError) as e:
        config(hyperparameters={"batch_size": "sixteen"})
    assert e.value.name == "batch_size"
    assert str(e.value).startswith('hyperparameter batch_size="sixteen": must be an integer')
    with pytest.raises(UnknownHyperparameterError, match=r"bach_size \(did you mean batch_size\?\)"):
        config(hyperparameters={"bach_size": "16"})
    with pytest.raises(HyperparameterError, match="rnn_cell_type"):
        config(hyperparameters={"rnn_cell_type": "transformer"})
    with pytest.raises(ValueError, match=r"hyperparameter batch_size: list value \[16\] cannot be passed"):
        config(hyperparameters={"batch_size": [16]})


def test_channels_must_be_the_three_the_algorithm_reads():
    with pytest.raises(ValueError, match="missing: vocab"):
        config(channels={"train": "s3://b/t/", "validation": "s3://b/v/"})
    with pytest.raises(ValueError, match="unknown: valdation"):
        config(channels={**CHANNELS, "valdation": "s3://b/v/"})
    with pytest.raises(ValueError, match="channel 'vocab': the URI must be a non-empty string"):
        config(channels={**CHANNELS, "vocab": ""})


def test_a_bad_job_name_is_refused_with_the_rule():
    for bad in ["-starts-with-hyphen", "ends-with-hyphen-", "under_score", "dot.ted", "a" * 64, ""]:
        with pytest.raises(ValueError, match=r"not valid for SageMaker|non-empty"):
            config(job_name=bad)
    with pytest.raises(ValueError, match=r"1-63 characters, letters, digits and hyphens"):
        validate_job_name("wmt_job")
    assert validate_job_name("a" * 63) == "a" * 63
    assert validate_job_name("a--b") == "a--b"


# --- job names --------------------------------------------------------------------------------------------

RUN_IDS = [
    "manual__2026-11-21T20:30:00.123456+00:00",
    "manual__2026-11-21T20:30:00.123457+00:00",   # differs in the microseconds only
    "scheduled__2026-11-21T00:00:00+00:00",
    "scheduled__2026-11-22T00:00:00+00:00",
    "asset_triggered__2026-11-21T20:30:00+00:00",
    "my custom run / with spaces & ünïcödé " * 5,
    "x",
]


def test_job_names_are_valid_unique_per_run_and_try_and_stable():
    names = {}
    for prefix, run_id, attempt in itertools.product(["wmt-seq2seq", "wmt_seq2seq_en_de_" * 6], RUN_IDS, [0, 1, 2,
                                                                                                           10, 999]):
        name = job_name(prefix, run_id, attempt)
        assert SAGEMAKER_NAME.fullmatch(name) and len(name) <= 63, name
        assert name.endswith(f"-t{attempt}")
        assert job_name(prefix, run_id, attempt) == name  # the same task asks again: the same name
        names[(prefix, run_id, attempt)] = name
    assert len(set(names.values())) == len(names)


def test_job_name_is_readable():
    name = job_name("wmt_seq2seq", "manual__2026-11-21T20:30:00.123456+00:00", 1)
    assert re.fullmatch(r"wmt-seq2seq-20261121-203000-[0-9a-f]{8}-t1", name), name
    long = job_name("wmt_seq2seq_english_german_nightly_retraining_pipeline",
                    "manual__2026-11-21T20:30:00.123456+00:00", 12)
    assert len(long) == 63 and long.startswith("wmt-seq2seq-english-german-nightl") and long.endswith("-t12"), long
    assert re.fullmatch(r"wmt-[0-9a-f]{8}-t3", job_name("wmt", "no date here", 3))
    assert job_name("__", "x", 1).startswith("job-")


def test_job_name_rejects_a_bad_try_number():
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="try_number"):
            job_name("wmt", "run", bad)


# --- metrics ----------------------------------------------------------------------------------------------

def test_metric_lines_are_read_as_sagemaker_reads_them():
    log = "\n".join([
        "2026-11-21 20:30:00,000 INFO model.training: epoch 1 done",
        "train:loss=2.5", "validation:perplexity=12.8", "validation:bleu=21.37",
        "validation:perplexity=9.5e+00",            # the last value wins
        "validation:accuracy=1.2.3",               # matches the regex, is no number: ignored
        "train:perplexity=nan",                    # not matched by the regex
    ])
    assert metrics.parse_metrics(log) == {"train:loss": 2.5, "validation:perplexity": 9.5, "validation:bleu": 21.37}
    assert metrics.parse_metrics("no metrics here") == {}
    assert metrics.parse_metrics("x:y=3", [{"Name": "custom", "Regex": r"x:y=(\d+)"}]) == {"custom": 3.0}


# --- docker ------------------------------------------------------------------------------------------------

def test_docker_train_command(tmp_path):
    root = tmp_path / "wmt-job-t1"
    assert docker.docker_train_command("img:1", root, gpus=False) == [
        "docker", "run", "--rm", "--name", "wmt-job-t1", "-v", f"{root}:/opt/ml", "--shm-size", "1g", "img:1", "train"]
    assert docker.docker_train_command("img:1", root, gpus=True, name="job", user="1000:1000",
                                       env={"TRAINING_JOB_NAME": "job", "HOME": "/tmp"}) == [
        "docker", "run", "--rm", "--name", "job", "-v", f"{root}:/opt/ml", "--gpus", "all", "--shm-size", "1g",
        "--user", "1000:1000", "-e", "HOME=/tmp", "-e", "TRAINING_JOB_NAME=job", "img:1", "train"]
    relative = docker.docker_train_command("img", Path("rel/job"), gpus=False)
    assert relative[relative.index("-v") + 1] == f"{Path('rel/job').resolve()}:/opt/ml"  # docker needs absolute


def test_the_requests_environment_reaches_the_container_on_both_backends(tmp_path, monkeypatch):
    """SageMaker sets a training job's Environment in its container; so do the local backends (a warm
    start's parent URI travels that way)."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no docker here: removing an old container is a no-op
    env = {"SEQ2SEQ_PARENT_MODEL_URI": "s3://b/runs/1/model.tar.gz"}
    [host] = training._hosts("docker", "job-t1", tmp_path / "job-t1", 1, "img:1", False, env)
    cmd = host.cmd
    assert host.docker_name == "job-t1"
    assert cmd[cmd.index("SEQ2SEQ_PARENT_MODEL_URI=s3://b/runs/1/model.tar.gz") - 1] == "-e"
    assert "TRAINING_JOB_NAME=job-t1" in cmd and "--network" not in cmd
    [host] = training._hosts("local", "job-t1", tmp_path / "job-t1", 1, None, False, env)
    assert host.docker_name is None and host.env["SEQ2SEQ_PARENT_MODEL_URI"] == "s3://b/runs/1/model.tar.gz"
    assert host.env["TRAINING_JOB_NAME"] == "job-t1" and host.root == tmp_path / "job-t1"
    assert "SEQ2SEQ_HOST_ADDRESSES" not in host.env


def test_several_instances_get_a_root_a_name_and_a_rendezvous_each(tmp_path, monkeypatch):
    """InstanceCount = 3: three SageMaker roots under the job's, algo-1..3; the local backend's processes
    find each other on 127.0.0.1 at one free port (no DNS knows algo-N here) and train on the CPU; the
    docker backend's containers are named per host, on the job's network, reachable by host name."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    hosts = training._hosts("local", "job-t1", tmp_path / "job-t1", 3, None, True, {})
    assert [h.name for h in hosts] == ["algo-1", "algo-2", "algo-3"] == [h.label for h in hosts]
    assert [h.root for h in hosts] == [tmp_path / "job-t1" / f"algo-{i}" for i in (1, 2, 3)]
    assert [h.env["SAGEMAKER_BASE_DIR"] for h in hosts] == [str(h.root) for h in hosts]
    assert json.loads(hosts[0].env["SEQ2SEQ_HOST_ADDRESSES"]) == {f"algo-{i}": "127.0.0.1" for i in (1, 2, 3)}
    assert len({h.env["SEQ2SEQ_MASTER_PORT"] for h in hosts}) == 1 and hosts[0].env["CUDA_VISIBLE_DEVICES"] == ""
    hosts = training._hosts("docker", "job-t1", tmp_path / "job-t1", 2, "img:1", True, {})
    for i, h in enumerate(hosts, 1):
        assert h.docker_name == f"job-t1-algo-{i}"
        assert h.cmd == docker.docker_train_command("img:1", tmp_path / "job-t1" / f"algo-{i}", False,
                                                    name=f"job-t1-algo-{i}", user=f"{os.getuid()}:{os.getgid()}",
                                                    env={"TRAINING_JOB_NAME": "job-t1", "HOME": "/tmp"},
                                                    network="job-t1", hostname=f"algo-{i}")
        assert h.cmd[h.cmd.index("--network-alias") + 1] == f"algo-{i}" and "--gpus" not in h.cmd
    assert training.resource_config("algo-2", ["algo-1", "algo-2"], "lo") == {
        "current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "lo"}


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(0o755)
    return path


def test_docker_available_without_a_docker_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DockerUnavailableError) as e:
        docker.docker_available()
    assert str(e.value) == ("docker backend: no Docker engine answers (`docker info` failed: no `docker` command on "
                            "PATH); use backend=local or start Docker")


def test_docker_available_when_the_engine_does_not_answer(tmp_path, monkeypatch):
    fake_command(tmp_path / "bin", "docker", "sys.stderr.write('Cannot connect to the Docker daemon at "
                 "unix:///var/run/docker.sock. Is the docker daemon running?\\n'); sys.exit(1)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DockerUnavailableError, match=r"^docker backend: no Docker engine answers \(`docker info` "
                       r"failed: Cannot connect to the Docker daemon at .*\); use backend=local or start Docker$"):
        docker.docker_available()
    # run_training_job asks before it touches anything (after looking for a stored result)
    cfg = config(output_uri=str(tmp_path / "out"))
    with pytest.raises(DockerUnavailableError):
        training.run_training_job(cfg, backend="docker", workdir=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()


def test_docker_available_times_out(tmp_path, monkeypatch):
    fake_command(tmp_path / "bin", "docker", "import time; time.sleep(30)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DockerUnavailableError, match=r"no answer within 1s"):
        docker.docker_available(timeout_s=1)


def test_docker_available_returns_the_engine_version(tmp_path, monkeypatch):
    fake_command(tmp_path / "bin", "docker", "assert sys.argv[1:] == ['info', '--format', '{{.ServerVersion}}']; "
                 "print('27.3.1')")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert docker.docker_available() == "27.3.1"


def test_gpu_detection_by_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert docker.nvidia_gpus_available() is False
    fake_command(tmp_path / "bin", "nvidia-smi", "print('GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)')")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert docker.nvidia_gpus_available() is True
    fake_command(tmp_path / "bin2", "nvidia-smi", "sys.stderr.write('NVIDIA-SMI has failed\\n'); sys.exit(9)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin2"))
    assert docker.nvidia_gpus_available() is False


# --- the local backends' request checks ------------------------------------------------------------------

def test_a_malformed_request_is_a_value_error_listing_every_problem(tmp_path):
    cfg = config()
    cfg["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"
    cfg["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataType"] = "ManifestFile"
    cfg["InputDataConfig"][1]["CompressionType"] = "Gzip"
    cfg["HyperParameters"]["batch_size"] = 16
    del cfg["OutputDataConfig"]
    with pytest.raises(ValueError) as e:
        training.run_training_job(cfg, workdir=tmp_path)
    message = str(e.value)
    for part in ["unsupported TrainingInputMode 'Pipe'", "channel 'train': unsupported S3DataType='ManifestFile'",
                 "channel 'validation': unsupported CompressionType='Gzip'", "OutputDataConfig.S3OutputPath is missing",
                 "HyperParameters must map strings to strings"]:
        assert part in message, (part, message)
    assert not any(tmp_path.iterdir())


def test_other_malformed_requests(tmp_path):
    for mutate, expected in [
        (lambda c: c.pop("InputDataConfig"), "InputDataConfig must be a non-empty list"),
        (lambda c: c.update(TrainingJobName="bad_name"), "'bad_name' is not valid"),
        (lambda c: c["StoppingCondition"].update(MaxRuntimeInSeconds=0), "MaxRuntimeInSeconds must be a positive"),
        (lambda c: c.update(CheckpointConfig={"S3Uri": "s3://b/c", "LocalPath": "/data/ckpt"}), "map only"),
        (lambda c: c["InputDataConfig"].append(c["InputDataConfig"][0]), "channel 'train' appears twice"),
        (lambda c: c.update(Environment={"1BAD": "x"}), "Environment must map variable names"),
        (lambda c: c.update(Environment={"GOOD": 1}), "Environment must map variable names"),
    ]:
        cfg = config()
        mutate(cfg)
        with pytest.raises(ValueError, match=expected):
            training.run_training_job(cfg, workdir=tmp_path)
    with pytest.raises(ValueError, match="backend must be one of local, docker"):
        training.run_training_job(config(), backend="sagemaker", workdir=tmp_path)


def test_check_sagemaker_request_wants_s3_everywhere():
    requests.check_sagemaker_request(config(checkpoint_uri="s3://b/ckpt/"))
    cfg = config(channels={**CHANNELS, "vocab": "/data/vocab"}, output_uri="file:///tmp/out")
    with pytest.raises(ValueError, match=r"channel vocab: /data/vocab; OutputDataConfig.S3OutputPath: file:///tmp/out"):
        requests.check_sagemaker_request(cfg)


def test_the_module_imports_neither_torch_nor_airflow():
    code = ("import sys, pipeline_tasks.jobs.local.training; "
            "bad = [m for m in ('torch', 'airflow') if m in sys.modules]; sys.exit(str(bad) if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=process.REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(process.REPO_ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_the_train_channels_distribution_is_the_callers_and_the_others_stay_replicated():
    cfg = requests.training_job_config(job_name="job", image_uri="img", role_arn="arn:aws:iam::1:role/r",
                                       channels={"train": "s3://b/t", "validation": "s3://b/v", "vocab": "s3://b/w"},
                                       output_uri="s3://b/o", hyperparameters={}, instance_count=2,
                                       train_distribution="ShardedByS3Key")
    kinds = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
             for c in cfg["InputDataConfig"]}
    assert kinds == {"train": "ShardedByS3Key", "validation": "FullyReplicated", "vocab": "FullyReplicated"}
    assert cfg["ResourceConfig"]["InstanceCount"] == 2
    requests.check_training_request(cfg)  # the local backends run it
    with pytest.raises(ValueError, match="train_distribution must be FullyReplicated or ShardedByS3Key, got 'Shard'"):
        requests.training_job_config(job_name="job", image_uri="img", role_arn="r", channels={}, output_uri="o",
                                     hyperparameters={}, train_distribution="Shard")
    cfg["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] = "Replicated"
    with pytest.raises(ValueError, match="channel 'train': S3DataDistributionType must be FullyReplicated or "
                                         "ShardedByS3Key, got 'Replicated'"):
        requests.check_training_request(cfg)
