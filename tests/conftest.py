"""Shared fixtures: paths to the real text shipped with the project, torch's thread count, tiny trained
models (tests/models.py) and a moto server standing in for AWS."""

from __future__ import annotations

import logging
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pipeline_tasks" / "sample_data" / "wmt-toy-ende"
NEWSTEST = ROOT / "tests" / "data" / "newstest"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread: thread hand-offs cost more than the arithmetic,
    badly so on a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``;
    torch is imported here, not at the top, so that tests without torch do not pay for it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LogLines(logging.Handler):
    """Collects the messages a logger emits (a job's log, as its Airflow task log shows it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def head_lines(src: Path, dst: Path, n: int) -> Path:
    """Copy the first n lines of a real file (bytes as they are)."""
    with open(src, "rb") as f:
        lines = [next(f) for _ in range(n)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(lines))
    return dst


@pytest.fixture
def small_corpus(tmp_path: Path) -> dict[str, Path]:
    """300 training and 100 validation pairs of the real sample, as files in tmp_path."""
    out = {}
    for split, n in (("train", 300), ("val", 100)):
        for lang in ("en", "de"):
            out[f"{split}.{lang}"] = head_lines(SAMPLE / f"{split}.{lang}", tmp_path / "corpus" / f"{split}.{lang}", n)
    return out


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory that copies its input (tests/models.py), trained once per session."""
    from tests.models import train_copy_model

    return train_copy_model(tmp_path_factory.mktemp("copy-model"))


@pytest.fixture(scope="session")
def transformer_copy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Transformer model directory that copies its input (tests/models.py), trained once per session."""
    from tests.models import train_transformer_copy_model

    return train_transformer_copy_model(tmp_path_factory.mktemp("transformer-copy-model"))


@pytest.fixture(scope="session")
def wmt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory on real English–German text with a Moses + BPE tokenizer, trained once per session."""
    from tests.models import train_wmt_model

    return train_wmt_model(tmp_path_factory.mktemp("wmt-model"))


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server (S3, SageMaker, …) on 127.0.0.1:<free port>, one per test module, with the environment
    pointing boto3 at it: fake credentials, no AWS config files, no proxy for 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    from pipeline_tasks import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    nowhere = tmp_path_factory.mktemp("no-aws-config")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        storage.s3_client.cache_clear()
        try:
            yield endpoint
        finally:
            storage.s3_client.cache_clear()
            # moto's backends live in this process: leave nothing behind for other modules
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            opener.open(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()
            server.stop()


@pytest.fixture
def s3(moto_endpoint: str):
    """The client the pipeline itself uses (storage.s3_client), made under the moto environment."""
    from pipeline_tasks import storage

    storage.s3_client.cache_clear()
    client = storage.s3_client()
    assert client.meta.endpoint_url == moto_endpoint
    yield client
    storage.s3_client.cache_clear()


@pytest.fixture
def bucket(s3) -> str:
    name = f"wmt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment for an Airflow interpreter: a migrated SQLite metadata database in a session-wide
    AIRFLOW_HOME, the DAGs of dags/, no example DAGs, no retries (a failure is final). DAG runs happen in
    fresh interpreters (tests/dag_runner.py) because Airflow binds its config and database at import."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("airflow-home")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # runs track where told
    env = {**inherited, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_VAR_WMT_SEQ2SEQ_RETRIES": "0",
           "AIRFLOW_VAR_WMT_SEQ2SEQ_CHECK_INTERVAL": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` process on 127.0.0.1:<free port> (SQLite store, artifacts proxied to a
    folder), its URI; stopped after the module."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
