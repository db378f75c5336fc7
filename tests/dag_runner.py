"""Runs a DAG with ``dag.test()`` in a fresh interpreter, so that Airflow reads the AIRFLOW_HOME /
AIRFLOW__* environment the test prepared (Airflow binds its config and database at import).

    python tests/dag_runner.py DAG_ID CONF.json RESULT.json

RESULT.json: {"state": …, "tasks": {task_id: state}, "error": "…" (when triggering failed)}.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    dag_id, conf_file, result_file = sys.argv[1:4]
    with open(conf_file, encoding="utf-8") as f:
        conf = json.load(f)
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    started = time.monotonic()
    result: dict = {}
    try:
        run = dag.test(run_conf=conf)
        result = {"state": getattr(run.state, "value", run.state), "run_id": run.run_id,
                  "tasks": {ti.task_id: getattr(ti.state, "value", ti.state) for ti in run.get_task_instances()}}
    except Exception as e:  # a param that fails validation never creates a run
        result = {"state": None, "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.monotonic() - started, 2)
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
