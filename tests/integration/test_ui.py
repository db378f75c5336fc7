"""``make ui`` as a user runs it: the real Airflow (standalone: scheduler, DAG processor, API server,
triggerer; LocalExecutor) comes up healthy with both DAGs, a run triggered through the REST API v2 with a
misspelt conf key fails in ``plan`` at its first try, and marking a running ``train_local`` task failed
stops its training process, as the SageMaker operators stop their jobs. Ctrl-C stops every component.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY_HP = {"max_seq_len_source": 30, "max_seq_len_target": 30, "batch_size": 32, "rnn_num_hidden": 32,
           "num_embed_source": 16, "num_embed_target": 16, "max_num_batches": 1000000,
           "checkpoint_frequency_num_batches": 20, "checkpoint_threshold": 1000000, "optimized_metric": "perplexity"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def tasks(self, dag_id: str, run_id: str) -> dict[str, tuple[str | None, int]]:
        out = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {t["task_id"]: (t["state"], t["try_number"]) for t in out["task_instances"]}

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(dag_id, run_id)
            if tasks.get(task_id, (None,))[0] in states:
                return tasks
            time.sleep(1)
        raise AssertionError(f"{task_id} never reached {states}: {self.tasks(dag_id, run_id)}")


def _wait_healthy(base: str, proc: subprocess.Popen, out: Path, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()[-3000:]
        try:
            with urllib.request.urlopen(base + "/api/v2/monitor/health", timeout=5) as r:
                health = json.loads(r.read())
            if all(health.get(c, {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                return health
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(2)
    raise AssertionError(f"Airflow did not become healthy: {out.read_text()[-3000:]}")


def _train_processes(jobs: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(part.endswith("container/train") for part in p.info["cmdline"] or []) and \
                    p.environ().get("SAGEMAKER_BASE_DIR", "").startswith(str(jobs)) and \
                    p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_make_ui_starts_triggers_from_the_api_and_stops_what_a_failed_task_started(tmp_path):
    port = _free_port()
    home, jobs = tmp_path / "home", tmp_path / "jobs"
    env = {**os.environ, "AIRFLOW_VAR_WMT_SEQ2SEQ_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
           "SEQ2SEQ_LOCAL_JOBS_DIR": str(jobs), "OMP_NUM_THREADS": "1",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port())}
    out = tmp_path / "ui.log"
    with open(out, "w") as f:
        proc = subprocess.Popen(["make", "--no-print-directory", "ui", f"UI_HOME={home}", f"UI_PORT={port}"],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, out)
        text = out.read_text()
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        deadline = time.monotonic() + 30
        while "log in as admin with password" not in text and time.monotonic() < deadline:
            time.sleep(1)
            text = out.read_text()
        assert f"open http://localhost:{port} and log in as admin with password {password}" in text
        req = urllib.request.Request(base + "/auth/token", method="POST",
                                     data=json.dumps({"username": "admin", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            api = Api(base, json.loads(r.read())["access_token"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            dags = {d["dag_id"] for d in api.call("GET", "/api/v2/dags")["dags"]}
            if dags == {"wmt_seq2seq", "wmt_seq2seq_batch_transform"}:
                break
            time.sleep(2)
        assert dags == {"wmt_seq2seq", "wmt_seq2seq_batch_transform"}
        assert api.call("GET", "/api/v2/importErrors")["total_entries"] == 0
        api.call("PATCH", "/api/v2/dags/wmt_seq2seq", {"is_paused": False})

        # A misspelt conf key: plan fails at its first try, nothing downstream runs.
        bad = api.call("POST", "/api/v2/dags/wmt_seq2seq/dagRuns",
                       {"logical_date": None, "conf": {"subset_sise": 10}})["dag_run_id"]
        api.wait_task("wmt_seq2seq", bad, "plan", {"failed"}, 180)
        tasks = api.wait_task("wmt_seq2seq", bad, "download", {"upstream_failed"}, 60)  # the scheduler's next loop
        assert tasks["plan"] == ("failed", 1)

        # A long training: mark train_local failed while it runs; its training process must stop.
        conf = {"corpus": "wmt-toy-ende-sample", "subset_size": 500, "num_words_source": 1000,
                "num_words_target": 1000, "hyperparameters": TINY_HP, "eval_max_sentences": 10, "beam_size": 1}
        run = api.call("POST", "/api/v2/dags/wmt_seq2seq/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
        api.wait_task("wmt_seq2seq", run, "train_local", {"running", "failed", "upstream_failed"}, 400)
        deadline = time.monotonic() + 120
        while not (trains := _train_processes(jobs)) and time.monotonic() < deadline:
            time.sleep(1)
        assert trains, f"no training process started: {api.tasks('wmt_seq2seq', run)}"
        api.call("PATCH", f"/api/v2/dags/wmt_seq2seq/dagRuns/{run}/taskInstances/train_local", {"new_state": "failed"})
        gone_by = time.monotonic() + 90
        while _train_processes(jobs) and time.monotonic() < gone_by:
            time.sleep(1)
        assert not _train_processes(jobs), "container/train still runs after its task was marked failed"
        assert api.tasks("wmt_seq2seq", run)["train_local"][0] == "failed"
    finally:
        with_ctrl_c = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            left = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in psutil.Process(proc.pid).children(recursive=True)
                    if p.status() != psutil.STATUS_ZOMBIE]
            print("still running after Ctrl-C:", left)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("make ui did not stop within 90 s of Ctrl-C") from None
        print(f"make ui stopped {time.monotonic() - with_ctrl_c:.1f}s after Ctrl-C")
    assert "Airflow stopped." in out.read_text()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"UI_PORT={port}" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE]
