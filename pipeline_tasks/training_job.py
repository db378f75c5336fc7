"""The `train` step's job spec and its local execution (DESIGN §5).

:func:`training_job_config` builds the boto3 ``create_training_job`` request: the one dict that the
``sagemaker`` backend submits through the amazon provider's operator and that the ``local`` and
``docker`` backends execute here through :func:`run_training_job`, so a DAG run means the same job
whichever backend runs it.

The local execution does on this machine what SageMaker does on a training instance: fetch every
channel's ``S3Uri`` prefix into ``<root>/input/data/<channel>/``, write the three config files, sync
``CheckpointConfig.S3Uri`` into ``<root>/checkpoints`` (and back after the run, whatever its outcome,
so a retried job resumes), run the container's ``train``, stream its output into the Python log and
pick the MetricDefinitions out of it, enforce ``MaxRuntimeInSeconds`` with SIGTERM then SIGKILL, tar
``<root>/model`` to ``<S3OutputPath>/<job>/output/model.tar.gz`` and answer a DescribeTrainingJob-like
dict. An algorithm failure is a ``Failed`` result, never an exception; a malformed request is a
``ValueError``, as the API would reject it.

A successful job also leaves ``describe.json`` beside its ``model.tar.gz`` (written after it): a task
retried after a crash between training and returning gets that stored result instead of training
again. Nothing here imports torch or Airflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from model.constants import CHANNEL_CONTENT_TYPES, CHECKPOINT_LOCAL_PATH, HYPERPARAMETERS_FILE, MODEL_ARCHIVE
from model.hyperparameters import format_value, parse_hyperparameters
from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks import process, storage

_LOG = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_COMMAND_ENV = "SEQ2SEQ_TRAIN_COMMAND"   # overrides the local backend's command (tests, wrappers)
JOBS_DIR_ENV = "SEQ2SEQ_LOCAL_JOBS_DIR"       # where local job roots go when no workdir is given
BACKENDS = ("local", "docker")                # "sagemaker" is the amazon provider's operator, not this module

RESOURCE_CONFIG = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
DESCRIBE_FILE = "describe.json"
FAILURE_REASON_CHARS = 1024                   # what SageMaker shows of /opt/ml/output/failure
STOP_GRACE_S = 120.0                          # SageMaker's delay between SIGTERM and the end of the job
CHECKPOINT_SYNC_S = float(os.environ.get("SEQ2SEQ_CHECKPOINT_SYNC_S", "30"))  # while training
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600          # SageMaker's cap on MaxRuntimeInSeconds
MAX_HYPERPARAMETER_VALUE_CHARS = 2500         # the API's limit per value

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
JOB_NAME_MAX = 63
_RUN_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T _](\d{2}):?(\d{2}):?(\d{2})?")


# --- names -------------------------------------------------------------------------------------------------

def validate_job_name(name: str) -> str:
    """`name` if SageMaker would accept it as a TrainingJobName, else a ValueError saying why: a bad name
    should stop the DAG at parse time, not after the data was uploaded."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"training job name must be a non-empty string, got {name!r}")
    if len(name) > JOB_NAME_MAX or not JOB_NAME_RE.fullmatch(name):
        raise ValueError(f"training job name {name!r} is not valid for SageMaker: 1-{JOB_NAME_MAX} characters, "
                         "letters, digits and hyphens, starting and ending with a letter or digit "
                         f"(pattern {JOB_NAME_RE.pattern})")
    return name


def _sanitise(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9]+", "-", text)).strip("-")


def job_name(prefix: str, run_id: str, try_number: int) -> str:
    """A valid, ≤63-character job name that differs for every (prefix, run, try).

    SageMaker refuses a name used before, and an Airflow retry must not collide with the try it replaces,
    so the name carries a hash of prefix and run id (unique per run whatever their length) and the try
    number; the run's date, when the run id holds one, keeps it readable in the console."""
    if isinstance(try_number, bool) or not isinstance(try_number, int) or try_number < 0:
        raise ValueError(f"try_number must be an integer >= 0, got {try_number!r}")
    digest = hashlib.sha1(f"{prefix}\0{run_id}".encode()).hexdigest()[:8]
    m = _RUN_DATE_RE.search(run_id)
    date = f"{m[1]}{m[2]}{m[3]}-{m[4]}{m[5]}{m[6] or '00'}" if m else ""
    tail = "-".join(filter(None, [date, digest, f"t{try_number}"]))
    head = _sanitise(prefix)[: JOB_NAME_MAX - len(tail) - 1].rstrip("-") or "job"
    return validate_job_name(f"{head}-{tail}")


# --- the request -------------------------------------------------------------------------------------------

def hyperparameter_strings(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker passes hyperparameters as strings; booleans and none are spelt as the container's parser
    reads them (``true``/``false``/``none``), floats as their shortest exact form."""
    out: dict[str, str] = {}
    for name, value in hyperparameters.items():
        if not isinstance(name, str):
            raise ValueError(f"hyperparameter names must be strings, got {name!r}")
        try:
            text = format_value(value)
        except TypeError:
            raise ValueError(f"hyperparameter {name}: {type(value).__name__} value {value!r} cannot be passed to a "
                             "training job (use a string, number, boolean or None)") from None
        if len(text) > MAX_HYPERPARAMETER_VALUE_CHARS:
            raise ValueError(f"hyperparameter {name}: value longer than {MAX_HYPERPARAMETER_VALUE_CHARS} characters")
        out[name] = text
    return out


def training_job_config(*, job_name: str, image_uri: str, role_arn: str, channels: Mapping[str, str],
                        output_uri: str, hyperparameters: Mapping[str, Any],
                        instance_type: str = "ml.p3.2xlarge", instance_count: int = 1, volume_gb: int = 50,
                        max_runtime_s: int = 86400, use_spot: bool = False, max_wait_s: int | None = None,
                        checkpoint_uri: str | None = None,
                        tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The boto3 ``create_training_job`` request (what SageMakerTrainingOperator takes and
    :func:`run_training_job` executes).

    `channels` maps train/validation/vocab to an S3 prefix (or, for the local backends, a path or file://
    URI). Hyperparameters are validated here with the container's own parser, so a typo fails the DAG
    task in seconds rather than a paid training job in minutes. With `use_spot`, MaxWaitTimeInSeconds
    defaults to twice the runtime (room to wait for capacity) and must be at least MaxRuntimeInSeconds."""
    validate_job_name(job_name)
    for what, value in (("image_uri", image_uri), ("role_arn", role_arn), ("output_uri", output_uri)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    unknown = sorted(set(channels) - set(CHANNEL_CONTENT_TYPES))
    missing = [c for c in CHANNEL_CONTENT_TYPES if c not in channels]
    if unknown or missing:
        raise ValueError(f"channels must be exactly {', '.join(CHANNEL_CONTENT_TYPES)}"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    for name, uri in channels.items():
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"channel {name!r}: the URI must be a non-empty string, got {uri!r}")
    strings = hyperparameter_strings(hyperparameters)
    parse_hyperparameters(strings)  # raises HyperparameterError (a ValueError) naming the bad one
    if instance_count < 1 or volume_gb < 1:
        raise ValueError(f"instance_count and volume_gb must be >= 1, got {instance_count} and {volume_gb}")
    if not 1 <= max_runtime_s <= MAX_RUNTIME_LIMIT_S:
        raise ValueError(f"max_runtime_s must be 1..{MAX_RUNTIME_LIMIT_S} (28 days), got {max_runtime_s}")
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": int(max_runtime_s)}
    if use_spot:
        wait = 2 * max_runtime_s if max_wait_s is None else max_wait_s
        if wait < max_runtime_s:
            raise ValueError(f"max_wait_s ({wait}) must be >= max_runtime_s ({max_runtime_s}) for spot training")
        stopping["MaxWaitTimeInSeconds"] = int(wait)
    elif max_wait_s is not None:
        raise ValueError("max_wait_s applies to managed spot training only (use_spot=True)")
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS],
        },
        "RoleArn": role_arn,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": channels[name],
                                                "S3DataDistributionType": "FullyReplicated"}},
                "ContentType": content_type,
                "CompressionType": "None",
            }
            for name, content_type in CHANNEL_CONTENT_TYPES.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": int(instance_count),
                           "VolumeSizeInGB": int(volume_gb)},
        "StoppingCondition": stopping,
        "HyperParameters": strings,
        "EnableManagedSpotTraining": bool(use_spot),
    }
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    if tags:
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in sorted(tags.items())]
    return request


def _check_request(config: Mapping[str, Any]) -> None:
    """Reject what the API would reject, and what this emulation does not implement (it would otherwise
    silently behave differently from SageMaker); every problem at once."""
    problems: list[str] = []
    name = config.get("TrainingJobName")
    try:
        validate_job_name(name)  # type: ignore[arg-type]
    except ValueError as e:
        problems.append(str(e))
    algo = config.get("AlgorithmSpecification")
    if not isinstance(algo, Mapping):
        problems.append("AlgorithmSpecification is missing")
    elif algo.get("TrainingInputMode") != "File":
        problems.append(f"unsupported TrainingInputMode {algo.get('TrainingInputMode')!r} (the local backends "
                        "implement File mode)")
    channels = config.get("InputDataConfig")
    if not isinstance(channels, list) or not channels:
        problems.append("InputDataConfig must be a non-empty list of channels")
        channels = []
    seen: set[str] = set()
    for i, ch in enumerate(channels):
        cname = ch.get("ChannelName") if isinstance(ch, Mapping) else None
        if not isinstance(cname, str) or not re.fullmatch(r"[A-Za-z0-9.\-_]{1,64}", cname):
            problems.append(f"InputDataConfig[{i}]: bad or missing ChannelName {cname!r}")
            continue
        if cname in seen:
            problems.append(f"channel {cname!r} appears twice")
        seen.add(cname)
        s3 = ch.get("DataSource", {}).get("S3DataSource") if isinstance(ch.get("DataSource"), Mapping) else None
        if not isinstance(s3, Mapping) or not isinstance(s3.get("S3Uri"), str) or not s3["S3Uri"]:
            problems.append(f"channel {cname!r}: DataSource.S3DataSource.S3Uri is missing")
            continue
        wanted = {"S3DataType": (s3.get("S3DataType"), "S3Prefix"),
                  "S3DataDistributionType": (s3.get("S3DataDistributionType", "FullyReplicated"), "FullyReplicated"),
                  "CompressionType": (ch.get("CompressionType", "None"), "None"),
                  "InputMode": (ch.get("InputMode", "File"), "File")}
        problems += [f"channel {cname!r}: unsupported {k}={got!r} (the local backends implement {want!r})"
                     for k, (got, want) in wanted.items() if got != want]
    output = config.get("OutputDataConfig")
    if not isinstance(output, Mapping) or not isinstance(output.get("S3OutputPath"), str) or not output["S3OutputPath"]:
        problems.append("OutputDataConfig.S3OutputPath is missing")
    stopping = config.get("StoppingCondition")
    runtime = stopping.get("MaxRuntimeInSeconds") if isinstance(stopping, Mapping) else None
    if isinstance(runtime, bool) or not isinstance(runtime, int | float) or runtime <= 0:
        problems.append(f"StoppingCondition.MaxRuntimeInSeconds must be a positive number, got {runtime!r}")
    hps = config.get("HyperParameters", {})
    if not isinstance(hps, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hps.items()):
        problems.append("HyperParameters must map strings to strings (SageMaker passes them as strings)")
    ckpt = config.get("CheckpointConfig")
    if ckpt is not None:
        if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("S3Uri"), str) or not ckpt["S3Uri"]:
            problems.append("CheckpointConfig.S3Uri is missing")
        elif ckpt.get("LocalPath", CHECKPOINT_LOCAL_PATH) != CHECKPOINT_LOCAL_PATH:
            problems.append(f"CheckpointConfig.LocalPath {ckpt.get('LocalPath')!r}: the local backends map only "
                            f"{CHECKPOINT_LOCAL_PATH}, where the container writes its checkpoints")
    if problems:
        raise ValueError(f"malformed CreateTrainingJob request {name!r}: " + "; ".join(problems))


def check_sagemaker_request(config: Mapping[str, Any]) -> None:
    """The local backends read paths and file:// URIs; SageMaker reads S3 only. Call before submitting."""
    uris = [("channel " + ch["ChannelName"], ch["DataSource"]["S3DataSource"]["S3Uri"])
            for ch in config["InputDataConfig"]]
    uris.append(("OutputDataConfig.S3OutputPath", config["OutputDataConfig"]["S3OutputPath"]))
    if config.get("CheckpointConfig"):
        uris.append(("CheckpointConfig.S3Uri", config["CheckpointConfig"]["S3Uri"]))
    local = [f"{what}: {uri}" for what, uri in uris if not uri.startswith("s3://")]
    if local:
        raise ValueError("a SageMaker training job reads and writes S3 only; not s3:// URIs: " + "; ".join(local))


def request_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 of the request: a stored result is returned only for the request that produced it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --- metrics -----------------------------------------------------------------------------------------------

def _compiled(definitions: Iterable[Mapping[str, str]]) -> list[tuple[str, re.Pattern[str]]]:
    return [(d["Name"], re.compile(d["Regex"])) for d in definitions]


def _scan(patterns: list[tuple[str, re.Pattern[str]]], text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, pattern in patterns:
        for m in pattern.finditer(text):
            with contextlib.suppress(ValueError, IndexError):  # "1.2.3" matches the regex but is no number
                found[name] = float(m.group(1))
    return found


def parse_metrics(text: str, definitions: Iterable[Mapping[str, str]] = METRIC_DEFINITIONS) -> dict[str, float]:
    """The last value of every metric whose regex matches in `text`, as SageMaker reads a job's log."""
    return _scan(_compiled(definitions), text)


# --- docker and GPUs ----------------------------------------------------------------------------------------

class DockerUnavailableError(RuntimeError):
    """The docker backend was asked for but no engine answers: an environment problem, not a job failure."""


def docker_available(timeout_s: float = 30.0) -> str:
    """The engine's version when ``docker info`` answers; otherwise DockerUnavailableError saying what to do."""
    def fail(why: str) -> DockerUnavailableError:
        return DockerUnavailableError(f"docker backend: no Docker engine answers (`docker info` failed: {why}); "
                                      "use backend=local or start Docker")
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError:
        raise fail("no `docker` command on PATH") from None
    except subprocess.TimeoutExpired:
        raise fail(f"no answer within {timeout_s:.0f}s") from None
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
        raise fail(detail[-1] if detail else f"exit status {proc.returncode}")
    return version


def nvidia_gpus_available(timeout_s: float = 15.0) -> bool:
    """True when ``nvidia-smi -L`` lists a GPU: then the docker backend passes ``--gpus all``."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def docker_train_command(image: str, root: str | os.PathLike[str], gpus: bool, *, name: str | None = None,
                         user: str | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """``docker run`` as SageMaker starts a training container: the job root mounted at /opt/ml, the
    container named after the job (so it can be killed by name), all GPUs when there are any, a larger
    /dev/shm for data-loader workers. `user` ("uid:gid") keeps the files it writes owned by us."""
    root = Path(root).resolve()
    cmd = ["docker", "run", "--rm", "--name", name or root.name, "-v", f"{root}:/opt/ml"]
    if gpus:
        cmd += ["--gpus", "all"]
    cmd += ["--shm-size", "1g"]
    if user:
        cmd += ["--user", user]
    for k, v in sorted((env or {}).items()):
        cmd += ["-e", f"{k}={v}"]
    return [*cmd, image, "train"]


def local_train_command() -> list[str]:
    """The container's entrypoint as a plain process (``$SEQ2SEQ_TRAIN_COMMAND`` overrides it)."""
    override = os.environ.get(TRAIN_COMMAND_ENV)
    if override:
        return shlex.split(override)
    return [sys.executable, str(REPO_ROOT / "container" / "train")]


# --- the local execution ------------------------------------------------------------------------------------

class _JobFailed(Exception):
    """A step of the job failed; the message is the FailureReason."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _storage_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (OSError, ValueError, BotoCoreError, ClientError)


def _inside(base: Path, rel: str) -> Path:
    """base/rel, refusing object names that would land outside base (S3 keys may hold '..')."""
    dest = (base / rel).resolve()
    if base.resolve() not in dest.parents:
        raise ValueError(f"object name {rel!r} would be written outside {base}")
    return dest


def _objects(uri: str) -> list[tuple[str, str]]:
    """(URI, name relative to the prefix) of every object under `uri`, or the one object `uri` names."""
    files = storage.list_files(uri)
    objects = [(storage.join(uri, *rel.split("/")), rel) for rel in sorted(files) if rel and not rel.endswith("/")]
    if objects:
        return objects
    loc = storage.parse(uri)
    single = storage.head(loc) is not None if isinstance(loc, storage.S3Location) else loc.is_file()
    if single:
        name = loc.key.rstrip("/").rsplit("/", 1)[-1] if isinstance(loc, storage.S3Location) else loc.name
        return [(uri, name)]
    return []


def _fetch_all(objects: list[tuple[str, str]], dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    targets = [(uri, _inside(dest, rel)) for uri, rel in objects]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(targets)))) as pool:
        list(pool.map(lambda t: storage.get_file(*t), targets))
    return sum(p.stat().st_size for _, p in targets)


def _stage_channels(config: Mapping[str, Any], root: Path, logger: Logger) -> None:
    for ch in config["InputDataConfig"]:
        name, uri = ch["ChannelName"], ch["DataSource"]["S3DataSource"]["S3Uri"]
        try:
            objects = _objects(uri)
            if not objects:
                raise _JobFailed(f'ClientError: channel {name!r}: no objects found under S3 URL "{uri}" given in '
                                 "input data source; check that the prefix exists and holds the channel's files")
            size = _fetch_all(objects, root / "input" / "data" / name)
        except _storage_errors() as e:
            raise _JobFailed(f'ClientError: channel {name!r}: cannot fetch "{uri}": {type(e).__name__}: {e}') from e
        logger.info("channel %s: %d object(s), %d bytes from %s", name, len(objects), size, uri)


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


def _download_checkpoints(uri: str, local: Path, logger: Logger) -> None:
    try:
        objects = _objects(uri)
        if objects:
            size = _fetch_all(objects, local)
            logger.info("checkpoints: %d object(s), %d bytes from %s (the job resumes from them)", len(objects),
                        size, uri)
    except _storage_errors() as e:
        raise _JobFailed(f'ClientError: cannot fetch checkpoints from "{uri}": {type(e).__name__}: {e}') from e


def sync_checkpoints(uri: str, local: Path, logger: Logger) -> None:
    """/opt/ml/checkpoints to CheckpointConfig.S3Uri, as SageMaker copies them; unchanged objects are
    skipped, and the temporary files of a checkpoint being written are not checkpoints."""
    files = [p for p in sorted(local.rglob("*")) if p.is_file() and not _is_partial(p)] if local.is_dir() else []
    written = sum(storage.put_file(p, storage.join(uri, *p.relative_to(local).parts)) for p in files)
    if written:
        logger.info("checkpoints: %d file(s) synced to %s (%d changed)", len(files), uri, written)


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # model/atomic.py's staged files


class _CheckpointSync:
    """Syncs the checkpoints every `interval_s` while the job trains, as SageMaker does during
    training: a task killed outright (no time to sync at the end) still leaves a recent checkpoint
    for the next try."""

    def __init__(self, uri: str, local: Path, logger: Logger, interval_s: float | None = None) -> None:
        self.uri, self.local, self.logger = uri, local, logger
        self.interval_s = CHECKPOINT_SYNC_S if interval_s is None else interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                sync_checkpoints(self.uri, self.local, self.logger)
            except Exception as e:  # the final sync reports a lasting problem; this one only retries
                self.logger.warning("checkpoint sync to %s failed (retrying): %s: %s", self.uri,
                                    type(e).__name__, e)

    def __enter__(self) -> _CheckpointSync:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)


def _tar_model(model_dir: Path, archive: Path) -> None:
    """The model directory's files at the archive's root, as SageMaker packs /opt/ml/model."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", dereference=True) as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)


class _Stream:
    """Lines of the training process, logged as they come and scanned for metrics."""

    def __init__(self, definitions: Iterable[Mapping[str, str]], logger: Logger) -> None:
        self.patterns = _compiled(definitions)
        self.logger = logger
        self.final: dict[str, tuple[float, str]] = {}
        self.tail: deque[str] = deque(maxlen=20)
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        self.logger.info("[train] %s", line)
        found = _scan(self.patterns, line)
        with self.lock:
            if line.strip():
                self.tail.append(line.strip())
            stamp = _now()
            for name, value in found.items():
                self.final[name] = (value, stamp)

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
    every process it starts (torchrun's workers), and dies with this one (pipeline_tasks/process.py).
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
    try:
        with process.stop_on_sigterm():
            try:
                proc.wait(timeout=max_runtime_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                logger.warning("MaxRuntimeInSeconds (%.0fs) exceeded: sending SIGTERM to train", max_runtime_s)
                process.stop(proc, grace_s, logger, "train", docker_name)
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


def _train_command(backend: str, name: str, root: Path, image: str | None, gpus: bool
                   ) -> tuple[list[str], dict[str, str], str | None]:
    """(command, environment, docker container name) that runs the container's ``train`` on `root`."""
    if backend == "docker":
        assert image is not None
        user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
        env = {"TRAINING_JOB_NAME": name, **({"HOME": "/tmp"} if user else {})}
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # a container left by a crashed attempt
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        return docker_train_command(image, root, gpus, name=name, user=user, env=env), dict(os.environ), name
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRAINING_JOB_NAME": name, "SAGEMAKER_BASE_DIR": str(root), "PYTHONPATH": pythonpath,
           "PYTHONUNBUFFERED": "1"}
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
                     stop_grace_s: float = STOP_GRACE_S, keep_root: bool = False) -> dict[str, Any]:
    """Execute a CreateTrainingJob request on this machine; returns a DescribeTrainingJob-like dict.

    The job runs under ``<workdir>/<TrainingJobName>`` (workdir defaults to ``$SEQ2SEQ_LOCAL_JOBS_DIR`` or
    the system temp dir); the root is removed after a successful job unless `keep_root`, and kept (less
    its input data) after a failed one for inspection. TrainingJobStatus is ``Completed``, ``Failed``
    (with FailureReason) or ``Stopped`` with SecondaryStatus ``MaxRuntimeExceeded`` (the status tree
    SageMaker documents; the model is uploaded when the container left one). MaxRuntimeInSeconds counts
    from the start of ``train``. Raises ValueError for a malformed request and DockerUnavailableError when
    the docker backend has no engine; a failing job never raises."""
    jlog = log or _LOG
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} here, got {backend!r} "
                         "(the sagemaker backend submits the same request with the amazon provider's operator)")
    _check_request(config)
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
        "CreationTime": started, "TrainingStartTime": started,
    }
    if config.get("CheckpointConfig"):
        result["CheckpointConfig"] = config["CheckpointConfig"]
    transitions = _Transitions(result)
    transitions.enter("Starting", f"Preparing the {backend} training job under {root}")
    stream = _Stream(config["AlgorithmSpecification"].get("MetricDefinitions") or [], jlog)
    archive_bytes: int | None = None
    training_seconds = 0.0
    secondary, reason = "Failed", None
    try:
        transitions.enter("Downloading", "Downloading input data")
        checkpoint_uri = (config.get("CheckpointConfig") or {}).get("S3Uri")
        _stage_channels(config, root, jlog)
        if checkpoint_uri:
            _download_checkpoints(checkpoint_uri, root / "checkpoints", jlog)
        _write_configs(config, root)

        transitions.enter("Training", "Training in progress")
        cmd, env, docker_name = _train_command(backend, name, root, image, use_gpus)
        t0 = time.monotonic()
        syncer = _CheckpointSync(checkpoint_uri, root / "checkpoints", jlog) if checkpoint_uri else None
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
            except _storage_errors() as e:
                raise _JobFailed(f'ClientError: cannot sync checkpoints to "{checkpoint_uri}": '
                                 f"{type(e).__name__}: {e}") from e
        if code != 0 and not timed_out:
            raise _JobFailed(_failure_reason(root, code, stream))
        has_model = any(p.is_file() for p in (root / "model").rglob("*"))
        if not has_model and not timed_out:
            raise _JobFailed("AlgorithmError: train exited with status 0 but wrote nothing to /opt/ml/model")
        if has_model:
            transitions.enter("Uploading", "Uploading generated training model")
            archive_bytes = _upload_model(root, storage.join(output_path, name, "output", MODEL_ARCHIVE))
        secondary = "MaxRuntimeExceeded" if timed_out else "Completed"
    except _JobFailed as e:
        reason = str(e)
        jlog.error("training job %s failed: %s", name, reason)
    finally:
        shutil.rmtree(root / "input" / "data", ignore_errors=True)

    status = {"Completed": "Completed", "MaxRuntimeExceeded": "Stopped"}.get(secondary, "Failed")
    messages = {"Completed": "Training job completed", "Failed": reason or "Training job failed",
                "MaxRuntimeExceeded": "Training job stopped: MaxRuntimeInSeconds exceeded"}
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
        except _storage_errors() as e:  # the model is there; only the retry shortcut is lost
            jlog.warning("could not store the job's result beside its model (%s: %s)", type(e).__name__, e)
    if status == "Failed":
        jlog.info("job root kept for inspection: %s", root)
    elif not keep_root:
        shutil.rmtree(root, ignore_errors=True)
    jlog.info("training job %s: %s%s", name, status, f" ({secondary})" if secondary != status else "")
    return result


def _upload_model(root: Path, model_uri: str) -> int:
    """Tar /opt/ml/model and put it at `model_uri` (atomic locally, verified on S3); the archive's size."""
    archive = root / ".upload" / MODEL_ARCHIVE
    _tar_model(root / "model", archive)
    try:
        storage.put_file(archive, model_uri)
    except _storage_errors() as e:
        raise _JobFailed(f'ClientError: cannot upload the model to "{model_uri}": {type(e).__name__}: {e}') from e
    return archive.stat().st_size


def _store_result(result: dict[str, Any], output_path: str, name: str, root: Path) -> None:
    """describe.json after model.tar.gz: its presence means the artifact is whole (see stored_result)."""
    local = root / ".upload" / DESCRIBE_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    storage.put_file(local, storage.join(output_path, name, "output", DESCRIBE_FILE))
