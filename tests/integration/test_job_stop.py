"""Nothing left running: a local training job whose Airflow task is stopped (marked failed, cleared, timed
out) is stopped as SageMaker stops a job — SIGTERM, a grace period for its checkpoint, SIGKILL — and its
checkpoints reach the checkpoint URI, so that the next try resumes.

The task process here is a stand-in for Airflow's task runner that does what it does to a running
``@task`` (airflow/sdk/execution_time/task_runner.py and supervisor.py): a SIGTERM handler that calls
the operator's ``on_kill`` (a no-op for a ``@task``), then SIGKILL of the task process 5 s later.
The training job is the real ``container/train`` on the tiny copy task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from pipeline_tasks.jobs.local.process import reap
from pipeline_tasks.jobs.names import JOB_PREFIX_KEY, job_name
from pipeline_tasks.jobs.requests import training_job_config
from pipeline_tasks.pipeline import train_step
from tests.conftest import ROOT
from tests.models import TINY_RNN
from tests.system.copy_task import make_sagemaker_tree

RUN_ID = "manual__2026-12-01T10:00:00+00:00"
TASK_RUNNER = """
import json, logging, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from pipeline_tasks.pipeline import train_step

def _on_term(signum, frame):  # Airflow's task runner: call on_kill(), which a @task does not have
    print("on_kill called", file=sys.stderr, flush=True)

signal.signal(signal.SIGTERM, _on_term)
with open(sys.argv[1]) as f:
    request = json.load(f)
if len(sys.argv) > 4:  # execution_timeout: the task runner's own timeout context (SIGALRM)
    from airflow.sdk.execution_time.timeout import timeout
    with timeout(int(sys.argv[4])):
        train_step(request, "local", sys.argv[2], int(sys.argv[3]))
else:
    train_step(request, "local", sys.argv[2], int(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, str]:
    data = make_sagemaker_tree(tmp_path_factory.mktemp("copy"), {}, n_train=2000, n_val=50) / "input" / "data"
    return {c: str(data / c) for c in ("train", "validation", "vocab")}


def request(tmp_path: Path, channels: dict[str, str], max_num_batches: int) -> dict:
    config = training_job_config(
        job_name="placeholder", image_uri="wmt-seq2seq:test", role_arn="arn:aws:iam::1:role/r", channels=channels,
        output_uri=str(tmp_path / "model"), checkpoint_uri=str(tmp_path / "model" / "checkpoints"),
        hyperparameters={**TINY_RNN, "max_num_batches": str(max_num_batches),
                         "checkpoint_frequency_num_batches": "5", "checkpoint_threshold": "100000",
                         "optimized_metric": "perplexity"})
    return {**config, JOB_PREFIX_KEY: "stop-test"}


def start_task(tmp_path: Path, req: dict, try_number: int = 1, timeout_s: int | None = None
               ) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "request.json").write_text(json.dumps(req))
    log = tmp_path / f"task-{try_number}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "SEQ2SEQ_LOCAL_JOBS_DIR": str(tmp_path / "jobs"), "SEQ2SEQ_CHECKPOINT_SYNC_S": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", TASK_RUNNER, str(tmp_path / "request.json"), RUN_ID,
                                 str(try_number), *([str(timeout_s)] if timeout_s else [])],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, log


def train_pid_after_first_checkpoint(proc: subprocess.Popen, log: Path, tmp_path: Path) -> int:
    job_ckpt = tmp_path / "jobs" / job_name("stop-test", RUN_ID, 1) / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    pid = None
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        if pid is None and "train started: pid " in text:
            pid = int(text.split("train started: pid ", 1)[1].split()[0])
        if pid is not None and job_ckpt.exists():
            return pid
        time.sleep(0.1)
    raise AssertionError(f"training did not reach its first checkpoint: {log.read_text()[-3000:]}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_stopped_task_stops_its_training_job_and_the_next_try_resumes(tmp_path, channels):
    task, log = start_task(tmp_path, request(tmp_path, channels, 1_000_000))
    pid = train_pid_after_first_checkpoint(task, log, tmp_path)
    task.send_signal(signal.SIGTERM)  # the supervisor: SIGTERM, then SIGKILL after 5 s
    try:
        task.wait(timeout=5)
    except subprocess.TimeoutExpired:
        task.kill()
        task.wait()
    text = log.read_text()
    assert "on_kill called" in text and "stopping train (pid" in text
    assert wait_until(lambda: gone(pid), 60), f"train (pid {pid}) still runs after its task was stopped"
    synced = tmp_path / "model" / "checkpoints" / "checkpoint.pt"
    assert wait_until(synced.exists, 30), "the checkpoint never reached CheckpointConfig.S3Uri"
    state = torch.load(synced, weights_only=True)["state"]
    assert state["num_updates"] >= 5
    # A stopped job is not a completed one: no stored result that a retry would take for the model.
    assert not list((tmp_path / "model").glob("*/output/describe.json"))

    # The next try resumes from the synced checkpoint and trains to its own end.
    wait_until(lambda: torch.load(synced, weights_only=True)["state"]["num_updates"] == state["num_updates"], 5)
    done_at = torch.load(synced, weights_only=True)["state"]["num_updates"]
    os.environ["SEQ2SEQ_LOCAL_JOBS_DIR"] = str(tmp_path / "jobs")
    try:
        result = train_step(request(tmp_path, channels, done_at + 10), "local", RUN_ID, 2)["Training"]
    finally:
        del os.environ["SEQ2SEQ_LOCAL_JOBS_DIR"]
    assert result["TrainingJobStatus"] == "Completed"
    summary = torch.load(synced, weights_only=True)["state"]
    assert summary["num_updates"] == done_at + 10


def test_a_task_killed_outright_takes_its_training_job_with_it(tmp_path, channels):
    """SIGKILL gives the task no chance to act: the kernel's parent-death signal stops train, which
    checkpoints on SIGTERM; the checkpoints synced during training are at the checkpoint URI."""
    task, log = start_task(tmp_path, request(tmp_path, channels, 1_000_000))
    pid = train_pid_after_first_checkpoint(task, log, tmp_path)
    synced = tmp_path / "model" / "checkpoints" / "checkpoint.pt"
    assert wait_until(synced.exists, 30), "checkpoints are not synced while training"
    task.kill()
    task.wait()
    assert wait_until(lambda: gone(pid), 60), f"train (pid {pid}) outlived its killed task"


def test_a_task_that_times_out_stops_its_training_job(tmp_path, channels):
    """execution_timeout: Airflow's timeout raises AirflowTaskTimeout in the task; the job is stopped."""
    task, log = start_task(tmp_path, request(tmp_path, channels, 1_000_000), timeout_s=8)
    pid = train_pid_after_first_checkpoint(task, log, tmp_path)
    assert task.wait(timeout=60) != 0
    text = log.read_text()
    assert "AirflowTaskTimeout" in text and "stopping train (pid" in text
    assert wait_until(lambda: gone(pid), 60), f"train (pid {pid}) outlived its timed-out task"


def test_the_reaper_kills_what_ignores_sigterm_and_stops_a_container(tmp_path, monkeypatch):
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"],
                                start_new_session=True)
    calls = tmp_path / "docker-calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    started = time.monotonic()
    time.sleep(0.2)
    os.killpg(stubborn.pid, signal.SIGTERM)
    reap(stubborn.pid, grace_s=1.0, docker_name="job-x")
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 10
    assert calls.read_text().split("\n")[0] == "stop --time 1 job-x"


TRANSFORM_TASK = """
import json, logging, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from pipeline_tasks.pipeline import transform_step

signal.signal(signal.SIGTERM, lambda signum, frame: print("on_kill called", file=sys.stderr, flush=True))
with open(sys.argv[1]) as f:
    request = json.load(f)
transform_step(request, "manual__2026-12-01T10:00:00+00:00", 1, "local")
"""


def test_a_stopped_transform_task_stops_its_server(tmp_path):
    """The local transform job's container/serve (its gunicorn master and workers) goes with its task."""
    from pipeline_tasks.jobs.requests import transform_job_config
    from pipeline_tasks.transform import TransformConfig
    from tests.models import train_copy_model

    model = train_copy_model(tmp_path / "train")
    source = (tmp_path / "in.jsonl")
    source.write_text("".join(json.dumps({"source": "3 4 5 6 7 8 9 10"}) + "\n" for _ in range(200_000)))
    config = transform_job_config(job_name="placeholder", model_name="placeholder", image_uri="local",
                                  model_data_url=str(model), role_arn="arn:aws:iam::1:role/r",
                                  input_uri=str(source), output_uri=str(tmp_path / "out"),
                                  cfg=TransformConfig(beam_size=1))
    config["Model"]["PrimaryContainer"]["Environment"]["SEQ2SEQ_TORCH_THREADS"] = "1"
    (tmp_path / "request.json").write_text(json.dumps({**config, JOB_PREFIX_KEY: "stop-transform"}))
    log = tmp_path / "task.log"
    with open(log, "w") as out:
        task = subprocess.Popen([sys.executable, "-c", TRANSFORM_TASK, str(tmp_path / "request.json")],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    deadline = time.monotonic() + 120
    while "MaxConcurrentTransforms" not in log.read_text() and time.monotonic() < deadline and task.poll() is None:
        time.sleep(0.2)
    assert "MaxConcurrentTransforms" in log.read_text(), log.read_text()[-3000:]
    servers = [p.pid for p in psutil.Process(task.pid).children(recursive=True)]
    assert servers, "no serve process found"
    task.send_signal(signal.SIGTERM)
    try:
        task.wait(timeout=5)
    except subprocess.TimeoutExpired:
        task.kill()
        task.wait()
    assert "stopping serve (pid" in log.read_text()
    assert wait_until(lambda: all(gone(pid) for pid in servers), 45), \
        f"serve processes still run: {[pid for pid in servers if not gone(pid)]}"
    assert not (tmp_path / "out" / "in.jsonl.out").exists()  # nothing half-written published
