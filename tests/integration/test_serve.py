"""`container/serve` as SageMaker runs it, but as a plain process under $SAGEMAKER_BASE_DIR: real gunicorn
with its event-loop workers, real HTTP on 127.0.0.1, the copy model (which echoes its input, so every answer
can be checked against its request). One server serves the module; a second one runs with the defaults a
2-CPU machine gets (1 worker, 4 decode threads) and a short header timeout for the slow-client and
long-decode tests; failing starts and the `entrypoint.sh serve` path start their own. Plus the serving
helpers (settings from the environment, GPU pinning) and the app's 500 path, without a server."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from model import record_pb2, recordio
from model.constants import JSON_CONTENT_TYPE, JSONLINES_CONTENT_TYPE, RECORDIO_CONTENT_TYPE
from model.inference_config import InferenceConfig
from model.translator import Translator
from tests.conftest import ROOT
from tests.models import jsonlines, records, sentences

sys.path.insert(0, str(ROOT / "container"))
import serving

SERVE = ROOT / "container" / "serve"
ENTRYPOINT = ROOT / "container" / "entrypoint.sh"
MAX_PAYLOAD_MB = 1


def targets(body: bytes) -> list[str]:
    return [json.loads(line)["target"] for line in body.decode().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(root: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQ2SEQ_", "SAGEMAKER_"))}
    env.update({"SAGEMAKER_BASE_DIR": str(root), "SEQ2SEQ_BIND_HOST": "127.0.0.1",
                "SAGEMAKER_BIND_TO_PORT": str(port), "OMP_NUM_THREADS": "1",
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])})
    env.update(extra)
    return env


@dataclass
class Running:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM to the whole process group (master and workers), SIGKILL if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[Running]:
    url = f"http://127.0.0.1:{env['SAGEMAKER_BIND_TO_PORT']}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
                                start_new_session=True)
    server = Running(url, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}:\n{server.log_text()}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(url + "/ping", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"no /ping 200 within {timeout} s:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ml_root(copy_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opt-ml")
    shutil.copytree(copy_model, root / "model")
    return root


@pytest.fixture(scope="module")
def server(ml_root) -> Iterator[Running]:
    env = serve_env(ml_root, free_port(), SAGEMAKER_MODEL_SERVER_WORKERS="2",
                    SAGEMAKER_MAX_PAYLOAD_IN_MB=str(MAX_PAYLOAD_MB), SEQ2SEQ_UNKNOWN_TOKENS="reject")
    with running([sys.executable, str(SERVE)], env, ml_root / "serve.log") as s:
        yield s


HEADER_TIMEOUT_S = 3
BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def default_server(ml_root) -> Iterator[Running]:
    """What a 2-CPU machine runs by default (1 worker x 4 decode threads), with short client timeouts."""
    env = serve_env(ml_root, free_port(), SAGEMAKER_MODEL_SERVER_WORKERS="1", SEQ2SEQ_SERVER_THREADS="4",
                    SEQ2SEQ_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S), SEQ2SEQ_BODY_TIMEOUT=str(BODY_TIMEOUT_S))
    with running([sys.executable, str(SERVE)], env, ml_root / "serve-default.log") as s:
        yield s


@pytest.fixture(scope="module")
def reference(copy_model):
    """What the model itself says for a list of sentences (in-process, one thread as the servers run)."""
    import torch

    translator = Translator.load(copy_model, InferenceConfig(), "cpu")

    def translate(texts: list[str]) -> list[str]:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return translator.translate_texts(texts)
        finally:
            torch.set_num_threads(before)

    return translate


def post(server: Running, body: bytes | Iterator[bytes], content_type: str | None = JSONLINES_CONTENT_TYPE,
         accept: str | None = None) -> requests.Response:
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v is not None}
    return requests.post(server.url + "/invocations", data=body, headers=headers, timeout=60)


def assert_still_serves(server: Running) -> None:
    texts = sentences(5, seed=99)
    r = post(server, jsonlines(texts))
    assert r.status_code == 200 and targets(r.content) == texts


# --- the contract over HTTP ----------------------------------------------------------------------------

def test_ping_and_execution_parameters(server):
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    r = requests.get(server.url + "/execution-parameters", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD",
                        "MaxPayloadInMB": MAX_PAYLOAD_MB}


def test_jsonlines(server):
    texts = sentences(30, seed=1)
    r = post(server, jsonlines(texts), accept=JSONLINES_CONTENT_TYPE)
    assert r.status_code == 200 and r.headers["Content-Type"] == JSONLINES_CONTENT_TYPE
    assert targets(r.content) == texts


def test_json_with_attention_matrix(server):
    request = {"instances": [{"data": "a b c d", "configuration": {"attention_matrix": "true"}},
                             {"data": "p o n m l k"}]}
    r = post(server, json.dumps(request).encode(), JSON_CONTENT_TYPE, accept=JSON_CONTENT_TYPE)
    assert r.status_code == 200 and r.headers["Content-Type"] == JSON_CONTENT_TYPE
    first, second = r.json()["predictions"]
    assert (first["target"], second) == ("a b c d", {"target": "p o n m l k"})
    assert len(first["matrix"]) == 4 and {len(row) for row in first["matrix"]} == {4}


def test_recordio(server):
    ids = [[4, 5, 6], [19, 18, 17, 16, 15], [7, 7, 8]]
    r = post(server, records(ids), RECORDIO_CONTENT_TYPE, accept=RECORDIO_CONTENT_TYPE)
    assert r.status_code == 200 and r.headers["Content-Type"] == RECORDIO_CONTENT_TYPE
    out = [record_pb2.Record.FromString(p) for _, p in recordio.iter_frames(io.BytesIO(r.content), "response")]
    assert [list(rec.features["target"].int32_tensor.values) for rec in out] == ids


@pytest.mark.parametrize(("body", "content_type", "accept", "status", "expected"), [
    (b'{"instances": [{"data": "a b"', JSON_CONTENT_TYPE, None, 400, "not valid JSON"),
    (b'{"source": "a b"}\n{"source": "c d"}\n{"text": "e"}\n', JSONLINES_CONTENT_TYPE, None, 400,
     'line 3: expected an object with "source"'),
    (b'{"source": "a b"}\n{"source": ""}\n', JSONLINES_CONTENT_TYPE, None, 400, "line 2: empty source"),
    (b'{"source": "a b zz c"}\n', JSONLINES_CONTENT_TYPE, None, 400,
     "line 1: 1 token(s) not in the source vocabulary: 'zz'"),
    (b"", JSONLINES_CONTENT_TYPE, None, 400, "empty request"),
    (records([[4, 5], [4, 999]]), RECORDIO_CONTENT_TYPE, None, 400, "record 2: source id(s) 999 not allowed"),
    (b"\x00\x01\x02\x03\x04\x05\x06\x07", RECORDIO_CONTENT_TYPE, None, 400, "request body"),
    (b"a b c", "text/csv", None, 415, "'text/csv' is not supported"),
    (b"a b c", None, None, 415, "is not supported"),
    (b'{"source": "a b"}\n', JSONLINES_CONTENT_TYPE, "text/csv", 406, "cannot answer a application/jsonlines request"),
    # the client's mistakes that used to be 500s: a lone surrogate, nesting too deep to decode, a huge integer
    (b'{"source": "a b"}\n{"source": "c \\ud800 d"}\n', JSONLINES_CONTENT_TYPE, None, 400,
     "line 2: not valid Unicode: a lone surrogate U+D800 at character 2"),
    (b'{"instances": [{"data": "a b"}, {"data": "\\udfff"}]}', JSON_CONTENT_TYPE, None, 400,
     "instances[1]: not valid Unicode: a lone surrogate U+DFFF"),
    (b'{"source": "a b"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", JSONLINES_CONTENT_TYPE, None, 400,
     "line 2: JSON nested too deeply to decode (arrays/objects: over 100 levels at character 100)"),
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON_CONTENT_TYPE, None, 400,
     "request body is JSON nested too deeply to decode"),
    (b'{"source": ' + b"7" * 5000 + b"}\n", JSONLINES_CONTENT_TYPE, None, 400, "line 1: JSON that cannot be decoded"),
])
def test_bad_request_is_4xx_with_a_message_and_the_server_carries_on(server, body, content_type, accept, status,
                                                                     expected):
    r = post(server, body, content_type, accept)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json" and expected in r.json()["error"], r.text
    assert_still_serves(server)
    assert "Traceback" not in server.log_text()


def test_payload_over_the_limit_is_413_by_content_length(server):
    body = jsonlines(["a b c"] * 60_000)
    assert len(body) > MAX_PAYLOAD_MB * 1024 * 1024
    r = post(server, body)
    assert r.status_code == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in r.json()["error"]
    assert str(len(body)) in r.json()["error"]
    assert_still_serves(server)


def test_payload_over_the_limit_is_413_without_content_length(server):
    chunk = jsonlines(["a b c"] * 1000)  # ~20 kB; sent chunked, so only the size read can tell
    r = post(server, iter([chunk] * 60))
    assert r.request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.request.headers
    assert r.status_code == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in r.json()["error"]
    assert_still_serves(server)


def test_chunked_request_under_the_limit(server):
    texts = sentences(6, seed=5)
    r = post(server, iter([jsonlines(texts[:3]), jsonlines(texts[3:])]))
    assert r.status_code == 200 and targets(r.content) == texts


def test_unknown_routes_and_methods_answer_json(server):
    r = requests.get(server.url + "/invocations", timeout=5)
    assert r.status_code == 405 and "error" in r.json()
    r = requests.get(server.url + "/nope", timeout=5)
    assert r.status_code == 404 and "error" in r.json()


def test_concurrent_requests_each_get_their_own_answers_in_order(server):
    batches = [sentences(12, seed=100 + i) for i in range(32)]

    def one(texts: list[str]) -> list[str]:
        r = post(server, jsonlines(texts))
        assert r.status_code == 200, r.text
        return targets(r.content)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, batches))
    assert answers == batches


# --- starting and stopping ------------------------------------------------------------------------------

def run_serve(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SERVE)], env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


@pytest.mark.parametrize(("extra", "expected"), [
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "two"}, "SAGEMAKER_MODEL_SERVER_WORKERS='two': expected an integer"),
    ({"SEQ2SEQ_BEAM_SIZE": "0"}, "SEQ2SEQ_BEAM_SIZE='0'"),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB='0': must be >= 1"),
])
def test_bad_setting_exits_at_once_with_one_line(ml_root, extra, expected):
    result = run_serve(serve_env(ml_root, free_port(), **extra))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("serve: ") and expected in lines[0]


def test_missing_model_exits_at_once_with_one_line(tmp_path):
    start = time.monotonic()
    result = run_serve(serve_env(tmp_path, free_port()))
    assert result.returncode != 0 and time.monotonic() - start < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "model") in lines[0] and "does not exist" in lines[0], result.stderr


def test_incomplete_model_names_the_missing_file(ml_root, tmp_path):
    shutil.copytree(ml_root / "model", tmp_path / "model", ignore=shutil.ignore_patterns("params.pt"))
    result = run_serve(serve_env(tmp_path, free_port()))
    assert result.returncode != 0 and "has no params.pt" in result.stderr


def test_model_that_fails_to_load_stops_the_server_instead_of_looping(ml_root, tmp_path):
    shutil.copytree(ml_root / "model", tmp_path / "model")
    (tmp_path / "model" / "params.pt").write_bytes(b"not a torch file")
    result = run_serve(serve_env(tmp_path, free_port(), SAGEMAKER_MODEL_SERVER_WORKERS="1"), timeout=120)
    assert result.returncode != 0 and "Worker failed to boot" in result.stderr, result.stderr


def test_entrypoint_serve_and_graceful_sigterm(ml_root, tmp_path):
    env = serve_env(ml_root, free_port(), SAGEMAKER_MODEL_SERVER_WORKERS="1")
    with running([str(ENTRYPOINT), "serve"], env, tmp_path / "serve.log") as s:
        assert_still_serves(s)
        os.kill(s.proc.pid, signal.SIGTERM)  # exec'ed: the entrypoint's pid is gunicorn's master
        assert s.proc.wait(timeout=30) == 0
    log = s.log_text()
    assert "1 worker(s) x 4 thread(s) on 127.0.0.1" in log and "Shutting down" in log


# --- the helpers and the app, without a server ---------------------------------------------------------

def test_settings_defaults_and_environment():
    cpu = serving.ServerSettings.from_env({}, gpus=0, cpus=16)
    assert (cpu.host, cpu.port, cpu.workers, cpu.torch_threads, cpu.timeout_s, cpu.max_payload_mb) == \
           ("0.0.0.0", 8080, 4, 4, 300, 6)
    assert serving.ServerSettings.from_env({}, gpus=0, cpus=2).workers == 1
    gpu = serving.ServerSettings.from_env({}, gpus=8, cpus=96)
    assert (gpu.workers, gpu.torch_threads) == (8, 12)
    env = {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3", "SEQ2SEQ_TORCH_THREADS": "2",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SEQ2SEQ_BIND_HOST": "::1"}
    custom = serving.ServerSettings.from_env(env, gpus=0, cpus=16)
    assert (custom.host, custom.port, custom.workers, custom.torch_threads, custom.timeout_s) == \
           ("::1", 9000, 3, 2, 60)
    assert custom.max_payload_bytes == 20 * 1024 * 1024
    with pytest.raises(ValueError, match="SAGEMAKER_BIND_TO_PORT=70000"):
        serving.ServerSettings.from_env({"SAGEMAKER_BIND_TO_PORT": "70000"}, gpus=0, cpus=1)


def test_workers_spread_over_gpus():
    in_use: list[int] = []
    for _ in range(5):
        in_use.append(serving.pick_gpu(in_use, 2))
    assert in_use == [0, 1, 0, 1, 0]
    assert serving.pick_gpu([0, 2, 0, 2], 3) == 1  # a restarted worker takes the GPU its predecessor left


def app_test_client(translator: Translator) -> Iterator:
    """The app in-process (Starlette's test client, lifespan included), around a loaded translator."""
    from starlette.exceptions import StarletteDeprecationWarning

    with warnings.catch_warnings():  # starlette would rather have httpx2 than the httpx installed
        warnings.simplefilter("ignore", StarletteDeprecationWarning)
        from starlette.testclient import TestClient

    settings = serving.ServerSettings.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}, gpus=0, cpus=4)
    with TestClient(serving.create_app(lambda: translator, settings=settings)) as client:
        yield client


@pytest.fixture
def app_client(copy_model, one_torch_thread):
    translator = Translator.load(copy_model, InferenceConfig(), "cpu")
    for client in app_test_client(translator):
        yield client, translator


def test_unexpected_error_is_500_logged_with_traceback_and_the_app_carries_on(app_client, caplog, monkeypatch):
    client, translator = app_client
    real = translator.translate
    monkeypatch.setattr(translator, "translate", lambda *a, **k: [][0])
    with caplog.at_level(logging.ERROR, logger="serving"):
        r = client.post("/invocations", content=jsonlines(["a b c"]), headers={"Content-Type": JSONLINES_CONTENT_TYPE})
    assert r.status_code == 500 and "IndexError" in r.json()["error"]
    assert any(rec.exc_info and rec.exc_info[0] is IndexError for rec in caplog.records)
    monkeypatch.setattr(translator, "translate", real)
    r = client.post("/invocations", content=jsonlines(["a b c"]), headers={"Content-Type": JSONLINES_CONTENT_TYPE})
    assert r.status_code == 200 and targets(r.content) == ["a b c"]
    assert client.get("/ping").status_code == 200


@pytest.mark.parametrize("on_error", ["fail", "record"])
def test_lone_surrogate_with_the_sentencepiece_tokenizer_is_the_clients_error(wmt_model, one_torch_thread,
                                                                             on_error):
    # SentencePiece cannot take a lone surrogate (it raised, a 500); it is the client's mistake, named by line
    translator = Translator.load(wmt_model, InferenceConfig(beam_size=1, max_output_length=10, on_error=on_error),
                                 "cpu")
    body = b'{"source": "Thank you ."}\n{"source": "Thank \\ud83d you ."}\n{"source": "Good morning ."}\n'
    for client in app_test_client(translator):
        r = client.post("/invocations", content=body, headers={"Content-Type": JSONLINES_CONTENT_TYPE})
        if on_error == "fail":
            assert r.status_code == 400 and r.json()["error"].startswith("line 2: not valid Unicode: a lone surrogate "
                                                                         "U+D83D at character 6"), r.text
        else:
            assert r.status_code == 200, r.text
            out = [json.loads(line) for line in r.content.decode().splitlines()]
            assert [set(o) for o in out] == [{"target"}, {"error"}, {"target"}] and "U+D83D" in out[1]["error"]
            assert [out[0]["target"], out[2]["target"]] == translator.translate_texts(["Thank you .", "Good morning ."])


def test_ping_answers_while_requests_decode(server, reference):
    # gthread workers: /ping is not queued behind a decode (SageMaker takes a slow /ping for a dead container)
    long = [sentences(3000, seed=7), sentences(3000, seed=8), sentences(3000, seed=9)]
    latencies = []
    with ThreadPoolExecutor(len(long)) as pool:
        busy = [pool.submit(post, server, jsonlines(texts)) for texts in long]
        time.sleep(0.2)
        while not all(f.done() for f in busy):
            start = time.monotonic()
            assert requests.get(server.url + "/ping", timeout=10).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        answers = [f.result() for f in busy]
    # Queued behind a decode, a ping would wait ~0.6 s and more; the median keeps one slow moment on a
    # busy CI machine from failing the test.
    assert latencies and statistics.median(latencies) < 0.4, latencies
    # what the model says for each request (the copy model echoes nearly all; it drops a token of a few
    # repetitive lines such as 'h n n j l l l l', so the inputs themselves are not the reference)
    assert [targets(r.content) for r in answers] == [reference(texts) for texts in long]


# --- slow clients and long decodes (the default 1 worker x 4 threads) -----------------------------------

def ping_latency(server: Running) -> float:
    """Seconds for GET /ping; over SageMaker's 2 s limit is a failure (requests raises ReadTimeout)."""
    start = time.monotonic()
    r = requests.get(server.url + "/ping", timeout=2)
    assert r.status_code == 200
    return time.monotonic() - start


class Tricklers:
    """`n` connections to the server, each sending a request's headers one byte per `every_s` in a
    thread of its own: slow clients (or a slowloris). Records when the server closed each one. Bounded:
    every thread gives up after `deadline_s`."""

    def __init__(self, server: Running, n: int, every_s: float = 0.1, deadline_s: float = 10.0,
                 prefix: bytes = b"", request: bytes = b"POST /invocations HTTP/1.1\r\nHost: x\r\n") -> None:
        import threading

        host, port = server.url.removeprefix("http://").split(":")
        self.every_s, self.deadline_s, self.prefix, self.request = every_s, deadline_s, prefix, request
        self.address = (host, int(port))
        self.started = time.monotonic()
        self.closed_after: list[float | None] = [None] * n
        self.answers: list[bytes] = [b""] * n
        self.sockets = [socket.create_connection(self.address, timeout=5) for _ in range(n)]
        self.threads = [threading.Thread(target=self._trickle, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _trickle(self, i: int) -> None:
        sock = self.sockets[i]
        sock.settimeout(self.every_s)
        try:
            if self.prefix:
                sock.sendall(self.prefix)
            data = self.request + b"X-Slow: " + b"x" * 10_000
            for k in range(len(data)):
                if time.monotonic() - self.started > self.deadline_s:
                    return
                sock.sendall(data[k:k + 1])
                with contextlib.suppress(TimeoutError):
                    got = sock.recv(4096)
                    self.answers[i] += got
                    if not got:  # the server closed it
                        break
        except OSError:  # reset or broken pipe: closed by the server
            pass
        self.closed_after[i] = time.monotonic() - self.started
        with contextlib.suppress(OSError):
            self.answers[i] += sock.recv(4096)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=self.deadline_s + 5)
        for sock in self.sockets:
            sock.close()


def test_slow_clients_do_not_hold_up_ping_or_short_requests(default_server):
    # 16 connections trickling their headers: with a thread per connection (gunicorn gthread, 4 threads)
    # four of them made /ping and every request time out; on the event loop they cost no thread
    slow = Tricklers(default_server, 16)
    try:
        time.sleep(0.5)  # all of them connected and part-way through their headers
        latencies = [ping_latency(default_server) for _ in range(5)]
        texts = sentences(5, seed=3)
        r = requests.post(default_server.url + "/invocations", data=jsonlines(texts),
                          headers={"Content-Type": JSONLINES_CONTENT_TYPE}, timeout=5)
        assert r.status_code == 200 and targets(r.content) == texts
        assert all(after is None for after in slow.closed_after), "still trickling: not cut off yet"
    finally:
        slow.join()
    assert max(latencies) < 2.0 and statistics.median(latencies) < 0.5, latencies


def test_slow_and_idle_connections_are_dropped_by_the_header_timeout(default_server):
    trickling = Tricklers(default_server, 4, every_s=0.2)
    # a kept-alive connection whose next request trickles: its headers have the same deadline
    kept_alive = Tricklers(default_server, 1, every_s=0.2, prefix=b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = socket.create_connection(kept_alive.address, timeout=HEADER_TIMEOUT_S + 5)  # sends nothing at all
    start = time.monotonic()
    try:
        assert idle.recv(4096).startswith(b"HTTP/1.1 408 ")
        idle_closed_after = time.monotonic() - start
        assert idle.recv(4096) == b""
    finally:
        idle.close()
        trickling.join()
        kept_alive.join()
    closed = [*trickling.closed_after, *kept_alive.closed_after]
    assert all(c is not None and HEADER_TIMEOUT_S - 0.5 < c < HEADER_TIMEOUT_S + 3 for c in closed), closed
    assert HEADER_TIMEOUT_S - 0.5 < idle_closed_after < HEADER_TIMEOUT_S + 3
    for answer in trickling.answers:
        assert answer.startswith(b"HTTP/1.1 408 ") and b"SEQ2SEQ_HEADER_TIMEOUT" in answer, answer
    assert kept_alive.answers[0].startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in kept_alive.answers[0]
    assert_still_serves(default_server)


def test_oversized_headers_and_stalled_bodies_are_refused(default_server):
    with socket.create_connection(("127.0.0.1", int(default_server.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"over 65536 bytes" in answer, answer
    with socket.create_connection(("127.0.0.1", int(default_server.url.rsplit(":", 1)[1])), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/jsonlines\r\n"
                     b"Content-Length: 100\r\n\r\n{\"sou")
        answer = b""
        while chunk := sock.recv(4096):  # 408, then the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"SEQ2SEQ_BODY_TIMEOUT" in answer, answer
    assert BODY_TIMEOUT_S - 0.5 < time.monotonic() - start < BODY_TIMEOUT_S + 3
    assert_still_serves(default_server)


def test_ping_answers_within_2s_while_more_long_decodes_than_threads_run(default_server):
    # six long requests on a worker with four threads: under gthread, /ping queued behind them for seconds
    long = [sentences(3000, seed=20 + i) for i in range(6)]
    latencies = []
    with ThreadPoolExecutor(len(long)) as pool:
        busy = [pool.submit(post, default_server, jsonlines(texts)) for texts in long]
        time.sleep(0.3)
        while not all(f.done() for f in busy):
            latencies.append(ping_latency(default_server))
            time.sleep(0.05)
        answers = [f.result() for f in busy]
    assert len(latencies) >= 5 and max(latencies) < 2.0 and statistics.median(latencies) < 0.5, latencies
    for texts, r in zip(long, answers):  # each request got its own answers, in order
        assert r.status_code == 200
        got = targets(r.content)
        assert len(got) == len(texts) and sum(g == t for g, t in zip(got, texts)) >= 0.99 * len(texts)
