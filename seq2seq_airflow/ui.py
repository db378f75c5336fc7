"""``make ui``: Airflow's all-in-one ``standalone`` (scheduler, DAG processor, API server, triggerer) for
trying the DAGs in the UI, started so that it works and stops.

Two things go wrong with a bare ``.venv/bin/airflow standalone``: it starts each component as
``airflow`` from ``PATH`` (without the venv on PATH every component fails and it waits forever), and on
Ctrl-C it terminates its components and then waits for them without a limit, while an Airflow
component can hang in its own shutdown (a LocalExecutor worker pool, the triggerer). This launcher puts
the venv first on PATH, migrates the database, prints where to log in once the API answers, and on
Ctrl-C or SIGTERM stops the whole process group: SIGINT, then SIGTERM, then SIGKILL for what is left.

    python -m seq2seq_airflow.ui [--port 8080]    (AIRFLOW_HOME and the DAGs folder from the environment)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

STOP_STEPS = ((signal.SIGINT, 15.0), (signal.SIGTERM, 15.0))  # then SIGKILL
READY_TIMEOUT_S = 600.0


def _environment(port: int) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://localhost:{port}"}


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as r:
            health = json.loads(r.read())
    except (OSError, ValueError):
        return False
    return all(health.get(c, {}).get("status") == "healthy" for c in ("scheduler", "dag_processor", "triggerer"))


def _password(home: Path) -> str | None:
    try:
        return json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    except (OSError, ValueError, KeyError):
        return None


def stop_group(proc: subprocess.Popen, steps: tuple[tuple[int, float], ...] = STOP_STEPS) -> None:
    """Each signal to the whole group, waiting its time for the leader to exit; SIGKILL at the end, also
    for members still there after the leader exited."""
    for sig, wait_s in steps:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            print(f"airflow standalone still running {wait_s:.0f}s after {signal.Signals(sig).name}", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seq2seq_airflow.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    env = _environment(args.port)
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    (home / "migrate.log").write_text(migrate.stdout + migrate.stderr)
    if migrate.returncode != 0:
        print(migrate.stderr[-3000:] or migrate.stdout[-3000:], file=sys.stderr)
        print(f"error: airflow db migrate failed (log: {home / 'migrate.log'})", file=sys.stderr)
        return 1
    print(f"Starting Airflow (AIRFLOW_HOME={home}, DAGs: {env.get('AIRFLOW__CORE__DAGS_FOLDER', 'default')}); "
          f"the UI will be at http://localhost:{args.port}. Ctrl-C stops every component.", flush=True)
    proc = subprocess.Popen([airflow, "standalone"], env=env, start_new_session=True)
    stopping: dict[str, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started, announced = time.monotonic(), False
    try:
        while proc.poll() is None and "signal" not in stopping:
            if not announced and _healthy(args.port):
                announced = True
                password = _password(home)
                print(f"\nAirflow is ready: open http://localhost:{args.port} and log in as admin with password "
                      f"{password or '(see the standalone output above)'} (kept in "
                      f"{home / 'simple_auth_manager_passwords.json.generated'}). Find wmt_seq2seq and press "
                      "Trigger for the params form.\n", flush=True)
            elif not announced and time.monotonic() - started > READY_TIMEOUT_S:
                print(f"warning: Airflow is not healthy after {READY_TIMEOUT_S:.0f}s; see the output above",
                      flush=True)
                announced = True
            time.sleep(1)
    finally:
        print("stopping Airflow standalone and every component ...", flush=True)
        stop_group(proc)
    print("Airflow stopped.", flush=True)
    return 0 if "signal" in stopping or proc.returncode == 0 else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
