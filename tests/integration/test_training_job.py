"""`run_training_job`: the local emulation of a SageMaker training job, executing the CreateTrainingJob
request built by `training_job_config` (docs/ARCHITECTURE.md §5).

The real ``container/train`` trains tiny copy-task models from channels given as local paths and as
S3 prefixes on moto: the artifacts must land where SageMaker puts them, in SageMaker's layout, with
the metrics, checkpoints synced both ways (a new job resumes) and a stored result returned without
training again. Stand-in ``train`` and ``docker`` commands pin the process mechanics torch would make
slow or flaky to test: MaxRuntimeInSeconds (SIGTERM, then SIGKILL), exit statuses, the config files
and environment the container sees, and the docker backend's command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pipeline_tasks import storage
from pipeline_tasks.jobs.local.docker import docker_train_command
from pipeline_tasks.jobs.local.training import RESOURCE_CONFIG, TRAIN_COMMAND_ENV, run_training_job
from pipeline_tasks.jobs.requests import training_job_config
from tests.conftest import LogLines
from tests.models import TINY_RNN
from tests.system.copy_task import make_sagemaker_tree

CHANNEL_NAMES = ("train", "validation", "vocab")
HYPERPARAMETERS = {**TINY_RNN, "max_num_batches": "100"}


@pytest.fixture(autouse=True)
def one_thread_training(monkeypatch):
    """The training subprocess inherits OMP_NUM_THREADS: one thread is fastest for tiny models here."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def channels_dir(tmp_path_factory) -> Path:
    """train/validation/vocab of the copy task, as a data-prep step leaves them."""
    root = make_sagemaker_tree(tmp_path_factory.mktemp("copy-task"), {}, n_train=2000, n_val=100)
    return root / "input" / "data"


def job_config(name: str, channels: dict[str, str], out: str, ckpt: str | None = None, **kw) -> dict:
    return training_job_config(job_name=name, image_uri="wmt-seq2seq:test", role_arn="arn:aws:iam::1:role/r",
                               channels=channels, output_uri=out, checkpoint_uri=ckpt,
                               hyperparameters=kw.pop("hyperparameters", HYPERPARAMETERS), **kw)


def tar_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def metric(result: dict, name: str) -> float:
    [value] = [m["Value"] for m in result["FinalMetricDataList"] if m["MetricName"] == name]
    return value


def logged_values(lines: list[str], name: str) -> list[float]:
    prefix = f"[train] {name}="
    return [float(line[len(prefix):]) for line in lines if line.startswith(prefix)]


def fake_train(monkeypatch, tmp_path: Path, body: str) -> None:
    """A stand-in for container/train (same contract: $SAGEMAKER_BASE_DIR, exit status, failure file)."""
    script = tmp_path / "fake_train.py"
    script.write_text("import os, signal, sys, time\nfrom pathlib import Path\n"
                      "root = Path(os.environ['SAGEMAKER_BASE_DIR'])\n" + body)
    monkeypatch.setenv(TRAIN_COMMAND_ENV, f"{sys.executable} {script}")


# --- the real container/train, local paths ------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_job(tmp_path_factory, channels_dir):
    """One completed job on local channels: plain paths and a file:// URI, as the embedded default uses."""
    tmp = tmp_path_factory.mktemp("local-job")
    channels = {"train": str(channels_dir / "train"), "validation": (channels_dir / "validation").as_uri(),
                "vocab": str(channels_dir / "vocab")}
    cfg = job_config("wmt-local-20261121-t1", channels, str(tmp / "model"), str(tmp / "checkpoints"))
    handler = LogLines()
    logger = logging.getLogger("test.training_job.local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        started = time.monotonic()
        result = run_training_job(cfg, workdir=tmp / "jobs", log=logger)
        seconds = time.monotonic() - started
    logger.removeHandler(handler)
    return {"config": cfg, "result": result, "tmp": tmp, "lines": handler.lines, "seconds": seconds}


def test_local_job_completes_with_the_model_where_sagemaker_puts_it(local_job):
    result, tmp, cfg = local_job["result"], local_job["tmp"], local_job["config"]
    name = cfg["TrainingJobName"]
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    assert result["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in result["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    archive = tmp / "model" / name / "output" / "model.tar.gz"
    assert result["ModelArtifacts"] == {"S3ModelArtifacts": str(archive)}
    assert result["HyperParameters"] == HYPERPARAMETERS
    assert result["TrainingStartTime"] <= result["TrainingEndTime"]
    members = tar_members(archive)
    # the model directory's files at the archive's root, as SageMaker packs /opt/ml/model
    assert {"params.pt", "config.json", "hyperparameters.json", "vocab.src.json", "vocab.trg.json",
            "metrics.json"} <= set(members)
    assert all("/" not in n and not n.startswith(".") for n in members)
    assert json.loads(members["metrics.json"])["num_updates"] == 100
    assert json.loads(members["vocab.src.json"])["a"] == 4
    assert not Path(result["Backend"]["Root"]).exists()  # a successful job leaves no local root behind


def test_the_model_archive_loads_as_a_model(local_job, tmp_path):
    from model.archive import extract_model_archive
    from model.checkpoint import load_model

    archive = local_job["result"]["ModelArtifacts"]["S3ModelArtifacts"]
    loaded = load_model(extract_model_archive(archive, tmp_path / "m"))
    assert loaded.hp.rnn_num_hidden == 64 and loaded.hp.max_num_batches == 100
    assert loaded.source_tokens[4:] == list("abcdefghijklmnop")


def test_final_metrics_are_the_last_logged_values(local_job):
    result, lines = local_job["result"], local_job["lines"]
    assert any(line.startswith("[train] ") and "training done" in line for line in lines), lines[-10:]
    for name in ("validation:perplexity", "validation:accuracy", "train:loss"):
        values = logged_values(lines, name)
        assert values, name
        assert metric(result, name) == values[-1]
    assert 1.0 <= metric(result, "validation:perplexity") < 20  # 100 updates learn the copy task well on the way
    stamps = [m["Timestamp"] for m in result["FinalMetricDataList"]]
    assert all(result["TrainingStartTime"] <= s <= result["TrainingEndTime"] for s in stamps)


def test_checkpoints_are_synced_to_the_checkpoint_uri(local_job):
    ckpt = local_job["tmp"] / "checkpoints" / "checkpoint.pt"
    assert ckpt.is_file() and ckpt.stat().st_size > 10_000


def test_a_rerun_returns_the_stored_result_without_training(local_job, tmp_path, monkeypatch):
    marker = tmp_path / "trained"
    fake_train(monkeypatch, tmp_path, f"Path({str(marker)!r}).touch()\nsys.exit(1)\n")
    started = time.monotonic()
    again = run_training_job(local_job["config"], workdir=local_job["tmp"] / "jobs")
    assert again == local_job["result"]
    assert not marker.exists()
    assert time.monotonic() - started < local_job["seconds"] / 2
    stored = local_job["tmp"] / "model" / local_job["config"]["TrainingJobName"] / "output" / "describe.json"
    assert json.loads(stored.read_text()) == local_job["result"]


def test_the_same_name_for_another_request_is_refused(local_job, tmp_path):
    cfg = json.loads(json.dumps(local_job["config"]))
    cfg["HyperParameters"]["max_num_batches"] = "200"
    with pytest.raises(ValueError, match="already completed for a different request"):
        run_training_job(cfg, workdir=tmp_path)


def test_a_new_job_resumes_from_the_synced_checkpoint(local_job, channels_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline_tasks.jobs.local.training")
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(local_job["tmp"] / "checkpoints", ckpt)  # leave the module's copy as it is
    channels = {c: str(channels_dir / c) for c in CHANNEL_NAMES}
    cfg = job_config("wmt-local-20261121-t2", channels, str(tmp_path / "model"), str(ckpt),
                     hyperparameters={**HYPERPARAMETERS, "max_num_batches": "120"})
    result = run_training_job(cfg, workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    messages = [r.getMessage() for r in caplog.records if r.name == "pipeline_tasks.jobs.local.training"]
    assert any("checkpoints: 1 object(s)" in m for m in messages)
    # the training process's own log lines, as an Airflow task log shows them
    assert any(m.startswith("[train] ") and "resumed from" in m and "100 updates done" in m for m in messages)
    assert any(m.startswith("[train] validation:perplexity=") for m in messages)
    summary = json.loads(tar_members(Path(result["ModelArtifacts"]["S3ModelArtifacts"]))["metrics.json"])
    assert summary["num_updates"] == 120


def test_a_bad_hyperparameter_fails_the_job_naming_it(channels_dir, tmp_path):
    channels = {c: str(channels_dir / c) for c in CHANNEL_NAMES}
    cfg = job_config("wmt-bad-hp", channels, str(tmp_path / "model"))
    cfg["HyperParameters"]["rnn_cell_type"] = "lstmm"  # past the config-time check, as a hand-edited request
    result = run_training_job(cfg, workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Failed" and result["SecondaryStatus"] == "Failed"
    assert result["FailureReason"].startswith("AlgorithmError: HyperparameterError: hyperparameter "
                                              'rnn_cell_type="lstmm": must be ')
    assert "ModelArtifacts" not in result
    assert storage.list_files(str(tmp_path / "model")) == {}
    root = Path(result["Backend"]["Root"])
    assert (root / "output" / "failure").is_file()        # kept for inspection
    assert not (root / "input" / "data").exists()          # but not the copy of the data


def test_an_empty_channel_fails_the_job_naming_it(channels_dir, tmp_path, monkeypatch):
    fake_train(monkeypatch, tmp_path, "sys.exit(5)\n")
    (tmp_path / "empty").mkdir()
    channels = {"train": str(channels_dir / "train"), "validation": str(tmp_path / "empty"),
                "vocab": str(channels_dir / "vocab")}
    result = run_training_job(job_config("wmt-empty", channels, str(tmp_path / "model")), workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Failed"
    assert result["FailureReason"] == (
        f"ClientError: channel 'validation': no objects found under S3 URL \"{tmp_path / 'empty'}\" given in input "
        "data source; check that the prefix exists and holds the channel's files")
    assert [t["Status"] for t in result["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Failed"]
    assert storage.list_files(str(tmp_path / "model")) == {}


# --- S3 on moto -----------------------------------------------------------------------------------------------

def upload_channels(channels_dir: Path, prefix: str) -> dict[str, str]:
    out = {}
    for c in CHANNEL_NAMES:
        for f in sorted((channels_dir / c).iterdir()):
            storage.put_file(f, storage.join(prefix, c, f.name))
        out[c] = storage.join(prefix, c) + "/"
    return out


def test_s3_job_completes_and_a_rerun_is_served_from_s3(s3, bucket, channels_dir, tmp_path, monkeypatch):
    channels = upload_channels(channels_dir, f"s3://{bucket}/run1/channels")
    cfg = job_config("wmt-s3-20261121-t1", channels, f"s3://{bucket}/run1/model",
                     f"s3://{bucket}/run1/checkpoints/", use_spot=True)
    result = run_training_job(cfg, workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    key = "run1/model/wmt-s3-20261121-t1/output/model.tar.gz"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/{key}"
    s3.download_file(bucket, key, str(tmp_path / "model.tar.gz"))
    members = tar_members(tmp_path / "model.tar.gz")
    assert {"params.pt", "config.json", "vocab.src.json", "vocab.trg.json"} <= set(members)
    assert metric(result, "validation:perplexity") > 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="run1/")["Contents"]}
    assert {key, "run1/model/wmt-s3-20261121-t1/output/describe.json", "run1/checkpoints/checkpoint.pt"} <= keys

    fake_train(monkeypatch, tmp_path, "sys.exit(1)\n")  # training again would fail
    assert run_training_job(cfg, workdir=tmp_path / "jobs") == result


def test_s3_channel_without_objects_fails_naming_it(s3, bucket, channels_dir, tmp_path, monkeypatch):
    fake_train(monkeypatch, tmp_path, "sys.exit(5)\n")
    channels = upload_channels(channels_dir, f"s3://{bucket}/run2/channels")
    channels["vocab"] = f"s3://{bucket}/run2/nothing-here/"
    result = run_training_job(job_config("wmt-s3-empty", channels, f"s3://{bucket}/run2/model"),
                              workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Failed"
    assert result["FailureReason"].startswith(
        f"ClientError: channel 'vocab': no objects found under S3 URL \"s3://{bucket}/run2/nothing-here/\"")
    channels["vocab"] = "s3://no-such-bucket-here/vocab/"
    result = run_training_job(job_config("wmt-s3-nobucket", channels, f"s3://{bucket}/run2/model"),
                              workdir=tmp_path / "jobs")
    assert result["FailureReason"].startswith("ClientError: channel 'vocab': cannot fetch "
                                              "\"s3://no-such-bucket-here/vocab/\": ")
    assert "NoSuchBucket" in result["FailureReason"]


# --- the process mechanics, with a stand-in train ----------------------------------------------------------

@pytest.fixture
def local_channels(channels_dir) -> dict[str, str]:
    return {c: str(channels_dir / c) for c in CHANNEL_NAMES}


def test_the_container_sees_sagemakers_files_and_environment(local_channels, tmp_path, monkeypatch):
    fake_train(monkeypatch, tmp_path, """
import json, shutil
for name in ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"):
    shutil.copy(root / "input/config" / name, root / "model" / name)
files = sorted(str(p.relative_to(root / "input/data")) for p in (root / "input/data").rglob("*") if p.is_file())
env = {k: os.environ.get(k) for k in ("TRAINING_JOB_NAME", "OMP_NUM_THREADS", "PYTHONPATH")}
(root / "model/seen.json").write_text(json.dumps({"files": files, "env": env, "cwd": os.getcwd()}))
print("validation:bleu=12.5", flush=True)
""")
    cfg = job_config("wmt-files", local_channels, str(tmp_path / "model"), max_runtime_s=600)
    result = run_training_job(cfg, workdir=tmp_path / "jobs", keep_root=True)
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    members = tar_members(Path(result["ModelArtifacts"]["S3ModelArtifacts"]))
    assert json.loads(members["hyperparameters.json"]) == HYPERPARAMETERS
    assert json.loads(members["resourceconfig.json"]) == RESOURCE_CONFIG
    recordio = {"ContentType": "application/x-recordio-protobuf", "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    assert json.loads(members["inputdataconfig.json"]) == {
        "train": recordio, "validation": recordio, "vocab": {**recordio, "ContentType": "application/json"}}
    seen = json.loads(members["seen.json"])
    assert seen["files"] == ["train/train.rec", "validation/val.rec", "vocab/vocab.src.json", "vocab/vocab.trg.json"]
    assert seen["env"]["TRAINING_JOB_NAME"] == "wmt-files" and seen["env"]["OMP_NUM_THREADS"] == "1"
    assert str(Path(__file__).resolve().parents[2]) in seen["env"]["PYTHONPATH"].split(":")
    assert seen["cwd"] == result["Backend"]["Root"]
    assert result["FinalMetricDataList"][0]["MetricName"] == "validation:bleu"
    assert result["FinalMetricDataList"][0]["Value"] == 12.5
    assert Path(result["Backend"]["Root"]).is_dir()  # keep_root


def test_max_runtime_sends_sigterm_and_the_job_stops_with_its_model(local_channels, tmp_path, monkeypatch):
    fake_train(monkeypatch, tmp_path, """
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
(root / "checkpoints/old.txt").read_text()  # the checkpoint fetched from CheckpointConfig.S3Uri
step = 0
while not stop:
    step += 1
    print(f"train:loss={10 / step}", flush=True)
    time.sleep(0.05)
(root / "checkpoints/checkpoint.txt").write_text(str(step))
(root / "model/params.pt").write_text("weights at step %d" % step)
print("saved on SIGTERM", file=sys.stderr, flush=True)
""")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "old.txt").write_text("from an earlier try")
    cfg = job_config("wmt-timeout", local_channels, str(tmp_path / "model"), str(ckpt), max_runtime_s=1)
    started = time.monotonic()
    result = run_training_job(cfg, workdir=tmp_path / "jobs", stop_grace_s=30)
    assert time.monotonic() - started < 15
    assert result["TrainingJobStatus"] == "Stopped" and result["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert "FailureReason" not in result
    steps = int((ckpt / "checkpoint.txt").read_text())
    assert steps >= 5
    assert tar_members(Path(result["ModelArtifacts"]["S3ModelArtifacts"])) == {
        "params.pt": f"weights at step {steps}".encode()}
    assert metric(result, "train:loss") == pytest.approx(10 / steps, rel=1e-5)


def test_a_train_that_ignores_sigterm_is_killed_after_the_grace_period(local_channels, tmp_path, monkeypatch):
    fake_train(monkeypatch, tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('busy', flush=True)\n"
                                      "time.sleep(60)\n")
    cfg = job_config("wmt-stuck", local_channels, str(tmp_path / "model"), max_runtime_s=1)
    started = time.monotonic()
    result = run_training_job(cfg, workdir=tmp_path / "jobs", stop_grace_s=0.5)
    assert time.monotonic() - started < 10
    assert result["TrainingJobStatus"] == "Stopped" and result["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert "ModelArtifacts" not in result and storage.list_files(str(tmp_path / "model")) == {}


@pytest.mark.parametrize(("body", "reason"), [
    ("print('boom happened', file=sys.stderr)\nsys.exit(3)\n",
     "AlgorithmError: train exited with status 3; last output: boom happened"),
    ("os.kill(os.getpid(), signal.SIGKILL)\n", "AlgorithmError: train exited with signal SIGKILL"),
    ("(root / 'output/failure').write_text('ChannelError: ' + 'x' * 2000)\nsys.exit(1)\n",
     "AlgorithmError: ChannelError: " + "x" * (1024 - len("ChannelError: "))),
    ("print('done')\n", "AlgorithmError: train exited with status 0 but wrote nothing to /opt/ml/model"),
])
def test_failure_reasons(local_channels, tmp_path, monkeypatch, body, reason):
    fake_train(monkeypatch, tmp_path, body)
    result = run_training_job(job_config("wmt-fails", local_channels, str(tmp_path / "model")),
                              workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Failed"
    assert result["FailureReason"] == reason
    assert storage.list_files(str(tmp_path / "model")) == {}


def fake_docker(tmp_path: Path, monkeypatch, run_body: str) -> Path:
    """A stand-in `docker` (and an `nvidia-smi` listing one GPU) first on PATH: it records every call in the
    returned JSON Lines file, answers `info` with a version, and runs `run_body` (indented under an
    ``elif``, with json, sys and Path imported) for `docker run`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls.jsonl"
    (bin_dir / "docker").write_text(f"""#!{sys.executable}
import json, sys
from pathlib import Path
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "info":
    print("27.3.1")
elif sys.argv[1] == "run":{run_body}""")
    (bin_dir / "docker").chmod(0o755)
    (bin_dir / "nvidia-smi").write_text(f"#!{sys.executable}\nprint('GPU 0: NVIDIA H100 (UUID: GPU-1)')\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return calls


def test_docker_backend_runs_the_image_on_the_job_root(local_channels, tmp_path, monkeypatch):
    calls = fake_docker(tmp_path, monkeypatch, """
    mount = sys.argv[sys.argv.index("-v") + 1]
    root = Path(mount.rsplit(":", 1)[0])
    assert mount.endswith(":/opt/ml") and (root / "input/config/hyperparameters.json").is_file()
    (root / "model/params.pt").write_text("from the container")
    print("validation:perplexity=4.25")
""")
    cfg = job_config("wmt-docker", local_channels, str(tmp_path / "model"))
    result = run_training_job(cfg, backend="docker", workdir=tmp_path / "jobs")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    assert metric(result, "validation:perplexity") == 4.25
    assert tar_members(Path(result["ModelArtifacts"]["S3ModelArtifacts"])) == {"params.pt": b"from the container"}
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    root = (tmp_path / "jobs" / "wmt-docker").resolve()
    expected_run = docker_train_command("wmt-seq2seq:test", root, True, name="wmt-docker",
                                        user=f"{os.getuid()}:{os.getgid()}",
                                        env={"TRAINING_JOB_NAME": "wmt-docker", "HOME": "/tmp"})[1:]
    assert runs == [["info", "--format", "{{.ServerVersion}}"], ["rm", "-f", "wmt-docker"], expected_run]
    assert "--gpus" in expected_run and expected_run[-2:] == ["wmt-seq2seq:test", "train"]


def test_docker_backend_runs_one_container_per_instance_on_the_jobs_network(local_channels, tmp_path, monkeypatch):
    """InstanceCount = 2 on the docker backend: a network of the job's own, one container per host named after
    the job and the host, reachable there by its host name, each on its own root with its own
    resourceconfig.json; the network is removed afterwards. No GPUs: the instances share this machine."""
    calls = fake_docker(tmp_path, monkeypatch, """
    root = Path(sys.argv[sys.argv.index("-v") + 1].rsplit(":", 1)[0])
    config = json.loads((root / "input/config/resourceconfig.json").read_text())
    assert config["current_host"] == sys.argv[sys.argv.index("--hostname") + 1]
    if config["current_host"] == config["hosts"][0]:
        (root / "model/params.pt").write_text("from the leader")
        print("validation:perplexity=4.25")
""")
    cfg = job_config("wmt-docker2", local_channels, str(tmp_path / "model"), instance_count=2)
    result = run_training_job(cfg, backend="docker", workdir=tmp_path / "jobs", keep_root=True)
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    assert tar_members(Path(result["ModelArtifacts"]["S3ModelArtifacts"])) == {"params.pt": b"from the leader"}
    calls_made = [json.loads(line) for line in calls.read_text().splitlines()]
    job = (tmp_path / "jobs" / "wmt-docker2").resolve()
    user = f"{os.getuid()}:{os.getgid()}"
    runs = [docker_train_command("wmt-seq2seq:test", job / host, False, name=f"wmt-docker2-{host}", user=user,
                                 env={"TRAINING_JOB_NAME": "wmt-docker2", "HOME": "/tmp"}, network="wmt-docker2",
                                 hostname=host)[1:] for host in ("algo-1", "algo-2")]
    assert calls_made[:3] == [["info", "--format", "{{.ServerVersion}}"], ["rm", "-f", "wmt-docker2-algo-1"],
                              ["rm", "-f", "wmt-docker2-algo-2"]]
    assert calls_made[3:5] == [["network", "rm", "wmt-docker2"], ["network", "create", "wmt-docker2"]]
    assert sorted(calls_made[5:7]) == sorted(runs)  # started together
    assert calls_made[7:] == [["network", "rm", "wmt-docker2"]]
    for host in ("algo-1", "algo-2"):
        config = json.loads((job / host / "input/config/resourceconfig.json").read_text())
        assert config == {"current_host": host, "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
    assert "--gpus" not in runs[0] and runs[0][runs[0].index("--network-alias") + 1] == "algo-1"
