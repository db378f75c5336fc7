"""The SageMaker inference HTTP contract (DESIGN §4) as a Flask app; ``container/serve`` runs it under gunicorn.

All translation and content-type logic lives in :func:`model.inference.invoke`, which batch transform and
evaluation share, so this module only does what is HTTP-specific: reading the body within
``SAGEMAKER_MAX_PAYLOAD_IN_MB``, mapping :class:`~model.inference.RequestError` to a status code with a
JSON ``{"error": …}`` body, and answering ``/ping`` and ``/execution-parameters``.

The settings (workers, threads, port, payload limit) are read here, as pure functions of the
environment, so that the launcher (in the gunicorn master) and the app (in each worker) agree on them and
both can be tested without starting a server.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import flask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from model.checkpoint import CONFIG_FILE, HYPERPARAMETERS_FILE, PARAMS_FILE
from model.inference import InferenceConfig, RequestError, Translator, invoke
from model.sagemaker import SageMakerPaths
from model.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG

log = logging.getLogger("serving")

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_TIMEOUT_S = 300
DEFAULT_MAX_PAYLOAD_MB = 6       # SageMaker's own default for real-time endpoints and batch transform
DEFAULT_THREADS = 4              # per worker: /ping answers while another thread decodes
MODEL_FILES = (PARAMS_FILE, CONFIG_FILE, HYPERPARAMETERS_FILE, "vocab.src.json", "vocab.trg.json")


def _positive_int(environ: Mapping[str, str], var: str, default: int) -> int:
    """An optional integer setting; a bad value names its variable (the server must not start on it)."""
    raw = environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r}: expected an integer") from None
    if value < 1:
        raise ValueError(f"{var}={raw!r}: must be >= 1")
    return value


def gpu_count() -> int:
    """GPUs visible to this process. ``torch.cuda.device_count`` asks NVML, so calling it in the gunicorn
    master does not initialise CUDA, which would break the workers forked after it."""
    import torch

    return torch.cuda.device_count()


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    threads: int
    timeout_s: int
    torch_threads: int      # per worker: the CPUs shared out, so that workers do not oversubscribe them
    max_payload_mb: int
    gpus: int

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, gpus: int | None = None,
                 cpus: int | None = None) -> ServerSettings:
        """SageMaker's variables (``SAGEMAKER_BIND_TO_PORT``, ``SAGEMAKER_MODEL_SERVER_WORKERS``,
        ``SAGEMAKER_MODEL_SERVER_TIMEOUT``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``) plus ours
        (``SEQ2SEQ_BIND_HOST``, ``SEQ2SEQ_SERVER_THREADS``, ``SEQ2SEQ_TORCH_THREADS``). Default workers:
        one per GPU (each holds a model copy on its own GPU), else a quarter of the CPUs, since a CPU
        worker decodes with several torch threads."""
        env = os.environ if environ is None else environ
        gpus = gpu_count() if gpus is None else gpus
        cpus = (os.cpu_count() or 1) if cpus is None else cpus
        workers = _positive_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", gpus if gpus > 0 else max(1, cpus // 4))
        port = _positive_int(env, "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)
        if port > 65535:
            raise ValueError(f"SAGEMAKER_BIND_TO_PORT={port}: not a TCP port")
        return cls(
            host=env.get("SEQ2SEQ_BIND_HOST", "").strip() or DEFAULT_HOST,
            port=port,
            workers=workers,
            threads=_positive_int(env, "SEQ2SEQ_SERVER_THREADS", DEFAULT_THREADS),
            timeout_s=_positive_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S),
            torch_threads=_positive_int(env, "SEQ2SEQ_TORCH_THREADS", max(1, cpus // workers)),
            max_payload_mb=_positive_int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB),
            gpus=gpus,
        )


def pick_gpu(in_use: list[int], gpus: int) -> int:
    """The GPU for a new worker: the least used by the live workers (lowest index on ties), so worker k
    gets GPU k % n at start and a restarted worker takes the place its predecessor left."""
    return min(range(gpus), key=lambda g: (in_use.count(g), g))


def check_model_dir(model_dir: Path, config: InferenceConfig) -> None:
    """Cheap checks, in the master before any worker starts, for what would otherwise make every worker
    fail to load: one clear error instead of a crash per worker."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist (SageMaker unpacks model.tar.gz "
                                f"there; outside a container set SAGEMAKER_BASE_DIR)")
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"model directory {model_dir} has no {', '.join(missing)}: not a model written "
                                f"by our train")
    if config.text_format == "raw" and not (model_dir / TOKENIZER_CONFIG).is_file():
        raise ValueError(f"SEQ2SEQ_TEXT_FORMAT=raw needs the model's tokenizer, and {model_dir} has no "
                         f"{TOKENIZER_CONFIG}")


def load_translator(environ: Mapping[str, str] | None = None) -> Translator:
    """The model SageMaker unpacked into ``/opt/ml/model``, configured by ``SEQ2SEQ_*`` variables, on
    ``$SEQ2SEQ_DEVICE`` (set per worker by ``serve``) or the GPU when there is one."""
    config = InferenceConfig.from_env(environ)
    return Translator.load(SageMakerPaths.from_env(dict(environ) if environ is not None else None).model_dir,
                           config)


def _error(status: int, message: str) -> flask.Response:
    return flask.Response(json.dumps({"error": message}, ensure_ascii=False) + "\n", status=status,
                          mimetype="application/json")


def read_body(limit_bytes: int, limit_mb: int) -> bytes:
    """The request body, refused with 413 from ``Content-Length`` before any of it is read, and on its
    actual size for a chunked body, of which no more than the limit (plus one byte) is read."""
    request = flask.request
    too_large = (f"is over the {limit_mb} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB={limit_mb}): split it into "
                 f"smaller requests")
    length = request.content_length
    if length is not None and length > limit_bytes:
        raise RequestError(413, f"payload of {length} bytes (Content-Length) {too_large}")
    # werkzeug stops a body without Content-Length (chunked) at max_content_length, silently: read one byte
    # more than allowed so that a body over the limit shows as one.
    request.max_content_length = limit_bytes + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestError(413, f"payload {too_large}") from None
    if len(body) > limit_bytes:
        raise RequestError(413, f"payload {too_large}")
    return body


def create_app(translator_factory: Callable[[], Translator] | None = None,
               settings: ServerSettings | None = None) -> flask.Flask:
    """The app with its model already loaded, so that a worker whose app exists answers ``/ping`` 200:
    gunicorn builds the app in each worker before that worker accepts a connection."""
    settings = settings or ServerSettings.from_env()
    translator = (translator_factory or load_translator)()
    app = flask.Flask("serving")
    app.extensions["translator"] = translator

    @app.get("/ping")
    def ping() -> flask.Response:
        return flask.Response(json.dumps({"status": "ok"}) + "\n", mimetype="application/json")

    @app.get("/execution-parameters")
    def execution_parameters() -> flask.Response:
        return flask.jsonify({"MaxConcurrentTransforms": settings.workers, "BatchStrategy": "MULTI_RECORD",
                              "MaxPayloadInMB": settings.max_payload_mb})

    @app.post("/invocations")
    def invocations() -> flask.Response:
        request = flask.request
        try:
            body = read_body(settings.max_payload_bytes, settings.max_payload_mb)
            out, ctype = invoke(translator, body, request.headers.get("Content-Type"),
                                request.headers.get("Accept"))
        except RequestError as e:
            log.info("invocations: %d %s", e.status, e)
            return _error(e.status, str(e))
        return flask.Response(out, mimetype=ctype)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> flask.Response:
        return _error(e.code or 500, f"{e.name}: {e.description}")

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> flask.Response:
        # A bug, not bad input: log the traceback; the worker carries on with the next request.
        log.exception("invocations: unexpected error on %s %s", flask.request.method, flask.request.path)
        return _error(500, f"internal server error: {type(e).__name__}: {e}")

    return app
