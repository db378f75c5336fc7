"""Runs a DAG with ``dag.test()`` in a fresh interpreter, so that Airflow reads the AIRFLOW_HOME /
AIRFLOW__* environment the test prepared (Airflow binds its config and database at import).

    python tests/dag_runner.py DAG_ID CONF.json RESULT.json [ANSWER.json]

RESULT.json: {"state": …, "tasks": {task_id: state}, "error": "…" (when triggering failed)}.

ANSWER.json answers the run's approval request as a person would, while ``dag.test()`` waits for it:
``{"option": "Approve" | "Reject", "reason": "…", "user": "reviewer"}`` goes through the REST API's
hitlDetails endpoint (what the UI's Required Actions call) as that user, logged in with a password;
``{"option": "timeout"}`` lets the deadline pass and runs the scheduler's own timeout sweep, which
``dag.test()`` does not run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

PASSWORD = "approver-password"


def _awaiting_input(dag_id: str) -> tuple | None:
    """(run_id, task_id, map_index, deadline) of the run's task awaiting input, if one is."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.state == TaskInstanceState.AWAITING_INPUT)).first()
        return (ti.run_id, ti.task_id, ti.map_index, ti.trigger_timeout) if ti else None


def answer_approval(dag_id: str, answer: dict, run_over: threading.Event) -> None:
    """Waits for a task of the run to be awaiting input, then answers it (see the module's docstring).

    Polling stops when the run is over (a run that never asks, e.g. with approval off). A poll can fail
    while ``dag.test()`` tears its session down at the run's end; such an error is printed and polling
    goes on until the run is over, so only a failed answer fails the test."""
    waiting, last_error = None, None
    while not run_over.is_set():
        try:
            waiting = _awaiting_input(dag_id)
        except Exception as e:
            if str(e) != last_error:
                print(f"note: polling for the approval request: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            last_error = str(e)
        if waiting:
            break
        time.sleep(0.5)
    if not waiting:
        return
    try:
        run_id, task_id, map_index, deadline = waiting
        if answer["option"] == "timeout":
            from airflow.jobs.job import Job
            from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
            from airflow.utils import timezone

            time.sleep(max(0.0, (deadline - timezone.utcnow()).total_seconds()) + 0.5)
            SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
            return
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app())
        login = client.post("/auth/token", json={"username": answer["user"], "password": PASSWORD})
        login.raise_for_status()
        response = client.patch(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails",
            json={"chosen_options": [answer["option"]], "params_input": {"reason": answer.get("reason", "")}},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        response.raise_for_status()
    except Exception as e:
        print(f"answering the approval failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(3)


def main() -> int:
    dag_id, conf_file, result_file = sys.argv[1:4]
    with open(conf_file, encoding="utf-8") as f:
        conf = json.load(f)
    answer = json.loads(Path(sys.argv[4]).read_text()) if len(sys.argv) > 4 else None
    if answer and answer["option"] != "timeout":  # the approver's account, before Airflow reads its config
        passwords = Path(result_file).with_name("passwords.json")
        passwords.write_text(json.dumps({answer["user"]: PASSWORD}))
        os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{answer['user']}:admin"
        os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    started = time.monotonic()
    result: dict = {}
    run_over = threading.Event()
    if answer:
        # What the answering thread uses, imported (and the ORM configured) here first: two threads
        # importing Airflow's models at once can deadlock.
        import airflow.api_fastapi.app
        import airflow.jobs.scheduler_job_runner  # noqa: F401
        from airflow.models import import_all_models
        from sqlalchemy.orm import configure_mappers

        import_all_models()
        configure_mappers()
        threading.Thread(target=answer_approval, args=(dag_id, answer, run_over), daemon=True).start()
    try:
        run = dag.test(run_conf=conf)
        run_over.set()
        result = {"state": getattr(run.state, "value", run.state), "run_id": run.run_id,
                  "tasks": {ti.task_id: getattr(ti.state, "value", ti.state) for ti in run.get_task_instances()}}
    except Exception as e:  # a param that fails validation never creates a run
        run_over.set()
        result = {"state": None, "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.monotonic() - started, 2)
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
