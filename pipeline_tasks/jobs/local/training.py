"""The local execution of a CreateTrainingJob request: backends ``local`` and ``docker`` (docs/ARCHITECTURE.md §5).

The request is the one pipeline_tasks/jobs/requests.py builds and the ``sagemaker`` backend submits
through the amazon provider's operator; :func:`run_training_job` executes it here, so a DAG run means
the same job whichever backend runs it.

The local execution does on this machine what SageMaker does on a training instance: fetch every
channel's ``S3Uri`` prefix into ``<root>/input/data/<channel>/``, write the three config files, sync
``CheckpointConfig.S3Uri`` into ``<root>/checkpoints`` (and back after the run, whatever its outcome,
so a retried job resumes), run the container's ``train``, stream its output into the Python log and
pick the MetricDefinitions out of it, enforce ``MaxRuntimeInSeconds`` with SIGTERM then SIGKILL, tar
``<root>/model`` to ``<S3OutputPath>/<job>/output/model.tar.gz`` and answer a DescribeTrainingJob-like
dict. An algorithm failure is a ``Failed`` result, never an exception; a malformed request is a
``ValueError``, as the API would reject it. (The file transfers are pipeline_tasks/jobs/local/staging.py's,
the child process's supervision pipeline_tasks/jobs/local/process.py's.)

A successful job also leaves ``describe.json`` beside its ``model.tar.gz`` (written after it): a task
retried after a crash between training and returning gets that stored result instead of training
again. Nothing here imports torch or Airflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from model.constants import HYPERPARAMETERS_FILE, MODEL_ARCHIVE
from pipeline_tasks import storage
from pipeline_tasks.jobs import metrics
from pipeline_tasks.jobs.local import process
from pipeline_tasks.jobs.local.docker import (
    docker_available,
    docker_remove,
    docker_train_command,
    nvidia_gpus_available,
)
from pipeline_tasks.jobs.local.staging import (
    CheckpointSync,
    JobFailed,
    download_checkpoints,
    stage_channels,
    storage_errors,
    sync_checkpoints,
    upload_model,
)
from pipeline_tasks.jobs.requests import check_training_request, request_fingerprint

_LOG = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

TRAIN_COMMAND_ENV = "SEQ2SEQ_TRAIN_COMMAND"   # overrides the local backend's command (tests, wrappers)
JOBS_DIR_ENV = "SEQ2SEQ_LOCAL_JOBS_DIR"       # where local job roots go when no workdir is given
BACKENDS = ("local", "docker")                # "sagemaker" is the amazon provider's operator, not this module

RESOURCE_CONFIG = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
DESCRIBE_FILE = "describe.json"
FAILURE_REASON_CHARS = 1024                   # what SageMaker shows of /opt/ml/output/failure
STOP_GRACE_S = 120.0                          # SageMaker's delay between SIGTERM and the end of the job


def local_train_command() -> list[str]:
    """The container's entrypoint as a plain process (``$SEQ2SEQ_TRAIN_COMMAND`` overrides it)."""
    return process.entrypoint_command("train", TRAIN_COMMAND_ENV)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _write_configs(config: Mapping[str, Any], root: Path) -> None:
    conf = root / "input" / "config"
    conf.mkdir(parents=True, exist_ok=True)
    input_config = {}
    for ch in config["InputDataConfig"]:
        entry = {"ContentType": ch["ContentType"]} if ch.get("ContentType") else {}
        entry.update({"TrainingInputMode": "File",
                      "S3DistributionType": ch["DataSource"]["S3DataSource"].get("S3DataDistributionType",
                                                                                 "FullyReplicated"),
                      "RecordWrapperType": ch.get("RecordWrapperType", "None")})
        input_config[ch["ChannelName"]] = entry
    files = {HYPERPARAMETERS_FILE: dict(config.get("HyperParameters") or {}),
             "inputdataconfig.json": input_config, "resourceconfig.json": RESOURCE_CONFIG}
    for name, obj in files.items():
        (conf / name).write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")


class _Stream:
    """Lines of the training process, logged as they come and scanned for metrics."""

    def __init__(self, definitions: Iterable[Mapping[str, str]], logger: Logger,
                 on_metric: Callable[[str, float], bool] | None = None) -> None:
        self.patterns = metrics.compile_definitions(definitions)
        self.logger = logger
        self.final: dict[str, tuple[float, str]] = {}
        self.tail: deque[str] = deque(maxlen=20)
        self.lock = threading.Lock()
        self.on_metric = on_metric
        self.stop_requested = threading.Event()   # set when on_metric asks for the job to stop
        self.early_stopped = False                # the job was stopped because it was asked to

    def feed(self, line: str) -> None:
        self.logger.info("[train] %s", line)
        found = metrics.scan(self.patterns, line)
        with self.lock:
            if line.strip():
                self.tail.append(line.strip())
            stamp = _now()
            for name, value in found.items():
                self.final[name] = (value, stamp)
        if self.on_metric is not None:
            for name, value in found.items():
                if self.on_metric(name, value):
                    self.stop_requested.set()

    def pump(self, pipe: IO[bytes]) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def final_metrics(self) -> list[dict[str, Any]]:
        return [{"MetricName": name, "Value": value, "Timestamp": stamp}
                for name, (value, stamp) in sorted(self.final.items())]


def _run_process(cmd: list[str], env: dict[str, str], cwd: Path, max_runtime_s: float, grace_s: float,
                 stream: _Stream, logger: Logger, docker_name: str | None = None,
                 checkpoints: tuple[Path, str] | None = None) -> tuple[int, bool]:
    """(exit status, stopped for MaxRuntime). The process gets its own session, so that signals reach
    every process it starts (torchrun's workers), and dies with this one (pipeline_tasks/jobs/local/process.py).
    When this task is stopped (Airflow's SIGTERM, a timeout, Ctrl-C) the job is stopped as SageMaker
    stops one — SIGTERM, `grace_s` for its checkpoint, SIGKILL — and its `checkpoints` (local folder,
    URI) are synced afterwards, by a detached reaper since the task has only seconds left."""
    logger.info("running %s", shlex.join(cmd))
    proc = process.start(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    logger.info("train started: pid %d (process group %d)", proc.pid, proc.pid)
    pumps = [threading.Thread(target=stream.pump, args=(pipe,), daemon=True) for pipe in (proc.stdout, proc.stderr)]
    for t in pumps:
        t.start()
    timed_out = False
    deadline = time.monotonic() + max_runtime_s
    try:
        with process.stop_on_sigterm():
            while True:  # wakes twice a second when a stop may be asked for (early stopping), else at the deadline
                remaining = deadline - time.monotonic()
                try:
                    proc.wait(timeout=max(0.0, min(remaining, 0.5) if stream.on_metric else remaining))
                    break
                except subprocess.TimeoutExpired:
                    if stream.stop_requested.is_set():
                        stream.early_stopped = True
                        logger.warning("stopping train as asked (early stopping): sending SIGTERM")
                        process.stop(proc, grace_s, logger, "train", docker_name)
                        break
                    if time.monotonic() >= deadline:
                        timed_out = True
                        logger.warning("MaxRuntimeInSeconds (%.0fs) exceeded: sending SIGTERM to train", max_runtime_s)
                        process.stop(proc, grace_s, logger, "train", docker_name)
                        break
    except BaseException as e:
        # The task itself is being stopped: never leave training running behind it.
        logger.warning("the task is stopping (%s): stopping the training job", type(e).__name__)
        sync_from, sync_to = checkpoints if checkpoints else (None, None)
        process.stop_detached(proc, grace_s, logger, "train", docker_name=docker_name, sync_from=sync_from,
                              sync_to=sync_to)
        raise
    finally:
        for t in pumps:
            t.join(timeout=10 if proc.poll() is not None else 0.1)
    return proc.returncode, timed_out


def _failure_reason(root: Path, status: int, stream: _Stream) -> str:
    failure = root / "output" / "failure"
    if failure.is_file():
        text = failure.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return "AlgorithmError: " + text[:FAILURE_REASON_CHARS]
    how = f"status {status}"
    if status < 0:
        with contextlib.suppress(ValueError):
            how = f"signal {signal.Signals(-status).name}"
    last = f"; last output: {stream.tail[-1][:300]}" if stream.tail else ""
    return f"AlgorithmError: train exited with {how}{last}"


def _read_json_uri(uri: str) -> Any:
    loc = storage.parse(uri)
    if isinstance(loc, Path):
        return json.loads(loc.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="describe-") as tmp:
        return json.loads(storage.get_file(uri, Path(tmp) / DESCRIBE_FILE).read_text(encoding="utf-8"))


def stored_result(output_path: str, job: str) -> dict[str, Any] | None:
    """The result a completed run of `job` stored beside its model.tar.gz, or None.

    Only a whole artifact counts: describe.json is written after the archive, and the archive must
    still have the size it recorded. The DAG can also ask this for an earlier try's job name."""
    prefix = storage.join(output_path, job, "output")
    files = storage.list_files(prefix)
    if DESCRIBE_FILE not in files or MODEL_ARCHIVE not in files:
        return None
    stored = _read_json_uri(storage.join(prefix, DESCRIBE_FILE))
    if stored.get("Backend", {}).get("ModelArtifactsBytes") != files[MODEL_ARCHIVE]:
        return None
    return stored


def _job_root(workdir: str | os.PathLike[str] | None, job: str) -> Path:
    base = Path(workdir) if workdir is not None else Path(
        os.environ.get(JOBS_DIR_ENV) or Path(tempfile.gettempdir()) / "seq2seq-training-jobs")
    return base / job


class _Transitions:
    """SecondaryStatusTransitions as DescribeTrainingJob lists them."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        result["SecondaryStatusTransitions"] = []

    def enter(self, status: str, message: str) -> None:
        now = _now()
        items = self.result["SecondaryStatusTransitions"]
        if items:
            items[-1]["EndTime"] = now
        items.append({"Status": status, "StartTime": now, "StatusMessage": message})
        self.result["SecondaryStatus"] = status


def _train_command(backend: str, name: str, root: Path, image: str | None, gpus: bool,
                   environment: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str], str | None]:
    """(command, environment, docker container name) that runs the container's ``train`` on `root`, with the
    request's ``Environment`` set in the container as SageMaker sets it."""
    if backend == "docker":
        assert image is not None
        user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
        env = {**(environment or {}), "TRAINING_JOB_NAME": name, **({"HOME": "/tmp"} if user else {})}
        docker_remove(name)  # a container left by a crashed attempt
        return docker_train_command(image, root, gpus, name=name, user=user, env=env), dict(os.environ), name
    env = {**os.environ, **(environment or {}), "TRAINING_JOB_NAME": name, "SAGEMAKER_BASE_DIR": str(root),
           "PYTHONPATH": process.repo_pythonpath(), "PYTHONUNBUFFERED": "1"}
    return local_train_command(), env, None


def _fresh_root(workdir: str | os.PathLike[str] | None, name: str) -> Path:
    """A clean /opt/ml: nothing from an earlier attempt of the job leaks into this one."""
    root = _job_root(workdir, name).resolve()
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("model", "output", "checkpoints", "input/config"):
        (root / sub).mkdir(parents=True)
    return root


def run_training_job(config: dict[str, Any], backend: str = "local", workdir: str | os.PathLike[str] | None = None,
                     image: str | None = None, log: Logger | None = None, *, gpus: bool | None = None,
                     stop_grace_s: float = STOP_GRACE_S, keep_root: bool = False,
                     on_metric: Callable[[str, float], bool] | None = None) -> dict[str, Any]:
    """Execute a CreateTrainingJob request on this machine; returns a DescribeTrainingJob-like dict.

    The job runs under ``<workdir>/<TrainingJobName>`` (workdir defaults to ``$SEQ2SEQ_LOCAL_JOBS_DIR`` or
    the system temp dir); the root is removed after a successful job unless `keep_root`, and kept (less
    its input data) after a failed one for inspection. TrainingJobStatus is ``Completed``, ``Failed``
    (with FailureReason) or ``Stopped`` with SecondaryStatus ``MaxRuntimeExceeded`` (the status tree
    SageMaker documents; the model is uploaded when the container left one). MaxRuntimeInSeconds counts
    from the start of ``train``. `on_metric(name, value)` sees each metric line as it is printed and may
    return True to stop the job as SageMaker stops one (a tuning job's early stopping): SIGTERM, the
    model it leaves uploaded, status ``Stopped`` (SecondaryStatus ``Stopped``). Raises ValueError for a
    malformed request and DockerUnavailableError when the docker backend has no engine; a failing job
    never raises."""
    jlog = log or _LOG
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} here, got {backend!r} "
                         "(the sagemaker backend submits the same request with the amazon provider's operator)")
    check_training_request(config)
    name = config["TrainingJobName"]
    output_path = config["OutputDataConfig"]["S3OutputPath"]
    fingerprint = request_fingerprint(config)
    stored = stored_result(output_path, name)
    if stored is not None:
        if stored.get("Backend", {}).get("RequestSha256") != fingerprint:
            raise ValueError(f"training job {name!r} already completed for a different request (its result is in "
                             f"{storage.join(output_path, name, 'output', DESCRIBE_FILE)}); job names are unique "
                             "per request, as on SageMaker: use a new name")
        jlog.info("training job %s already completed: returning its stored result (%s)", name,
                  stored.get("ModelArtifacts", {}).get("S3ModelArtifacts"))
        return stored

    use_gpus = False
    if backend == "docker":
        version = docker_available()
        image = image or config["AlgorithmSpecification"].get("TrainingImage")
        if not image:
            raise ValueError("the docker backend needs an image: AlgorithmSpecification.TrainingImage or image=")
        use_gpus = nvidia_gpus_available() if gpus is None else gpus
        jlog.info("docker engine %s, image %s, GPUs: %s", version, image, "all" if use_gpus else "none")
    if int((config.get("ResourceConfig") or {}).get("InstanceCount", 1)) > 1:
        jlog.warning("InstanceCount > 1: the %s backend runs a single host", backend)

    root = _fresh_root(workdir, name)
    started = _now()
    result: dict[str, Any] = {
        "TrainingJobName": name, "TrainingJobStatus": "InProgress",
        "AlgorithmSpecification": config["AlgorithmSpecification"], "RoleArn": config.get("RoleArn"),
        "InputDataConfig": config["InputDataConfig"], "OutputDataConfig": config["OutputDataConfig"],
        "ResourceConfig": config.get("ResourceConfig"), "StoppingCondition": config["StoppingCondition"],
        "HyperParameters": dict(config.get("HyperParameters") or {}),
        "EnableManagedSpotTraining": bool(config.get("EnableManagedSpotTraining", False)),
        **({"Environment": dict(config["Environment"])} if config.get("Environment") else {}),
        "CreationTime": started, "TrainingStartTime": started,
    }
    if config.get("CheckpointConfig"):
        result["CheckpointConfig"] = config["CheckpointConfig"]
    transitions = _Transitions(result)
    transitions.enter("Starting", f"Preparing the {backend} training job under {root}")
    stream = _Stream(config["AlgorithmSpecification"].get("MetricDefinitions") or [], jlog, on_metric)
    archive_bytes: int | None = None
    training_seconds = 0.0
    secondary, reason = "Failed", None
    try:
        transitions.enter("Downloading", "Downloading input data")
        checkpoint_uri = (config.get("CheckpointConfig") or {}).get("S3Uri")
        stage_channels(config, root, jlog)
        if checkpoint_uri:
            download_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
        _write_configs(config, root)

        transitions.enter("Training", "Training in progress")
        cmd, env, docker_name = _train_command(backend, name, root, image, use_gpus, config.get("Environment"))
        t0 = time.monotonic()
        syncer = CheckpointSync(checkpoint_uri, root / "checkpoints", jlog) if checkpoint_uri else None
        try:
            with syncer or contextlib.nullcontext():
                code, timed_out = _run_process(
                    cmd, env, root, float(config["StoppingCondition"]["MaxRuntimeInSeconds"]), stop_grace_s,
                    stream, jlog, docker_name, (root / "checkpoints", checkpoint_uri) if checkpoint_uri else None)
        except BaseException:
            if checkpoint_uri:  # the task is being killed: save what the next try can resume from, if we can
                with contextlib.suppress(Exception):
                    sync_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
            raise
        training_seconds = time.monotonic() - t0
        jlog.info("train exited with status %d after %.1fs", code, training_seconds)
        if checkpoint_uri:  # SageMaker syncs checkpoints whatever the outcome, so that the next try resumes
            try:
                sync_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
            except storage_errors() as e:
                raise JobFailed(f'ClientError: cannot sync checkpoints to "{checkpoint_uri}": '
                                f"{type(e).__name__}: {e}") from e
        stopped = timed_out or stream.early_stopped
        if code != 0 and not stopped:
            raise JobFailed(_failure_reason(root, code, stream))
        has_model = any(p.is_file() for p in (root / "model").rglob("*"))
        if not has_model and not stopped:
            raise JobFailed("AlgorithmError: train exited with status 0 but wrote nothing to /opt/ml/model")
        if has_model:
            transitions.enter("Uploading", "Uploading generated training model")
            archive_bytes = upload_model(root, storage.join(output_path, name, "output", MODEL_ARCHIVE))
        secondary = "MaxRuntimeExceeded" if timed_out else "Stopped" if stream.early_stopped else "Completed"
    except JobFailed as e:
        reason = str(e)
        jlog.error("training job %s failed: %s", name, reason)
    finally:
        shutil.rmtree(root / "input" / "data", ignore_errors=True)

    status = {"Completed": "Completed", "MaxRuntimeExceeded": "Stopped", "Stopped": "Stopped"}.get(secondary, "Failed")
    messages = {"Completed": "Training job completed", "Failed": reason or "Training job failed",
                "MaxRuntimeExceeded": "Training job stopped: MaxRuntimeInSeconds exceeded",
                "Stopped": "Training job stopped (early stopping)"}
    transitions.enter(secondary, messages[secondary])
    ended = _now()
    result["SecondaryStatusTransitions"][-1]["EndTime"] = ended
    result.update({"TrainingJobStatus": status, "TrainingEndTime": ended, "LastModifiedTime": ended,
                   "TrainingTimeInSeconds": round(training_seconds), "FinalMetricDataList": stream.final_metrics(),
                   "Backend": {"Name": backend, "Root": str(root), "RequestSha256": fingerprint}})
    if reason:
        result["FailureReason"] = reason
    if archive_bytes is not None:
        result["ModelArtifacts"] = {"S3ModelArtifacts": storage.join(output_path, name, "output", MODEL_ARCHIVE)}
        result["Backend"]["ModelArtifactsBytes"] = archive_bytes
        try:
            _store_result(result, output_path, name, root)
        except storage_errors() as e:  # the model is there; only the retry shortcut is lost
            jlog.warning("could not store the job's result beside its model (%s: %s)", type(e).__name__, e)
    if status == "Failed":
        jlog.info("job root kept for inspection: %s", root)
    elif not keep_root:
        shutil.rmtree(root, ignore_errors=True)
    jlog.info("training job %s: %s%s", name, status, f" ({secondary})" if secondary != status else "")
    return result


def _store_result(result: dict[str, Any], output_path: str, name: str, root: Path) -> None:
    """describe.json after model.tar.gz: its presence means the artifact is whole (see stored_result)."""
    local = root / ".upload" / DESCRIBE_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    storage.put_file(local, storage.join(output_path, name, "output", DESCRIBE_FILE))
