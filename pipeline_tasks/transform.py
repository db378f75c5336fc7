"""The `transform` step: batch translation of JSON Lines ``{"source": …}`` → ``{"target": …}``.

Two ways to run it, with the same semantics (one output line per input line, same order; a bad line
fails the job naming its line number, or with ``on_error=record`` becomes ``{"error": …}`` and is
counted):

- :func:`transform`: in-process, streaming. Lines are read, translated and written ``chunk_lines`` at
  a time, so memory stays flat for any input size; the output is staged and published whole.
- :func:`run_transform_job`: the local emulation of a SageMaker transform job. It executes the same
  ``{"Model": CreateModel, "Transform": CreateTransformJob}`` request (the dict the amazon provider's
  ``SageMakerTransformOperator`` takes, built by :func:`transform_job_config`) on this machine: starts
  ``container/serve`` on the model, splits each input object by line (``SplitType=Line``), posts
  mini-batches under ``MaxPayloadInMB`` (``BatchStrategy=MultiRecord``) and assembles the responses by
  line into ``<input-name>.out`` under the output path, as SageMaker does.

Both log their progress at least every :data:`PROGRESS_INTERVAL_S` seconds, from a timer, not only when
a piece of work ends: lines done of the total, lines/s over the last interval, ETA, and what is still
running (a chunk being decoded, a mini-batch waiting for the server), so a long step is never silent.

The model is a model directory or a ``model.tar.gz`` (what a training job leaves in S3), by path,
``file://`` or ``s3://`` URI; archives are extracted refusing anything that would land outside the
target folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from model.constants import JSONLINES_CONTENT_TYPE, PARAMS_FILE
from model.inference_config import InferenceConfig
from pipeline_tasks import process, storage
from pipeline_tasks.atomic import staged_file
from pipeline_tasks.progress import format_duration

log = logging.getLogger(__name__)

MODEL_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
OUTPUT_SUFFIX = ".out"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_COMMAND_ENV = "SEQ2SEQ_SERVE_COMMAND"
PROGRESS_INTERVAL_S = 30.0   # the longest a transform stays silent in its log
# Lines per mini-batch of the job emulation (besides MaxPayloadInMB): at a few lines/s on a CPU, a full 6 MB
# mini-batch is minutes of decoding in one request; smaller ones show progress as each comes back, and
# SageMaker's MultiRecord allows any batch under the payload limit. The output does not depend on it.
MINI_BATCH_LINES = 500
SERVE_STOP_GRACE_S = 30.0    # serve's time to finish after SIGTERM before it is killed


# --- progress ----------------------------------------------------------------------------------------------

class LineProgress:
    """Progress of a transform, logged by a timer every `interval_s` (default :data:`PROGRESS_INTERVAL_S`)
    whether or not lines finished meanwhile: done / total, the rate over the last interval (a rate since
    the start hides a slowdown), an ETA, and the work in flight with how long it has been running.

    Thread-safe: lines may be counted from request threads while the timer reads."""

    def __init__(self, what: str, total: int | None, interval_s: float | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.what, self.total = what, total
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.logger = logger or log
        self.lines = 0
        self.start = self._mark = time.monotonic()
        self._mark_lines = 0
        self._running: dict[object, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress {what}", daemon=True)

    def __enter__(self) -> LineProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, n: int) -> None:
        with self._lock:
            self.lines += n

    def started(self, key: object, description: str) -> None:
        with self._lock:
            self._running[key] = (description, time.monotonic())

    def finished(self, key: object) -> None:
        with self._lock:
            self._running.pop(key, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.logger.info(self.line())

    def line(self) -> str:
        """The progress line now; starts a new rate window."""
        with self._lock:
            now = time.monotonic()
            window, done = now - self._mark, self.lines
            rate = (done - self._mark_lines) / window if window > 0 else 0.0
            self._mark, self._mark_lines = now, done
            running = sorted(self._running.values(), key=lambda r: r[1])
        elapsed = now - self.start
        msg = f"{self.what}: {done:,}"
        if self.total:
            msg += f" / {self.total:,} lines ({100.0 * done / self.total:.1f}%)"
        else:
            msg += " lines"
        msg += f", {rate:,.1f} lines/s over the last {format_duration(window) if window >= 1 else f'{window:.1f}s'}"
        if self.total:
            # the last window's rate when there was one; else the average so far
            pace = rate if rate > 0 else (done / elapsed if elapsed > 0 else 0.0)
            msg += f", ETA {format_duration((self.total - done) / pace)}" if pace > 0 else ", ETA unknown"
        if running:
            msg += "; running: " + ", ".join(f"{d} for {format_duration(now - t)}" for d, t in running)
        return msg

    def done(self) -> float:
        """Log the final line; returns the seconds since the start."""
        elapsed = time.monotonic() - self.start
        rate = self.lines / elapsed if elapsed > 0 else 0.0
        self.logger.info("%s: %s lines in %s (%.1f lines/s)", self.what, f"{self.lines:,}",
                         format_duration(elapsed), rate)
        return elapsed


# --- the model -------------------------------------------------------------------------------------------

def _safe_members(tar: tarfile.TarFile, archive: str, target: Path) -> list[tarfile.TarInfo]:
    """Every member, checked before anything is written: no absolute or escaping paths, no links that
    point outside, no devices. (tarfile's 'data' filter checks again while extracting.)"""
    root = target.resolve()
    members = tar.getmembers()
    for m in members:
        dest = (root / m.name).resolve()
        if os.path.isabs(m.name) or (dest != root and root not in dest.parents):
            raise ValueError(f"{archive}: member {m.name!r} would be written outside {target}: refused")
        if m.issym() or m.islnk():
            link = (dest.parent / m.linkname).resolve() if m.issym() else (root / m.linkname).resolve()
            if os.path.isabs(m.linkname) or (link != root and root not in link.parents):
                raise ValueError(f"{archive}: member {m.name!r} links outside {target} ({m.linkname!r}): refused")
        elif not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {m.name!r} is not a regular file or folder: refused")
    return members


def extract_model_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract a model.tar.gz into `target` (all or nothing); returns the folder holding params.pt."""
    archive, target = os.fspath(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".extract.", dir=target))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive, stage)
                tar.extractall(stage, members=members, filter="data")
        except tarfile.TarError as e:
            raise ValueError(f"{archive}: not a readable tar archive: {e}") from None
        found = [p.parent for p in stage.rglob(PARAMS_FILE)]
        if len(found) != 1:
            raise ValueError(f"{archive}: expected one model (one params.pt), found {len(found)}")
        for child in stage.iterdir():
            os.replace(child, target / child.name)
        return target / found[0].relative_to(stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def resolve_model(uri: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> Path:
    """A local model directory for a model directory, or a model.tar.gz by path, file:// or s3:// URI
    (fetched and extracted under `workdir`)."""
    loc = storage.parse(uri)
    workdir = Path(workdir)
    if isinstance(loc, storage.S3Location):
        if not loc.key.endswith(MODEL_ARCHIVE_SUFFIXES):
            raise ValueError(f"{uri}: an S3 model must be a model.tar.gz object")
        archive = storage.get_file(str(loc), workdir / "download" / Path(loc.key).name)
        return extract_model_archive(archive, workdir / "model")
    if loc.is_dir():
        if not (loc / PARAMS_FILE).is_file():
            raise FileNotFoundError(f"{loc}: not a model directory (no params.pt)")
        return loc
    if loc.is_file():
        return extract_model_archive(loc, workdir / "model")
    raise FileNotFoundError(f"{uri}: model not found (a model directory or model.tar.gz)")


# --- in-process transform ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformConfig(InferenceConfig):
    """The decoding settings of :class:`~model.inference_config.InferenceConfig` (what the Translator, or a
    server's environment, gets: :meth:`decoding`), plus what a batch transform adds."""

    chunk_lines: int = 2000          # lines in memory at once (sorted by length within a chunk)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_lines < 1:
            raise ValueError(f"chunk_lines must be >= 1, got {self.chunk_lines}")


def iter_line_chunks(f: IO[bytes], n: int) -> Iterator[list[bytes]]:
    """Lines (without their end of line) `n` at a time; a last line without a newline still counts."""
    chunk: list[bytes] = []
    for line in f:
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        chunk.append(line)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_lines(path: str | os.PathLike[str]) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


@contextlib.contextmanager
def _local_input(uri: str, workdir: Path) -> Iterator[Path]:
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        yield storage.get_file(uri, workdir / "input" / (Path(loc.key).name or "input"))
    else:
        if not loc.is_file():
            raise FileNotFoundError(f"{uri}: input file not found")
        yield loc


@contextlib.contextmanager
def _local_output(uri: str, workdir: Path) -> Iterator[IO[bytes]]:
    """A file to write; published (atomically locally, uploaded then verified on S3) only on success."""
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        tmp = workdir / "output" / (Path(loc.key).name or "output")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
        storage.put_file(tmp, uri)
    else:
        with staged_file(loc) as f:
            yield f


def transform(model: str | os.PathLike[str], input_uri: str, output_uri: str,
              cfg: TransformConfig | None = None, device: str | None = None,
              progress_interval_s: float | None = None) -> dict[str, Any]:
    """Translate a JSON Lines file into another, streaming; returns a report (lines, errors, speed).
    Progress is logged every `progress_interval_s` (:data:`PROGRESS_INTERVAL_S`), counted per decoded
    batch, so a chunk that takes minutes still shows its lines coming."""
    from model import engines
    from model.serving_codecs import RequestError, encode_jsonlines, translate_jsonlines
    from model.translator import Translator

    cfg = cfg or TransformConfig()
    input_uri, output_uri = os.fspath(input_uri), os.fspath(output_uri)
    with tempfile.TemporaryDirectory(prefix="transform-") as tmp:
        work = Path(tmp)
        model_dir = resolve_model(model, work)
        translator = Translator.load(model_dir, cfg.decoding(), device)
        lines = errors = 0
        error_lines: list[int] = []
        with _local_input(input_uri, work) as local_in:
            progress = LineProgress(f"transform {Path(local_in).name}", count_lines(local_in), progress_interval_s)
            with progress, open(local_in, "rb") as fin, _local_output(output_uri, work) as fout:
                for chunk in iter_line_chunks(fin, cfg.chunk_lines):
                    progress.started("chunk", f"lines {lines + 1:,}-{lines + len(chunk):,}")
                    try:
                        outputs = translate_jsonlines(translator, chunk, first_line=lines + 1,
                                                      name=f"{input_uri}: line", on_batch=progress.add)
                    except RequestError as e:
                        raise ValueError(str(e)) from None
                    for i, obj in enumerate(outputs):
                        if "error" in obj:
                            errors += 1
                            if len(error_lines) < 20:
                                error_lines.append(lines + i + 1)
                    fout.write(encode_jsonlines(outputs))
                    lines += len(chunk)
                    progress.finished("chunk")
            seconds = progress.done()
    if errors:
        log.warning("transform: %d of %d line(s) could not be translated and carry {\"error\": …} "
                    "(first at line(s) %s)", errors, lines, ", ".join(map(str, error_lines[:5])))
    return {"model": os.fspath(model), "input": input_uri, "output": output_uri, "lines": lines, "errors": errors,
            "error_lines": error_lines, "seconds": round(seconds, 3),
            "sentences_per_s": round(lines / seconds, 2) if seconds > 0 else None,
            "beam_size": translator.beam_size, "batch_size": cfg.batch_size, "text_format": translator.text_format,
            "max_output_length": translator.output_length_rule,
            "engine": engines.describe(translator.engine, translator.config)}


# --- the SageMaker transform job request --------------------------------------------------------------------

def transform_job_config(*, job_name: str, model_name: str, image_uri: str, model_data_url: str, role_arn: str,
                         input_uri: str, output_uri: str, instance_type: str = "ml.m5.xlarge",
                         instance_count: int = 1, cfg: TransformConfig | None = None,
                         max_payload_mb: int = 6, max_concurrent_transforms: int | None = None,
                         tags: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"Model": CreateModel, "Transform": CreateTransformJob}``: what SageMakerTransformOperator takes
    and what :func:`run_transform_job` executes locally. Decoding settings travel as the container's
    environment (the serve entrypoint reads them), so the endpoint decodes as the local transform does."""
    cfg = cfg or TransformConfig()
    if not 1 <= max_payload_mb <= 100:
        raise ValueError(f"max_payload_mb must be 1..100 (SageMaker's range), got {max_payload_mb}")
    env = cfg.decoding().to_env()
    model: dict[str, Any] = {
        "ModelName": model_name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url, "Environment": env},
    }
    transform_job: dict[str, Any] = {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": JSONLINES_CONTENT_TYPE,
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSONLINES_CONTENT_TYPE, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }
    if max_concurrent_transforms:
        transform_job["MaxConcurrentTransforms"] = max_concurrent_transforms
    if tags:
        tag_list = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        model["Tags"] = tag_list
        transform_job["Tags"] = tag_list
    return {"Model": model, "Transform": transform_job}


# --- the local emulation of a transform job ----------------------------------------------------------------

class TransformJobError(RuntimeError):
    """The job failed; the message is what DescribeTransformJob's FailureReason says."""


def serve_command() -> list[str]:
    """How to start the serving entrypoint on this machine (``$SEQ2SEQ_SERVE_COMMAND`` overrides)."""
    override = os.environ.get(SERVE_COMMAND_ENV)
    if override:
        return override.split()
    return [sys.executable, str(REPO_ROOT / "container" / "serve")]


def docker_serve_command(image: str, model_dir: str | os.PathLike[str], port: int, environment: dict[str, str],
                         gpus: bool, name: str) -> list[str]:
    """``docker run`` as SageMaker starts a serving container: the model at /opt/ml/model (read-only), the
    container's port 8080 on 127.0.0.1:`port`, the environment of the CreateModel request."""
    cmd = ["docker", "run", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{Path(model_dir).resolve()}:/opt/ml/model:ro"]
    if gpus:
        cmd += ["--gpus", "all"]
    for key, value in sorted(environment.items()):
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, image, "serve"]


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
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
            cmd = serve_command()
        self.log_file = open(self.root / "serve.log", "w+b")
        log.info("starting %s on port %d", " ".join(cmd), self.port)
        self.docker_name = f"seq2seq-serve-{self.port}" if self.docker_image else None
        # Its own session, dying with us: a killed task must not leave a server behind (pipeline_tasks/process.py).
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


def _input_objects(uri: str) -> list[tuple[str, str]]:
    """(URI, name relative to the prefix) of every input object; S3Prefix semantics: the URI may name
    one object or a prefix/folder."""
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        if storage.head(loc) is not None:
            return [(uri, Path(loc.key).name)]
    elif loc.is_file():
        return [(uri, loc.name)]
    files = storage.list_files(uri)
    objects = [(storage.join(uri, *rel.split("/")), rel) for rel in sorted(files) if not rel.endswith("/")]
    if not objects:
        raise TransformJobError(f"{uri}: no input objects")
    return objects


def run_transform_job(config: dict[str, Any], workdir: str | os.PathLike[str] | None = None,
                      request_timeout_s: float = 3600.0, backend: str = "local",
                      image: str | None = None, mini_batch_lines: int | None = MINI_BATCH_LINES,
                      progress_interval_s: float | None = None) -> dict[str, Any]:
    """Execute ``{"Model": …, "Transform": …}`` here; returns a DescribeTransformJob-like dict.

    Mini-batches hold at most `mini_batch_lines` lines (None: as many as fit ``MaxPayloadInMB``), so
    that progress, logged every `progress_interval_s` (:data:`PROGRESS_INTERVAL_S`), moves as each
    answer comes back.

    ``backend`` local runs ``container/serve`` as a process; docker runs the image's ``serve``
    (``PrimaryContainer.Image`` unless `image` is given; ``--gpus all`` when GPUs exist). A failure
    returns ``TransformJobStatus: Failed`` with the ``FailureReason`` (and publishes nothing for the
    object that failed), as SageMaker reports it; callers decide whether that raises. No Docker engine
    is an error (DockerUnavailableError), not a failed job."""
    model_req, job = config["Model"], config["Transform"]
    name = job["TransformJobName"]
    _check_request(job)
    if backend not in ("local", "docker"):
        raise ValueError(f"backend must be local or docker (sagemaker is the operator's), got {backend!r}")
    docker_image, gpus = None, False
    if backend == "docker":
        from pipeline_tasks.training_job import docker_available, nvidia_gpus_available

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
                for uri, rel in _input_objects(input_uri):
                    with _local_input(uri, work / "in" / str(len(outputs))) as local_in:
                        out_uri = storage.join(output_path, *(rel + OUTPUT_SUFFIX).split("/"))
                        with _local_output(out_uri, work / "out" / str(len(outputs))) as out:
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


def _check_request(job: dict[str, Any]) -> None:
    """The settings this emulation implements; anything else would silently behave differently."""
    tin, tout = job["TransformInput"], job["TransformOutput"]
    wanted = {"SplitType": (tin.get("SplitType"), "Line"), "BatchStrategy": (job.get("BatchStrategy"), "MultiRecord"),
              "AssembleWith": (tout.get("AssembleWith"), "Line"),
              "ContentType": (tin.get("ContentType"), JSONLINES_CONTENT_TYPE),
              "Accept": (tout.get("Accept"), JSONLINES_CONTENT_TYPE),
              "CompressionType": (tin.get("CompressionType", "None"), "None"),
              "S3DataType": (tin["DataSource"]["S3DataSource"].get("S3DataType"), "S3Prefix")}
    bad = [f"{k}={got!r} (expected {want!r})" for k, (got, want) in wanted.items() if got != want]
    if bad:
        raise ValueError("the local transform backend implements the JSON Lines transform only: " + ", ".join(bad))
