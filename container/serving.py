"""The SageMaker inference HTTP contract (docs/ARCHITECTURE.md §4) as an ASGI app (Starlette), and the event-loop worker
that ``container/serve`` runs it in under gunicorn (uvicorn's HTTP protocol on an asyncio/uvloop loop).

All translation and content-type logic lives in :func:`model.serving_codecs.invoke`, which batch transform and
evaluation share, so this module only does what is HTTP-specific: reading the body within
``SAGEMAKER_MAX_PAYLOAD_IN_MB``, mapping :class:`~model.serving_codecs.RequestError` to a status code with a
JSON ``{"error": …}`` body, and answering ``/ping`` and ``/execution-parameters``.

Why an event loop and not a thread per connection: SageMaker takes a ``/ping`` that does not answer
within 2 s for a dead container. With a fixed number of threads (gunicorn gthread), a few clients that
send their headers slowly, or a few long decodes, hold every thread and ``/ping`` waits behind them. Here
connections cost no thread: headers and bodies are read on the loop (a client that does not finish its
headers within ``SEQ2SEQ_HEADER_TIMEOUT`` is dropped, one whose body stalls for
``SEQ2SEQ_BODY_TIMEOUT`` gets 408), ``/ping`` is answered on the loop, and decoding runs on a small
bounded thread pool (``SEQ2SEQ_SERVER_THREADS``) whose queue holds the requests waiting for it.

The settings (workers, threads, port, payload limit, timeouts) are read here, as pure functions of the
environment, so that the launcher (in the gunicorn master) and the app (in each worker) agree on them and
both can be tested without starting a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model import engines
from model.constants import JSON_CONTENT_TYPE, MODEL_FILES, TOKENIZER_FILE
from model.inference_config import InferenceConfig
from model.sagemaker import SageMakerPaths
from model.serving_codecs import RequestError, invoke
from model.translator import Translator

log = logging.getLogger("serving")

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_TIMEOUT_S = 300
DEFAULT_MAX_PAYLOAD_MB = 6       # SageMaker's own default for real-time endpoints and batch transform
DEFAULT_THREADS = 4              # decode threads per worker (the Translator decodes one batch at a time)
DEFAULT_HEADER_TIMEOUT_S = 10    # SageMaker's front end sends its headers at once; a trickle is not a client
DEFAULT_BODY_TIMEOUT_S = 60      # the longest silence within a request body
DEFAULT_KEEPALIVE_S = 5          # an idle kept-alive connection is closed after this
MAX_HEADER_BYTES = 64 * 1024     # request line + header fields; more is refused (431) instead of buffered


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
    threads: int            # per worker: the decode pool (requests beyond it wait in its queue, not in a thread)
    timeout_s: int
    torch_threads: int      # per worker: the CPUs shared out, so that workers do not oversubscribe them
    max_payload_mb: int
    gpus: int
    header_timeout_s: int = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: int = DEFAULT_BODY_TIMEOUT_S
    keepalive_s: int = DEFAULT_KEEPALIVE_S

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, gpus: int | None = None,
                 cpus: int | None = None) -> ServerSettings:
        """SageMaker's variables (``SAGEMAKER_BIND_TO_PORT``, ``SAGEMAKER_MODEL_SERVER_WORKERS``,
        ``SAGEMAKER_MODEL_SERVER_TIMEOUT``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``) plus ours
        (``SEQ2SEQ_BIND_HOST``, ``SEQ2SEQ_SERVER_THREADS``, ``SEQ2SEQ_TORCH_THREADS``,
        ``SEQ2SEQ_HEADER_TIMEOUT``, ``SEQ2SEQ_BODY_TIMEOUT``, ``SEQ2SEQ_KEEPALIVE_TIMEOUT``). Default
        workers: one per GPU (each holds a model copy on its own GPU), else a quarter of the CPUs, since a
        CPU worker decodes with several torch threads."""
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
            header_timeout_s=_positive_int(env, "SEQ2SEQ_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=_positive_int(env, "SEQ2SEQ_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S),
            keepalive_s=_positive_int(env, "SEQ2SEQ_KEEPALIVE_TIMEOUT", DEFAULT_KEEPALIVE_S),
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
    if config.text_format == "raw" and not (model_dir / TOKENIZER_FILE).is_file():
        raise ValueError(f"SEQ2SEQ_TEXT_FORMAT=raw needs the model's tokenizer, and {model_dir} has no "
                         f"{TOKENIZER_FILE}")
    engines.check(model_dir, config)  # SEQ2SEQ_ENGINE=ctranslate2: the library, a transformer, its export


def load_translator(environ: Mapping[str, str] | None = None) -> Translator:
    """The model SageMaker unpacked into ``/opt/ml/model``, configured by ``SEQ2SEQ_*`` variables, on
    ``$SEQ2SEQ_DEVICE`` (set per worker by ``serve``) or the GPU when there is one."""
    config = InferenceConfig.from_env(environ)
    return Translator.load(SageMakerPaths.from_env(dict(environ) if environ is not None else None).model_dir,
                           config)


# --- the app ---------------------------------------------------------------------------------------------

def error_body(message: str) -> bytes:
    """``{"error": …}`` as bytes that always encode: a message never carries a lone surrogate on purpose,
    but an error path must not fail on one (it would turn a 4xx into a 500)."""
    return (json.dumps({"error": message}, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON_CONTENT_TYPE, headers=headers)


class ClientGone(Exception):
    """The client closed the connection before its request body arrived: there is no one to answer."""


async def read_body(request: Request, limit_bytes: int, limit_mb: int, idle_timeout_s: float) -> bytes:
    """The request body, refused with 413 from ``Content-Length`` before any of it is read, and on its
    actual size for a chunked body, of which no more than the limit (plus one piece) is held. A body that
    stops arriving for `idle_timeout_s` is a 408: a slow client holds a connection, never a thread."""
    too_large = (f"is over the {limit_mb} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB={limit_mb}): split it into "
                 f"smaller requests")
    raw_length = request.headers.get("content-length")
    if raw_length is not None and raw_length.strip().isdigit() and int(raw_length) > limit_bytes:
        raise RequestError(413, f"payload of {int(raw_length)} bytes (Content-Length) {too_large}")
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), idle_timeout_s)
        except TimeoutError:
            raise RequestError(408, f"request body stalled: nothing arrived for {idle_timeout_s:g} s after "
                                    f"{size} bytes (SEQ2SEQ_BODY_TIMEOUT={idle_timeout_s:g})") from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        piece = message.get("body", b"")
        size += len(piece)
        if size > limit_bytes:
            raise RequestError(413, f"payload {too_large}")
        chunks.append(piece)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(translator_factory: Callable[[], Translator] | None = None,
               settings: ServerSettings | None = None) -> Starlette:
    """The app with its model already loaded, so that a worker whose app exists answers ``/ping`` 200:
    gunicorn builds the app in each worker before that worker accepts a connection."""
    settings = settings or ServerSettings.from_env()
    translator = (translator_factory or load_translator)()
    # A fixed pool: decodes queue here (holding their body, at most the payload limit each) instead of each
    # taking a thread, and the event loop stays free for /ping and for reading other requests.
    pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="decode")

    async def ping(request: Request) -> Response:
        return Response(b'{"status": "ok"}\n', media_type=JSON_CONTENT_TYPE)

    async def execution_parameters(request: Request) -> Response:
        body = {"MaxConcurrentTransforms": settings.workers, "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": settings.max_payload_mb}
        return Response(json.dumps(body).encode(), media_type=JSON_CONTENT_TYPE)

    async def invocations(request: Request) -> Response:
        try:
            body = await read_body(request, settings.max_payload_bytes, settings.max_payload_mb,
                                   settings.body_timeout_s)
            out, ctype = await asyncio.get_running_loop().run_in_executor(
                pool, invoke, translator, body, request.headers.get("content-type"), request.headers.get("accept"))
        except RequestError as e:
            log.info("invocations: %d %s", e.status, e)
            # a stalled body may still trickle in: close rather than parse the rest as the next request
            return _error(e.status, str(e), {"Connection": "close"} if e.status == 408 else None)
        except ClientGone:
            log.info("invocations: the client left before sending its whole body")
            return _error(400, "client disconnected")
        except Exception as e:
            # A bug, not bad input: log the traceback; the worker carries on with the next request.
            log.exception("invocations: unexpected error on %s %s", request.method, request.url.path)
            return _error(500, f"internal server error: {type(e).__name__}: {e}")
        return Response(out, media_type=ctype)

    routes = [Route("/ping", ping, methods=["GET"]),
              Route("/execution-parameters", execution_parameters, methods=["GET"]),
              Route("/invocations", invocations, methods=["POST"])]
    known = ", ".join(f"{sorted(r.methods - {'HEAD'})[0]} {r.path}" for r in routes)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path} (this server has "
                                       f"{known})", exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: unexpected},
                    lifespan=lifespan)
    app.state.translator = translator
    app.state.pool = pool
    return app


# --- the connection: header timeout and size limit --------------------------------------------------------

class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), plus what it lacks against slow or hostile clients: a
    deadline for the request line and headers (from the connection's start, or from a kept-alive
    request's first byte) and a cap on their size. uvicorn itself only times out *idle* kept-alive
    connections, so a client sending one header byte a second would keep its connection for ever."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: int = MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is None:  # after a refusal the connection is closing: ignore what still comes
            super().data_received(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:  # a kept-alive connection's next request: its headers have a deadline
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error with a plain-text 400; a refusal of ours raised the error
        if self._refusal is not None:
            self._send_refusal()
        else:
            super().send_400_response(msg)

    # ours
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.info("%s: request headers not complete after %g s (SEQ2SEQ_HEADER_TIMEOUT): connection closed",
                 _peer(self.client), self.header_timeout_s)
        self._refusal = (408, f"request headers not complete within {self.header_timeout_s:g} s "
                              f"(SEQ2SEQ_HEADER_TIMEOUT={self.header_timeout_s:g})")
        self._send_refusal()

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes and self._refusal is None:
            log.info("%s: request headers over %d bytes: refused", _peer(self.client), self.max_header_bytes)
            self._refusal = (431, f"request line and headers are over {self.max_header_bytes} bytes")
            raise ValueError(self._refusal[1])  # stops the parser; uvicorn then calls send_400_response

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        status, message = self._refusal
        self._cancel_header_timer()
        body = error_body(message)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def guarded_protocol(header_timeout_s: float, max_header_bytes: int = MAX_HEADER_BYTES) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with these limits (uvicorn builds one per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes})


# --- the gunicorn worker -----------------------------------------------------------------------------------

class EventLoopWorker(Worker):
    """A gunicorn worker that serves the ASGI app with uvicorn on an event loop (uvloop when installed).
    gunicorn keeps doing what it does well: the master checks settings, forks, pins GPUs, restarts a dead
    worker, halts when a worker cannot boot, watches the heartbeat (``SAGEMAKER_MODEL_SERVER_TIMEOUT``) and
    shuts down gracefully on SIGTERM. (uvicorn's own ``uvicorn.workers`` is deprecated; this is the same
    few lines, with our protocol and settings.)"""

    settings: ServerSettings  # set by worker_class()

    def init_signals(self) -> None:
        # uvicorn installs its own SIGINT/SIGTERM handlers while it serves, and on leaving re-raises the
        # signal it got into the handlers found before: make those harmless so that the worker exits 0.
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def run(self) -> None:
        import uvicorn

        if not self.alive:  # told to stop while the model was loading
            return
        s = self.settings
        config = uvicorn.Config(
            app=self.wsgi, http=guarded_protocol(s.header_timeout_s), loop="auto", lifespan="on", log_config=None,
            access_log=False, proxy_headers=False, timeout_keep_alive=s.keepalive_s,
            timeout_notify=self.timeout, callback_notify=self._notify,  # self.timeout: half of gunicorn's
            timeout_graceful_shutdown=max(1, int(self.cfg.graceful_timeout) - 1))
        server = uvicorn.Server(config)
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(self._serve(server))
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _serve(self, server: Any) -> None:
        # The master asks for a quick stop with SIGQUIT; uvicorn does not listen for it.
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, setattr, server, "should_exit", True)
        # the sockets themselves, not gunicorn's wrappers: the loop's server closes them on shutdown, and the
        # wrappers would then close them again (EBADF in the log)
        await server.serve(sockets=[getattr(s, "sock", s) for s in self.sockets])

    async def _notify(self) -> None:
        self.notify()


def worker_class(settings: ServerSettings) -> type[EventLoopWorker]:
    """The worker class for gunicorn's ``worker_class``, carrying the settings into the forked workers."""
    return type("EventLoopWorker", (EventLoopWorker,), {"settings": settings})

