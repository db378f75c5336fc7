"""The local execution of a CreateTrainingJob request: backends ``local`` and ``docker`` (docs/ARCHITECTURE.md §5).

The request is the one pipeline_tasks/jobs/requests.py builds and the ``sagemaker`` backend submits
through the amazon provider's operator; :func:`run_training_job` executes it here, so a DAG run means
the same job whichever backend runs it.

The local execution does on this machine what SageMaker does on a job's training instances: fetch
every channel's ``S3Uri`` prefix into ``<root>/input/data/<channel>/`` (all of it, or each host's
share under ShardedByS3Key), write the three config files (resourceconfig.json naming the host among
``algo-1`` … ``algo-N``), sync ``CheckpointConfig.S3Uri`` into ``<root>/checkpoints`` (and the
leader's back after the run, whatever its outcome, so a retried job resumes), run the container's
``train`` once per instance (``ResourceConfig.InstanceCount``: N processes or containers that meet at
a rendezvous, each with its own root), stream their output into the Python log, each line prefixed
with its host when there are several, and pick the MetricDefinitions out of it, enforce
``MaxRuntimeInSeconds`` with SIGTERM then SIGKILL, tar the leader's ``<root>/model`` to
``<S3OutputPath>/<job>/output/model.tar.gz`` and answer a DescribeTrainingJob-like dict. An algorithm
failure is a ``Failed`` result, never an exception; a malformed request is a ``ValueError``, as the
API would reject it. (The file transfers are pipeline_tasks/jobs/local/staging.py's, the child
processes' supervision pipeline_tasks/jobs/local/process.py's.)

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
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from model.constants import HYPERPARAMETERS_FILE, MODEL_ARCHIVE
from model.distributed import HOST_ADDRESSES_ENV, LOST_PEER_PHRASE, MASTER_PORT_ENV
from pipeline_tasks import storage
from pipeline_tasks.jobs import metrics
from pipeline_tasks.jobs.local import process
from pipeline_tasks.jobs.local.docker import (
    docker_available,
    docker_network_create,
    docker_network_remove,
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
FAILED_HOST_WAIT_S = 15.0                     # after one host fails, how long the others get to end by themselves
DESCRIBE_FILE = "describe.json"
FAILURE_REASON_CHARS = 1024                   # what SageMaker shows of /opt/ml/output/failure
STOP_GRACE_S = 120.0                          # SageMaker's delay between SIGTERM and the end of the job


def local_train_command() -> list[str]:
    """The container's entrypoint as a plain process (``$SEQ2SEQ_TRAIN_COMMAND`` overrides it)."""
    return process.entrypoint_command("train", TRAIN_COMMAND_ENV)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def host_names(count: int) -> list[str]:
    """SageMaker's names for a job's instances: algo-1 … algo-N."""
    return [f"algo-{i + 1}" for i in range(count)]


def resource_config(host: str, hosts: list[str], interface: str = "eth0") -> dict[str, Any]:
    """resourceconfig.json as SageMaker writes it on `host` (the fields the container reads)."""
    return {"current_host": host, "hosts": list(hosts), "network_interface_name": interface}


def _write_configs(config: Mapping[str, Any], root: Path, resources: Mapping[str, Any] = RESOURCE_CONFIG) -> None:
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
             "inputdataconfig.json": input_config, "resourceconfig.json": dict(resources)}
    for name, obj in files.items():
        (conf / name).write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")


class _Stream:
    """Lines of the training processes, logged as they come (each host's prefixed with its name, as
    CloudWatch shows one stream per host) and scanned for metrics."""

    def __init__(self, definitions: Iterable[Mapping[str, str]], logger: Logger,
                 on_metric: Callable[[str, float], bool] | None = None) -> None:
        self.patterns = metrics.compile_definitions(definitions)
        self.logger = logger
        self.final: dict[str, tuple[float, str]] = {}
        self.tails: dict[str, deque[str]] = {}
        self.lock = threading.Lock()
        self.on_metric = on_metric
        self.stop_requested = threading.Event()   # set when on_metric asks for the job to stop
        self.early_stopped = False                # the job was stopped because it was asked to

    def tail(self, label: str = "train") -> deque[str]:
        with self.lock:
            return self.tails.setdefault(label, deque(maxlen=20))

    def feed(self, line: str, label: str = "train") -> None:
        self.logger.info("[%s] %s", label, line)
        found = metrics.scan(self.patterns, line)
        tail = self.tail(label)
        with self.lock:
            if line.strip():
                tail.append(line.strip())
            stamp = _now()
            for name, value in found.items():
                self.final[name] = (value, stamp)
        if self.on_metric is not None:
            for name, value in found.items():
                if self.on_metric(name, value):
                    self.stop_requested.set()

    def pump(self, pipe: IO[bytes], label: str = "train") -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.feed(raw.decode("utf-8", "replace").rstrip("\r\n"), label)

    def final_metrics(self) -> list[dict[str, Any]]:
        return [{"MetricName": name, "Value": value, "Timestamp": stamp}
                for name, (value, stamp) in sorted(self.final.items())]


@dataclass
class _Host:
    """One instance of the job: its SageMaker root, its ``train`` process, how that ended."""

    name: str
    root: Path
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    docker_name: str | None = None
    label: str = "train"              # the prefix of its lines in the task log
    proc: subprocess.Popen | None = None
    status: int | None = None
    ended: float | None = None        # time.monotonic() when it exited

    def poll(self) -> bool:
        """True once the process has ended (its status and time recorded)."""
        if self.status is None and self.proc is not None and self.proc.poll() is not None:
            self.status, self.ended = self.proc.returncode, time.monotonic()
        return self.status is not None


def _stop_hosts(hosts: list[_Host], grace_s: float, logger: Logger) -> None:
    """Stop every running host as SageMaker stops a job's instances, all at once (each gets the grace)."""
    running = [h for h in hosts if not h.poll()]
    threads = [threading.Thread(target=process.stop, args=(h.proc, grace_s, logger, f"train on {h.name}",
                                                          h.docker_name), daemon=True) for h in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in running:
        h.poll()


def _run_hosts(hosts: list[_Host], max_runtime_s: float, grace_s: float, stream: _Stream, logger: Logger,
               checkpoints: tuple[Path, str] | None = None, failed_host_wait_s: float = FAILED_HOST_WAIT_S) -> bool:
    """Run every host's ``train`` to its end; True when MaxRuntimeInSeconds stopped them. Each process gets
    its own session, so that signals reach every process it starts (torchrun's workers), and dies with
    this one (pipeline_tasks/jobs/local/process.py). When one host fails, the others get
    `failed_host_wait_s` to end by themselves (a rank that loses its peers fails at its next collective
    and says so), then are stopped, as SageMaker ends the job. When this task is stopped (Airflow's
    SIGTERM, a timeout, Ctrl-C) the job is stopped as SageMaker stops one — SIGTERM, `grace_s` for its
    checkpoint, SIGKILL — and its `checkpoints` (the leader's local folder, URI) are synced afterwards, by
    a detached reaper since the task has only seconds left."""
    pumps = []
    for h in hosts:
        logger.info("running %s%s", shlex.join(h.cmd), f" (host {h.name})" if len(hosts) > 1 else "")
        h.proc = process.start(h.cmd, env=h.env, cwd=h.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        logger.info("train started%s: pid %d (process group %d)", f" on {h.name}" if len(hosts) > 1 else "",
                    h.proc.pid, h.proc.pid)
        pumps += [threading.Thread(target=stream.pump, args=(pipe, h.label), daemon=True)
                  for pipe in (h.proc.stdout, h.proc.stderr)]
    for t in pumps:
        t.start()
    timed_out = False
    deadline = time.monotonic() + max_runtime_s
    failed_at: float | None = None
    try:
        with process.stop_on_sigterm():
            while True:
                for h in hosts:
                    if h.status is None and h.poll() and h.status != 0 and failed_at is None:
                        failed_at = time.monotonic()
                        if len(hosts) > 1:
                            logger.warning("host %s: train exited with %s; the job fails", h.name, _how(h.status))
                running = [h for h in hosts if not h.poll()]
                if not running:
                    break
                now = time.monotonic()
                if stream.stop_requested.is_set():
                    stream.early_stopped = True
                    logger.warning("stopping train as asked (early stopping): sending SIGTERM")
                    _stop_hosts(hosts, grace_s, logger)
                    break
                if now >= deadline:
                    timed_out = True
                    logger.warning("MaxRuntimeInSeconds (%.0fs) exceeded: sending SIGTERM to train", max_runtime_s)
                    _stop_hosts(hosts, grace_s, logger)
                    break
                if failed_at is not None and now - failed_at >= failed_host_wait_s:
                    logger.warning("stopping the hosts still running (%s): another host failed",
                                   ", ".join(h.name for h in running))
                    _stop_hosts(hosts, grace_s, logger)
                    break
                # Wakes as soon as the first running host ends, and twice a second for the checks above.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].proc.wait(timeout=max(0.0, min(deadline - now, 0.5)))  # type: ignore[union-attr]
    except BaseException as e:
        # The task itself is being stopped: never leave training running behind it.
        logger.warning("the task is stopping (%s): stopping the training job", type(e).__name__)
        sync_from, sync_to = checkpoints if checkpoints else (None, None)
        for i, h in enumerate(hosts):
            if not h.poll():
                process.stop_detached(h.proc, grace_s, logger, f"train on {h.name}" if len(hosts) > 1 else "train",
                                      docker_name=h.docker_name, sync_from=sync_from if i == 0 else None,
                                      sync_to=sync_to if i == 0 else None, wait_s=0.0)
        waited_until = time.monotonic() + process.KILLED_TASK_WAIT_S
        for h in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(timeout=max(0.0, waited_until - time.monotonic()))  # type: ignore[union-attr]
        raise
    finally:
        for t in pumps:
            t.join(timeout=10 if all(h.poll() for h in hosts) else 0.1)
    return timed_out


def _how(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
    return f"status {status}"


def _failure_text(root: Path) -> str:
    failure = root / "output" / "failure"
    if failure.is_file():
        return failure.read_text(encoding="utf-8", errors="replace").strip()
    return ""


def _failure_reason(hosts: list[_Host], stream: _Stream) -> str:
    """FailureReason of a failed job: the host whose failure is the cause — one that failed of its own
    accord (its failure file), or one that died without a word (killed) — before the hosts that only lost
    it; the earliest of those, named when the job has several hosts."""
    failed = sorted((h for h in hosts if h.status not in (None, 0)), key=lambda h: h.ended or 0.0)

    def rank(h: _Host) -> int:
        text = _failure_text(h.root)
        if text and LOST_PEER_PHRASE not in text:
            return 0
        return 1 if not text else 2

    culprit = min(failed, key=rank) if failed else hosts[0]
    text = _failure_text(culprit.root)
    named = len(hosts) > 1
    if text:
        if named and not text.startswith(culprit.name):
            text = f"{culprit.name}: {text}"
        reason = text
    else:
        tail = stream.tail(culprit.label)
        last = f"; last output: {tail[-1][:300]}" if tail else ""
        reason = f"{'host ' + culprit.name + ': ' if named else ''}train exited with {_how(culprit.status or 0)}{last}"
    others = [f"{h.name}: {_how(h.status or 0)}" for h in failed if h is not culprit] if named else []
    if others:
        reason += f" (then {', '.join(others)})"
    return ("AlgorithmError: " + reason)[:len("AlgorithmError: ") + FAILURE_REASON_CHARS]


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _hosts(backend: str, name: str, job_root: Path, count: int, image: str | None, gpus: bool,
           environment: Mapping[str, str] | None = None) -> list[_Host]:
    """The job's instances on this machine, each with the command and environment that run the container's
    ``train`` on its own root (the request's ``Environment`` set in the container, as SageMaker sets it).

    One instance runs on the job root itself. Several get a root each under it (``algo-1/``, …) and meet
    at a rendezvous: the local backend's processes on 127.0.0.1 (``$SEQ2SEQ_HOST_ADDRESSES`` stands in for
    SageMaker's DNS; a free port per job, since several jobs may run here at once), the docker backend's
    containers on a network of the job's own, where their host names resolve. Either way the instances
    share this machine, so they train on its CPU: one GPU cannot hold two ranks."""
    names = host_names(count)
    multi = count > 1
    user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
    common = {**(environment or {}), "TRAINING_JOB_NAME": name}
    if multi and backend == "local":
        common.update({HOST_ADDRESSES_ENV: json.dumps(dict.fromkeys(names, "127.0.0.1")),
                       MASTER_PORT_ENV: str(_free_port()), "CUDA_VISIBLE_DEVICES": ""})
    hosts = []
    for host in names:
        root = job_root / host if multi else job_root
        h = _Host(host, root, label=host if multi else "train")
        if backend == "docker":
            assert image is not None
            h.docker_name = f"{name}-{host}" if multi else name
            env = {**common, **({"HOME": "/tmp"} if user else {})}
            docker_remove(h.docker_name)  # a container left by a crashed attempt
            h.cmd = docker_train_command(image, root, gpus and not multi, name=h.docker_name, user=user, env=env,
                                         network=name if multi else None, hostname=host if multi else None)
            h.env = dict(os.environ)
        else:
            h.cmd = local_train_command()
            h.env = {**os.environ, **common, "SAGEMAKER_BASE_DIR": str(root), "PYTHONPATH": process.repo_pythonpath(),
                     "PYTHONUNBUFFERED": "1"}
        hosts.append(h)
    return hosts


def _fresh_root(root: Path) -> Path:
    """A clean /opt/ml: nothing from an earlier attempt of the job leaks into this one."""
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
    count = int((config.get("ResourceConfig") or {}).get("InstanceCount", 1))  # checked by check_training_request
    job_root = _job_root(workdir, name).resolve()
    shutil.rmtree(job_root, ignore_errors=True)
    hosts = _hosts(backend, name, job_root, count, image, use_gpus, config.get("Environment"))
    for h in hosts:
        _fresh_root(h.root)
    leader = hosts[0]
    root = leader.root
    if count > 1:
        jlog.info("%d instances (%s) on this machine, one %s each, under %s", count, ", ".join(h.name for h in hosts),
                  "container" if backend == "docker" else "process", job_root)
        if use_gpus:
            jlog.warning("the instances share this machine: they train on its CPU (one GPU cannot hold two ranks)")
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
    transitions.enter("Starting", f"Preparing the {backend} training job under {job_root}")
    stream = _Stream(config["AlgorithmSpecification"].get("MetricDefinitions") or [], jlog, on_metric)
    archive_bytes: int | None = None
    training_seconds = 0.0
    secondary, reason = "Failed", None
    try:
        transitions.enter("Downloading", "Downloading input data")
        checkpoint_uri = (config.get("CheckpointConfig") or {}).get("S3Uri")
        stage_channels(config, [h.root for h in hosts], jlog)
        if checkpoint_uri:  # every host starts from the same checkpoint, as SageMaker copies the prefix to each
            for h in hosts:
                download_checkpoints(checkpoint_uri, h.root / "checkpoints", jlog)
        interface = "eth0" if backend == "docker" or count == 1 else "lo"
        for h in hosts:
            _write_configs(config, h.root, resource_config(h.name, [x.name for x in hosts], interface)
                           if count > 1 else RESOURCE_CONFIG)

        transitions.enter("Training", "Training in progress")
        if backend == "docker" and count > 1:
            docker_network_create(name)
        t0 = time.monotonic()
        # Only the leader writes checkpoints (rank 0); the other hosts' folders stay as they were given.
        syncer = CheckpointSync(checkpoint_uri, root / "checkpoints", jlog) if checkpoint_uri else None
        try:
            with syncer or contextlib.nullcontext():
                timed_out = _run_hosts(
                    hosts, float(config["StoppingCondition"]["MaxRuntimeInSeconds"]), stop_grace_s, stream, jlog,
                    (root / "checkpoints", checkpoint_uri) if checkpoint_uri else None)
        except BaseException:
            if checkpoint_uri:  # the task is being killed: save what the next try can resume from, if we can
                with contextlib.suppress(Exception):
                    sync_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
            raise
        finally:
            if backend == "docker" and count > 1:
                docker_network_remove(name)
        training_seconds = time.monotonic() - t0
        code = next((h.status for h in hosts if h.status), 0) or 0
        jlog.info("train exited with %s after %.1fs", ", ".join(f"{h.name} {_how(h.status or 0)}" for h in hosts)
                  if count > 1 else _how(code), training_seconds)
        if checkpoint_uri:  # SageMaker syncs checkpoints whatever the outcome, so that the next try resumes
            try:
                sync_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
            except storage_errors() as e:
                raise JobFailed(f'ClientError: cannot sync checkpoints to "{checkpoint_uri}": '
                                f"{type(e).__name__}: {e}") from e
        stopped = timed_out or stream.early_stopped
        if code != 0 and not stopped:
            raise JobFailed(_failure_reason(hosts, stream))
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
        for h in hosts:
            shutil.rmtree(h.root / "input" / "data", ignore_errors=True)

    status = {"Completed": "Completed", "MaxRuntimeExceeded": "Stopped", "Stopped": "Stopped"}.get(secondary, "Failed")
    messages = {"Completed": "Training job completed", "Failed": reason or "Training job failed",
                "MaxRuntimeExceeded": "Training job stopped: MaxRuntimeInSeconds exceeded",
                "Stopped": "Training job stopped (early stopping)"}
    transitions.enter(secondary, messages[secondary])
    ended = _now()
    result["SecondaryStatusTransitions"][-1]["EndTime"] = ended
    result.update({"TrainingJobStatus": status, "TrainingEndTime": ended, "LastModifiedTime": ended,
                   "TrainingTimeInSeconds": round(training_seconds), "FinalMetricDataList": stream.final_metrics(),
                   "Backend": {"Name": backend, "Root": str(job_root), "RequestSha256": fingerprint,
                               **({"HostRoots": {h.name: str(h.root) for h in hosts}} if count > 1 else {})}})
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
        jlog.info("job root kept for inspection: %s", job_root)
    elif not keep_root:
        shutil.rmtree(job_root, ignore_errors=True)
    jlog.info("training job %s: %s%s", name, status, f" ({secondary})" if secondary != status else "")
    return result


def _store_result(result: dict[str, Any], output_path: str, name: str, root: Path) -> None:
    """describe.json after model.tar.gz: its presence means the artifact is whole (see stored_result)."""
    local = root / ".upload" / DESCRIBE_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    storage.put_file(local, storage.join(output_path, name, "output", DESCRIBE_FILE))
