"""The local emulation of a SageMaker batch transform job: backends ``local`` and ``docker`` (docs/ARCHITECTURE.md §5).

:func:`run_transform_job` executes the same ``{"Model": CreateModel, "Transform": CreateTransformJob}``
request (the dict the amazon provider's ``SageMakerTransformOperator`` takes, built by
pipeline_tasks/jobs/requests.py's ``transform_job_config``) on this machine: starts ``container/serve``
on the model, splits each input object by line (``SplitType=Line``), posts mini-batches under
``MaxPayloadInMB`` (``BatchStrategy=MultiRecord``) and assembles the responses by line into
``<input-name>.out`` under the output path, as SageMaker does. It has the semantics of the in-process
``transform`` step (pipeline_tasks/transform.py, whose model resolution and progress it uses): one
output line per input line, same order; a bad line fails the job naming its line number, or with
``on_error=record`` becomes ``{"error": …}`` and is counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from model.constants import JSONLINES_CONTENT_TYPE
from pipeline_tasks import storage
from pipeline_tasks.jobs.local import process
from pipeline_tasks.jobs.local.docker import docker_available, docker_serve_command, nvidia_gpus_available
from pipeline_tasks.jobs.local.staging import list_objects
from pipeline_tasks.jobs.requests import check_transform_request
from pipeline_tasks.transform import (
    LineProgress,
    count_lines,
    iter_line_chunks,
    local_input,
    local_output,
    resolve_model,
)

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".out"
SERVE_COMMAND_ENV = "SEQ2SEQ_SERVE_COMMAND"
# Lines per mini-batch of the job emulation (besides MaxPayloadInMB): at a few lines/s on a CPU, a full 6 MB
# mini-batch is minutes of decoding in one request; smaller ones show progress as each comes back, and
# SageMaker's MultiRecord allows any batch under the payload limit. The output does not depend on it.
MINI_BATCH_LINES = 500
SERVE_STOP_GRACE_S = 30.0    # serve's time to finish after SIGTERM before it is killed


class TransformJobError(RuntimeError):
    """The job failed; the message is what DescribeTransformJob's FailureReason says."""


def serve_command() -> list[str]:
    """How to start the serving entrypoint on this machine (``$SEQ2SEQ_SERVE_COMMAND`` overrides)."""
    return process.entrypoint_command("serve", SERVE_COMMAND_ENV)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``container/serve`` on a model directory, on 127.0.0.1, for the duration of a ``with`` block."""

    def __init__(self, model_dir: Path, root: Path, environment: dict[str, str], max_payload_mb: int,
                 workers: int | None = None, startup_timeout_s: float = 300.0, docker_image: str | None = None,
                 gpus: bool = False) -> None:
        self.model_dir, self.root, self.environment = model_dir, root, environment
        self.max_payload_mb, self.workers, self.startup_timeout_s = max_payload_mb, workers, startup_timeout_s
        self.docker_image, self.gpus = docker_image, gpus
        self.port = 0
        self.docker_name: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        ml_model = self.root / "model"
        ml_model.parent.mkdir(parents=True, exist_ok=True)
        if not ml_model.exists():
            ml_model.symlink_to(self.model_dir.resolve(), target_is_directory=True)
        self.port = _free_port()
        server_env = {**self.environment, "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_mb)}
        if self.workers:
            server_env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(self.workers)
        if self.docker_image:
            env = dict(os.environ)
            cmd = docker_serve_command(self.docker_image, self.model_dir, self.port, server_env, self.gpus,
                                       f"seq2seq-serve-{self.port}")
        else:
            env = {**os.environ, **server_env, "SAGEMAKER_BASE_DIR": str(self.root),
                   "SAGEMAKER_BIND_TO_PORT": str(self.port), "SEQ2SEQ_BIND_HOST": "127.0.0.1",
                   "PYTHONPATH": process.repo_pythonpath()}
            cmd = serve_command()
        self.log_file = open(self.root / "serve.log", "w+b")
        log.info("starting %s on port %d", " ".join(cmd), self.port)
        self.docker_name = f"seq2seq-serve-{self.port}" if self.docker_image else None
        # Its own session, dying with us: a killed task must not leave a server behind
        # (pipeline_tasks/jobs/local/process.py).
        self.proc = process.start(cmd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def log_tail(self, n: int = 2000) -> str:
        if self.log_file is None:
            return ""
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read().decode("utf-8", "replace")[-n:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TransformJobError(f"serve exited with status {self.proc.returncode} before answering "
                                        f"/ping: {self.log_tail().strip()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise TransformJobError(f"serve did not answer /ping within {self.startup_timeout_s:.0f}s")

    def execution_parameters(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/execution-parameters", timeout=10) as r:
            return json.loads(r.read())

    def invoke(self, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + "/invocations", data=body, method="POST",
                                     headers={"Content-Type": JSONLINES_CONTENT_TYPE, "Accept": JSONLINES_CONTENT_TYPE})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def __exit__(self, exc_type: type[BaseException] | None = None, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if exc_type is not None and not issubclass(exc_type, Exception):
                # The task is being stopped (SIGTERM, timeout, Ctrl-C) and has seconds left: SIGTERM now,
                # SIGKILL by a detached reaper if serve is still there after the grace period.
                process.stop_detached(self.proc, SERVE_STOP_GRACE_S, log, "serve", docker_name=self.docker_name)
            else:
                process.stop(self.proc, SERVE_STOP_GRACE_S, log, "serve", docker_name=self.docker_name)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


def mini_batches(lines: Iterator[list[bytes]], max_bytes: int, name: str,
                 max_lines: int | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines) groups whose request body (lines + newlines) stays under
    `max_bytes`, as SageMaker's MultiRecord strategy builds them, and holds at most `max_lines` lines;
    a single line over the payload limit is an error."""
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines must be >= 1, got {max_lines}")
    batch: list[bytes] = []
    size = 0
    first = next_line = 1
    for chunk in lines:
        for line in chunk:
            n = len(line) + 1
            if n > max_bytes:
                raise TransformJobError(f"{name}: line {next_line} is {n} bytes, over MaxPayloadInMB "
                                        f"({max_bytes} bytes)")
            if batch and (size + n > max_bytes or (max_lines is not None and len(batch) >= max_lines)):
                yield first, batch
                batch, size, first = [], 0, next_line
            batch.append(line)
            size += n
            next_line += 1
    if batch:
        yield first, batch


_LINE_MESSAGE = re.compile(r"^line (\d+): (.*)$", re.S)


def _batch_error(name: str, first: int, status: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")[:500]
    m = _LINE_MESSAGE.match(message)
    if m:  # the server numbers the lines of its request; the job names the line of the input object
        return f"{name}: line {first + int(m.group(1)) - 1}: {m.group(2)}"
    return f"{name}: lines {first}…: HTTP {status}: {message}"


def _transform_object(server: LocalServer, name: str, local_in: Path, out: IO[bytes], max_bytes: int,
                      concurrency: int, timeout_s: float, max_lines: int | None = MINI_BATCH_LINES,
                      progress_interval_s: float | None = None) -> dict[str, int]:
    """Post one input object's mini-batches (up to `concurrency` in flight) and write the responses
    in input order. Lines count as done when their mini-batch's answer arrives; meanwhile the progress
    timer names the mini-batches still at the server and for how long."""
    lines = errors = 0
    progress = LineProgress(f"transform job {name}", count_lines(local_in), progress_interval_s)
    pending: deque[tuple[int, list[bytes], Future]] = deque()

    def post(first: int, batch: list[bytes], body: bytes) -> tuple[int, bytes]:
        key = (first, len(batch))
        progress.started(key, f"mini-batch of lines {first:,}-{first + len(batch) - 1:,}")
        try:
            status, answer = server.invoke(body, timeout_s)
        finally:
            progress.finished(key)
        if status == 200:
            progress.add(len(batch))
        return status, answer

    def drain_one() -> None:
        nonlocal lines, errors
        first, batch, fut = pending.popleft()
        status, body = fut.result()
        if status != 200:
            raise TransformJobError(_batch_error(name, first, status, body))
        got = body.count(b"\n") + (not body.endswith(b"\n") and bool(body))
        if got != len(batch):
            raise TransformJobError(f"{name}: lines {first}-{first + len(batch) - 1}: the server answered "
                                    f"{got} line(s) for {len(batch)}")
        errors += sum(1 for r in body.splitlines() if r.startswith(b'{"error"'))
        out.write(body if body.endswith(b"\n") else body + b"\n")
        lines += len(batch)

    with progress, open(local_in, "rb") as fin, ThreadPoolExecutor(concurrency) as pool:
        for first, batch in mini_batches(iter_line_chunks(fin, 4096), max_bytes, name, max_lines):
            body = b"".join(line + b"\n" for line in batch)
            pending.append((first, batch, pool.submit(post, first, batch, body)))
            if len(pending) >= concurrency:
                drain_one()
        while pending:
            drain_one()
    progress.done()
    return {"lines": lines, "errors": errors}

def run_transform_job(config: dict[str, Any], workdir: str | os.PathLike[str] | None = None,
                      request_timeout_s: float = 3600.0, backend: str = "local",
                      image: str | None = None, mini_batch_lines: int | None = MINI_BATCH_LINES,
                      progress_interval_s: float | None = None) -> dict[str, Any]:
    """Execute ``{"Model": …, "Transform": …}`` here; returns a DescribeTransformJob-like dict.

    Mini-batches hold at most `mini_batch_lines` lines (None: as many as fit ``MaxPayloadInMB``), so
    that progress, logged every `progress_interval_s` (pipeline_tasks.transform.PROGRESS_INTERVAL_S), moves as each
    answer comes back.

    ``backend`` local runs ``container/serve`` as a process; docker runs the image's ``serve``
    (``PrimaryContainer.Image`` unless `image` is given; ``--gpus all`` when GPUs exist). A failure
    returns ``TransformJobStatus: Failed`` with the ``FailureReason`` (and publishes nothing for the
    object that failed), as SageMaker reports it; callers decide whether that raises. No Docker engine
    is an error (DockerUnavailableError), not a failed job."""
    model_req, job = config["Model"], config["Transform"]
    name = job["TransformJobName"]
    check_transform_request(job)
    if backend not in ("local", "docker"):
        raise ValueError(f"backend must be local or docker (sagemaker is the operator's), got {backend!r}")
    docker_image, gpus = None, False
    if backend == "docker":
        docker_available()
        docker_image = image or model_req["PrimaryContainer"]["Image"]
        gpus = nvidia_gpus_available()
    started = time.time()
    result: dict[str, Any] = {"TransformJobName": name, "ModelName": job["ModelName"],
                              "TransformInput": job["TransformInput"], "TransformOutput": job["TransformOutput"],
                              "TransformResources": job.get("TransformResources"),
                              "TransformStartTime": started}
    output_path = job["TransformOutput"]["S3OutputPath"]
    outputs: list[str] = []
    totals = {"lines": 0, "errors": 0}
    try:
        with tempfile.TemporaryDirectory(prefix=f"transform-job-{name}-") as tmp:
            work = Path(workdir) if workdir is not None else Path(tmp)
            container = model_req["PrimaryContainer"]
            model_dir = resolve_model(container["ModelDataUrl"], work / "model-data")
            env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
            env.update({str(k): str(v) for k, v in (job.get("Environment") or {}).items()})
            with process.stop_on_sigterm(), LocalServer(
                    model_dir, work / "ml", env, int(job.get("MaxPayloadInMB", 6)),
                    workers=job.get("MaxConcurrentTransforms"), docker_image=docker_image, gpus=gpus) as server:
                params = server.execution_parameters()
                payload_mb = int(job.get("MaxPayloadInMB") or params.get("MaxPayloadInMB", 6))
                concurrency = int(job.get("MaxConcurrentTransforms") or params.get("MaxConcurrentTransforms", 1))
                log.info("transform job %s: %s, MaxPayloadInMB %d, MaxConcurrentTransforms %d", name,
                         job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], payload_mb, concurrency)
                input_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
                objects = list_objects(input_uri)
                if not objects:
                    raise TransformJobError(f"{input_uri}: no input objects")
                for uri, rel in objects:
                    with local_input(uri, work / "in" / str(len(outputs))) as local_in:
                        out_uri = storage.join(output_path, *(rel + OUTPUT_SUFFIX).split("/"))
                        with local_output(out_uri, work / "out" / str(len(outputs))) as out:
                            counts = _transform_object(server, uri, Path(local_in), out, payload_mb << 20,
                                                       concurrency, request_timeout_s, mini_batch_lines,
                                                       progress_interval_s)
                    outputs.append(out_uri)
                    for k in totals:
                        totals[k] += counts[k]
        result["TransformJobStatus"] = "Completed"
    except (TransformJobError, ValueError, OSError) as e:
        log.error("transform job %s failed: %s", name, e)
        result["TransformJobStatus"] = "Failed"
        result["FailureReason"] = str(e)
    result.update({"TransformEndTime": time.time(), "OutputObjects": outputs, "Lines": totals["lines"],
                   "ErrorLines": totals["errors"]})
    return result
