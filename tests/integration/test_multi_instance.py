"""Training jobs of several instances on the local backend: the real ``container/train`` on every host,
each with its own SageMaker root and resourceconfig.json (algo-1, algo-2), meeting at a torch rendezvous
on 127.0.0.1 and training with DDP over gloo (docs/ARCHITECTURE.md §4, §5).

Channels come from the pipeline's own recordio step on real English–German text, the training split
written as shard files, so that ShardedByS3Key hands each host its own files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from model.distributed import parameter_checksum
from pipeline_tasks.channels import VocabConfig, make_channels
from pipeline_tasks.jobs.local.training import run_training_job
from pipeline_tasks.jobs.requests import training_job_config
from tests.conftest import SAMPLE, LogLines, head_lines

HP = {"batch_size": "16", "checkpoint_frequency_num_batches": "10", "rnn_num_hidden": "32", "num_embed_source": "16",
      "num_embed_target": "16", "num_layers_encoder": "1", "num_layers_decoder": "1", "max_seq_len_source": "30",
      "max_seq_len_target": "30", "optimized_metric": "perplexity", "bleu_sample_size": "0",
      "max_num_batches": "20", "checkpoint_threshold": "10"}
CHECKSUM = re.compile(r"^\[(algo-\d)\] .*parameter checksum at update (\d+): ([0-9a-f]{16}) \((algo-\d) rank (\d)\)")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> Path:
    """1,200 training pairs as 3 shard files (so that 2 hosts get uneven shares), 60 validation pairs."""
    tmp = tmp_path_factory.mktemp("channels")
    files = {f"{split}.{lang}": str(head_lines(SAMPLE / f"{split}.{lang}", tmp / f"{split}.{lang}", n))
             for split, n in (("train", 1200), ("val", 60)) for lang in ("en", "de")}
    report = make_channels(files["train.en"], files["train.de"], files["val.en"], files["val.de"], tmp / "channels",
                           VocabConfig(num_words_source=3000, num_words_target=3000), workers=1, shards=3)
    assert report["train"]["records"] == 1200 and report["train"]["shards"] == 3
    return tmp / "channels"


def run_job(channels: Path, tmp: Path, name: str, *, instances: int = 2, distribution: str = "FullyReplicated",
            checkpoint: Path | None = None, hyperparameters: dict | None = None) -> tuple[dict, list[str]]:
    cfg = training_job_config(job_name=name, image_uri="wmt-seq2seq:test", role_arn="arn:aws:iam::1:role/r",
                              channels={c: str(channels / c) for c in ("train", "validation", "vocab")},
                              output_uri=str(tmp / "model"), hyperparameters=hyperparameters or HP,
                              instance_count=instances, train_distribution=distribution,
                              checkpoint_uri=str(checkpoint) if checkpoint else None)
    handler, logger = LogLines(), logging.getLogger(f"test.multi_instance.{name}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = run_training_job(cfg, workdir=tmp / "jobs", log=logger, keep_root=True, stop_grace_s=60)
    finally:
        logger.removeHandler(handler)
    return result, handler.lines


def archive_members(result: dict) -> dict[str, bytes]:
    with tarfile.open(result["ModelArtifacts"]["S3ModelArtifacts"], "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def checksums(lines: list[str]) -> dict[tuple[str, int], dict[int, str]]:
    """(host, rank) -> {update: parameter checksum} from the job log, each host's lines under its prefix."""
    out: dict[tuple[str, int], dict[int, str]] = {}
    for line in lines:
        m = CHECKSUM.match(line)
        if m:
            assert m[1] == m[4], line  # a host's lines carry its own name
            out.setdefault((m[4], int(m[5])), {})[int(m[2])] = m[3]
    return out


def assert_replicas_agree_with_the_model(result: dict, lines: list[str]) -> None:
    """Every rank logged the same parameters at every checkpoint, and the leader's model is the parameters of
    the best checkpoint, as every rank held them."""
    sums = checksums(lines)
    assert set(sums) == {("algo-1", 0), ("algo-2", 1)}, sums
    assert sums[("algo-1", 0)] == sums[("algo-2", 1)] and len(sums[("algo-1", 0)]) >= 2
    members = archive_members(result)
    summary = json.loads(members["metrics.json"])
    best_update = next(h["updates"] for h in summary["history"] if h["checkpoint"] == summary["best_checkpoint"])
    params = torch.load(io.BytesIO(members["params.pt"]), weights_only=True)
    assert parameter_checksum(params) == sums[("algo-2", 1)][best_update]


def test_two_instances_fully_replicated_train_one_model(channels, tmp_path):
    result, lines = run_job(channels, tmp_path, "multi-replicated")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    hosts = result["Backend"]["HostRoots"]
    assert list(hosts) == ["algo-1", "algo-2"]
    for host, root in hosts.items():
        config = json.loads((Path(root) / "input" / "config" / "resourceconfig.json").read_text())
        assert config == {"current_host": host, "hosts": ["algo-1", "algo-2"], "network_interface_name": "lo"}
    assert any(line.startswith("[algo-2] ") and "torchrun on host algo-2 (2 of 2 hosts" in line for line in lines)
    assert any(line.startswith("[algo-1] ") and "2 process(es) on 2 hosts" in line for line in lines)
    # every host got every file of the channel
    assert any("channel train: 3 object(s)" in line and "on each of 2 hosts" in line for line in lines)
    assert_replicas_agree_with_the_model(result, lines)
    summary = json.loads(archive_members(result)["metrics.json"])
    assert summary["num_updates"] == 20 and [h["updates"] for h in summary["history"]] == [10, 20]
    # only the leader writes: the second host's model, checkpoints and output stay empty
    follower = Path(hosts["algo-2"])
    for folder in ("model", "checkpoints", "output"):
        assert not any((follower / folder).iterdir()), folder
    assert (Path(hosts["algo-1"]) / "model" / "params.pt").is_file()
    # metric lines come from the leader alone
    assert all(line.startswith("[algo-1] ") for line in lines if "validation:perplexity=" in line)


def test_two_instances_sharded_by_s3_key_train_on_their_own_files(channels, tmp_path):
    result, lines = run_job(channels, tmp_path, "multi-sharded", distribution="ShardedByS3Key")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    assert result["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    # 3 files over 2 hosts: algo-1 gets files 1 and 3 (800 pairs), algo-2 file 2 (400)
    assert any("channel train: 2 of 3 object(s)" in line and "host 1" in line for line in lines)
    assert any("channel train: 1 of 3 object(s)" in line and "host 2" in line for line in lines)
    loaded = {m[1]: int(m[2]) for line in lines
              if (m := re.match(r"\[(algo-\d)\] .*loaded (\d+) training and 60 validation pairs .* on algo-\d", line))}
    assert loaded == {"algo-1": 800, "algo-2": 400}
    # the validation and vocab channels stay whole on every host
    assert any("channel validation: 1 object(s)" in line and "on each of 2 hosts" in line for line in lines)
    # uneven shares: each rank runs as many updates an epoch as the smaller allows, and nobody waits forever
    epoch = next(line for line in lines if "the ranks' shards give" in line)
    per_rank, runs = re.search(r"give (\d+)/(\d+) batches; each rank runs (\d+)", epoch).groups()[:2], \
        int(re.search(r"each rank runs (\d+)", epoch)[1])
    assert int(per_rank[0]) > int(per_rank[1]) == runs
    assert_replicas_agree_with_the_model(result, lines)
    assert json.loads(archive_members(result)["metrics.json"])["num_updates"] == 20


def host_launchers(job_root: Path) -> dict[str, psutil.Process]:
    """Each host's container/train process (the head of its process group), found by its SageMaker root."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(a).endswith("container/train") for a in proc.info["cmdline"] or []) and \
                    os.getpgid(proc.pid) == proc.pid:
                base = proc.environ().get("SAGEMAKER_BASE_DIR", "")
                if base.startswith(str(job_root)):
                    found[Path(base).name] = proc
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def run_in_thread(target) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def go() -> None:
        box["value"] = target()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killing_one_host_fails_the_job_naming_it(channels, tmp_path):
    long = {**HP, "max_num_batches": "100000", "checkpoint_frequency_num_batches": "5"}
    thread, box = run_in_thread(lambda: run_job(channels, tmp_path, "multi-killed", hyperparameters=long))
    job_root = tmp_path / "jobs" / "multi-killed"
    wait_for(lambda: (job_root / "algo-1" / "checkpoints" / "checkpoint.pt").exists(), 240, "the first checkpoint")
    launchers = host_launchers(job_root)
    assert set(launchers) == {"algo-1", "algo-2"}
    os.killpg(launchers["algo-2"].pid, signal.SIGKILL)  # the instance dies: no failure file, no goodbye
    thread.join(timeout=180)
    assert not thread.is_alive(), "the job did not end after a host died"
    result, _ = box["value"]
    assert result["TrainingJobStatus"] == "Failed"
    reason = result["FailureReason"]
    assert reason.startswith("AlgorithmError: host algo-2: train exited with signal SIGKILL"), reason
    # the leader noticed and said why, naming itself; it is not taken for the cause
    leader_failure = (job_root / "algo-1" / "output" / "failure").read_text()
    assert leader_failure.startswith("algo-1 rank 0: lost contact with another rank"), leader_failure
    assert "then algo-1" in reason
    assert not host_launchers(job_root)  # nothing left running


def test_two_instances_resume_from_the_leaders_checkpoint_after_sigterm_to_every_host(channels, tmp_path):
    """A spot interruption: every host gets SIGTERM; the leader checkpoints, the checkpoint prefix is synced,
    and the next job's hosts all start from it."""
    checkpoint = tmp_path / "checkpoints"
    long = {**HP, "max_num_batches": "100000", "checkpoint_frequency_num_batches": "10"}
    thread, box = run_in_thread(lambda: run_job(channels, tmp_path, "multi-spot-1", checkpoint=checkpoint,
                                                hyperparameters=long))
    job_root = tmp_path / "jobs" / "multi-spot-1"
    wait_for(lambda: (job_root / "algo-1" / "checkpoints" / "checkpoint.pt").exists(), 240, "the first checkpoint")
    launchers = host_launchers(job_root)
    assert set(launchers) == {"algo-1", "algo-2"}
    for proc in launchers.values():
        proc.send_signal(signal.SIGTERM)  # as SageMaker signals each instance's container
    thread.join(timeout=180)
    assert not thread.is_alive()
    first, lines = box["value"]
    assert first["TrainingJobStatus"] == "Completed", first.get("FailureReason")  # every rank checkpointed
    assert sum("SIGTERM received" in line for line in lines) >= 2
    stopped = torch.load(checkpoint / "checkpoint.pt", weights_only=True)["state"]
    assert stopped["stop_reason"] == "" and stopped["num_updates"] >= 10  # unfinished: the next job carries on
    assert not any((job_root / "algo-2" / "checkpoints").iterdir())

    target = stopped["num_updates"] + 20
    result, lines = run_job(channels, tmp_path, "multi-spot-2", checkpoint=checkpoint,
                            hyperparameters={**long, "max_num_batches": str(target)})
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    resumed = [line for line in lines if "resumed from" in line]
    for host in ("algo-1", "algo-2"):
        assert any(line.startswith(f"[{host}] ") and f"{stopped['num_updates']} updates done" in line
                   for line in resumed), (host, resumed)
    assert json.loads(archive_members(result)["metrics.json"])["num_updates"] == target
    sums = checksums(lines)
    assert sums[("algo-1", 0)] == sums[("algo-2", 1)]


def test_the_training_job_command_runs_a_two_instance_request_from_s3(channels, tmp_path, s3, bucket):
    """``python -m pipeline_tasks training-job``: the request as the DAG builds it, channels on S3 (moto), the
    training files sharded over the two hosts; prints the DescribeTrainingJob-shaped result."""
    import subprocess
    import sys

    from pipeline_tasks.upload import upload_channels

    uris = upload_channels(channels, f"s3://{bucket}/channels")["channels"]
    cfg = training_job_config(job_name="multi-cli", image_uri="wmt-seq2seq:test", role_arn="arn:aws:iam::1:role/r",
                              channels=uris, output_uri=f"s3://{bucket}/model", hyperparameters=HP,
                              instance_count=2, train_distribution="ShardedByS3Key")
    request = tmp_path / "request.json"
    request.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "pipeline_tasks", "training-job", "--request", str(request),
           "--workdir", str(tmp_path / "jobs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["TrainingJobStatus"] == "Completed"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/model/multi-cli/output/model.tar.gz"
    assert s3.head_object(Bucket=bucket, Key="model/multi-cli/output/model.tar.gz")["ContentLength"] > 1000
    assert "[algo-2] " in proc.stderr and "2 of 3 object(s)" in proc.stderr
    # a malformed request is one line naming what is wrong, and nothing runs
    cfg["ResourceConfig"]["InstanceCount"] = 0
    request.write_text(json.dumps(cfg))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: malformed CreateTrainingJob request 'multi-cli': ResourceConfig.InstanceCount must be a whole number "
        ">= 1, got 0")
