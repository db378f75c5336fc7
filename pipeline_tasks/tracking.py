"""Run history in MLflow: every ``wmt_seq2seq`` run is an MLflow run, and every promotion a registered
model version with the ``champion`` alias (docs/ARCHITECTURE.md §6).

Why MLflow: it is what an ML-ops team already runs (on a laptop, a team server, or SageMaker's managed
MLflow) to answer "which data, code and hyperparameters made the model in production, and how did each
run score". The DAG's tasks call :class:`Tracker`; each call is one MLflow client request on the run
that ``plan`` started, whose id travels in the run's XCom, so any executor can log from any worker.

Tracking never fails a training run: every call catches what the client raises, logs it loudly
(WARNING, naming the tracking URI and what was not recorded) and returns. The promoted-model pointer
(pipeline_tasks/gate.py) stays the one source of truth for "the promoted model"; the registry mirrors
it (a version per promotion, the alias moved to it), so the gate and the batch-transform DAG read the
same thing they always did and a registry outage cannot change what is served.

Where runs go: ``tracking_uri`` when given, else ``MLFLOW_TRACKING_URI``, else an embedded SQLite store
beside the runs (``<artifact root>/mlflow/mlflow.db`` for a local root, ``$AIRFLOW_HOME/mlflow/`` for an
``s3://`` root), so ``make demo`` records its run and ``mlflow ui --backend-store-uri sqlite:///…``
shows it. Nothing here imports Airflow; mlflow is imported when a run is tracked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_tasks import storage

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "wmt_seq2seq"
CHAMPION_ALIAS = "champion"
STORE_FOLDER = "mlflow"
STORE_FILE = "mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# MLflow's limits: a param value holds at most 6,000 characters, a tag value 8,000, a batch 100 params.
_MAX_PARAM_CHARS = 6000
_MAX_TAG_CHARS = 8000
_BATCH = 100


@dataclass(frozen=True)
class TrackingConfig:
    """Whether and where a run is tracked (the DAG's ``tracking`` param)."""

    enabled: bool = True
    uri: str | None = None             # None: MLFLOW_TRACKING_URI, else the embedded store
    experiment: str = DEFAULT_EXPERIMENT
    registered_model: str | None = None  # None: wmt-seq2seq-<src>-<trg>

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrackingConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - {"enabled", "uri", "experiment", "registered_model"})
        if unknown:
            raise ValueError(f"unknown tracking field(s): {', '.join(unknown)}")
        return cls(**d)


def registered_model_name(source_lang: str, target_lang: str) -> str:
    """``wmt-seq2seq-en-de``: one registered model per language pair and direction."""
    return f"wmt-seq2seq-{source_lang}-{target_lang}"


def embedded_store_uri(artifact_root: str, airflow_home: str | None = None) -> str:
    """The SQLite store used when nothing is configured: beside a local artifact root, or under
    ``$AIRFLOW_HOME`` when the root is in S3 (SQLite cannot live in S3)."""
    loc = storage.parse(artifact_root)
    if isinstance(loc, storage.S3Location):
        home = airflow_home or os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        folder = Path(home) / STORE_FOLDER
    else:
        folder = Path(loc) / STORE_FOLDER
    return f"sqlite:///{(folder / STORE_FILE).resolve()}"


def resolve_tracking_uri(cfg: TrackingConfig, artifact_root: str) -> str:
    return cfg.uri or os.environ.get(TRACKING_URI_ENV) or embedded_store_uri(artifact_root)


def _artifact_location(tracking_uri: str) -> str | None:
    """Where an experiment created in the embedded store keeps its artifacts: beside its database (a
    SQLite store would otherwise put them under the worker's current folder). A server decides itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params: ``hyperparameters.rnn_num_hidden`` = ``512``, ``gate.metric`` =
    ``test:bleu``; lists and other values as JSON, cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            out[name] = text[:_MAX_PARAM_CHARS]
    return out


def history_metrics(history: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """(name, value, step) for every metric of every checkpoint in a model's training history
    (``metrics.json``), step = the update count: the learning curves, whichever backend trained it."""
    out = []
    for entry in history:
        step = int(entry.get("updates") or 0)
        for name, value in (entry.get("metrics") or {}).items():
            if isinstance(value, int | float) and value == value:  # not NaN
                out.append((name, float(value), step))
        if isinstance(entry.get("learning_rate"), int | float):
            out.append(("train:learning_rate", float(entry["learning_rate"]), step))
    return out


def code_version() -> dict[str, str]:
    """This package's version and, in a git checkout, its commit (``+dirty`` with local changes): which
    code made a model. Tag names are MLflow's own where it has one (the UI shows the commit)."""
    import subprocess

    from pipeline_tasks import __version__

    out = {"code_version": __version__}
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return out
    out["mlflow.source.git.commit"] = commit
    out["code_version"] = f"{__version__}+g{commit[:12]}{'.dirty' if dirty else ''}"
    return out


class Tracker:
    """The MLflow calls of one DAG run; each one logs and swallows its failure (tracking must never fail
    a training run). `run_id` is MLflow's id of the run, from :meth:`start`."""

    def __init__(self, cfg: TrackingConfig, artifact_root: str) -> None:
        self.cfg = cfg
        self.artifact_root = artifact_root
        self.uri = resolve_tracking_uri(cfg, artifact_root) if cfg.enabled else None
        self._client = None
        self._failed = False
        # A tracking server that is down must cost a task seconds, not the client's default minutes of
        # retries; a user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.cfg.enabled:
            return None
        if self._failed:
            log.warning("TRACKING SKIPPED (%s): the tracking store at %s failed earlier in this task", what, self.uri)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # any client, network or store error: report it and go on
            self._failed = True
            first = str(e).splitlines()[0] if str(e) else ""
            log.warning("TRACKING FAILED (%s at %s): %s: %s; the pipeline run goes on without it", what, self.uri,
                        type(e).__name__, first[:500])
            return None

    # --- the run -------------------------------------------------------------------------------------
    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str | None:
        """A new MLflow run in the experiment (made if missing) with the DAG's params and the run's tags;
        its id, or None when tracking is off or failed."""
        def start() -> str:
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                self.cfg.experiment, artifact_location=_artifact_location(self.uri))
            run = self.client.create_run(exp_id, run_name=run_name, tags=_tags(tags))
            self._log_params(run.info.run_id, flatten(params))
            return run.info.run_id

        run_id = self._call("start the run", start)
        if run_id:
            log.info("tracking: MLflow run %s in experiment %s at %s", run_id, self.cfg.experiment, self.uri)
        return run_id

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = sorted(params.items())
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + _BATCH]])

    def tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        values = _tags(tags)
        if run_id and values:
            def set_all() -> None:
                from mlflow.entities import RunTag

                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in sorted(values.items())])

            self._call("set tags", set_all)

    def metrics(self, run_id: str | None, values: Iterable[tuple[str, float, int]]) -> None:
        """(name, value, step) triples, batched."""
        if not run_id:
            return

        def log_all() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(name, value, now, step) for name, value, step in values]
            for i in range(0, len(items), _BATCH * 10):
                self.client.log_batch(run_id, metrics=items[i:i + _BATCH * 10])

        self._call("log metrics", log_all)

    def artifacts(self, run_id: str | None, local: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A file or a folder into the run's artifacts."""
        if not run_id:
            return
        path = Path(local)

        def log_it() -> None:
            fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
            fn(run_id, str(path), artifact_path)

        self._call(f"log artifact {path.name}", log_it)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id:
            self._call("end the run", lambda: self.client.set_terminated(run_id, status))

    # --- the registry --------------------------------------------------------------------------------
    def register_champion(self, run_id: str | None, name: str, model_uri: str,
                          tags: Mapping[str, Any]) -> str | None:
        """A new version of registered model `name` for the promoted model (tag ``model_uri``: the URI the
        pointer names), the ``champion`` alias moved to it; the version number, or None when tracking is off
        or failed."""
        if not run_id:
            return None

        def register() -> str:
            from mlflow.exceptions import MlflowException

            source = model_uri
            loc = storage.parse(model_uri)
            if not isinstance(loc, storage.S3Location):
                # A tracking server accepts a local path only inside the run's artifacts: the model is
                # copied there (an S3 model is registered where it is).
                log_fn = self.client.log_artifacts if Path(loc).is_dir() else self.client.log_artifact
                log_fn(run_id, str(loc), "model")
                source = f"runs:/{run_id}/model"
            try:
                self.client.create_registered_model(name, description="wmt_seq2seq's promoted models; "
                                                                      f"alias {CHAMPION_ALIAS}: the one in production")
            except MlflowException as e:
                if "RESOURCE_ALREADY_EXISTS" not in str(getattr(e, "error_code", "")) + str(e):
                    raise
            version = self.client.create_model_version(name, source, run_id=run_id,
                                                       tags=_tags({**tags, "model_uri": model_uri}))
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
            return str(version.version)

        version = self._call("register the promoted model", register)
        if version:
            log.info("registry: %s version %s is now %r (%s)", name, version, CHAMPION_ALIAS, model_uri)
        return version


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): (v if isinstance(v, str) else json.dumps(v, default=str))[:_MAX_TAG_CHARS]
            for k, v in tags.items() if v is not None}


# --- what the DAG's tasks record (each takes the run's ``tracking`` XCom: {"uri", "run_id"}) -----------------

def tracker_for(tracking: Mapping[str, Any] | None, params: Mapping[str, Any]) -> tuple[Tracker, str | None]:
    """The Tracker of a DAG run's tasks and the MLflow run id that plan started (None: not tracked)."""
    cfg = TrackingConfig.from_dict(params.get("tracking"))
    tracker = Tracker(cfg, params["artifact_root"])
    if tracking and tracking.get("uri"):
        tracker.uri = tracking["uri"]  # where plan started the run, even if the environment changed since
    return tracker, (tracking or {}).get("run_id")


def start_run(params: Mapping[str, Any], dag_id: str, airflow_run_id: str, layout_base: str,
              parent: Mapping[str, Any] | None) -> dict[str, Any]:
    """plan's part: the MLflow run with every DAG param and the run's identity; ``{"uri", "run_id"}``."""
    tracker, _ = tracker_for(None, params)
    if not tracker.cfg.enabled:
        log.info("tracking: off (the tracking param)")
        return {"uri": None, "run_id": None}
    tags = {"dag_id": dag_id, "airflow_run_id": airflow_run_id, "backend": params.get("backend"),
            "image": params.get("image"), "corpus": params.get("corpus"), "run_uri": layout_base,
            "language_pair": f"{params.get('source_lang')}-{params.get('target_lang')}",
            "init_model": params.get("init_model"), "parent_model": (parent or {}).get("model"),
            "mlflow.runName": airflow_run_id, **code_version()}
    run_id = tracker.start(airflow_run_id, {k: v for k, v in params.items() if k != "tracking"}, tags)
    return {"uri": tracker.uri, "run_id": run_id}


def track_data(tracking: Mapping[str, Any] | None, params: Mapping[str, Any], digests: Mapping[str, str],
               channels: Mapping[str, str]) -> None:
    tracker, run_id = tracker_for(tracking, params)
    tracker.tags(run_id, {**{f"data.{ch}.sha256": d for ch, d in digests.items()},
                          **{f"data.{ch}.uri": uri for ch, uri in channels.items()}})


def track_evaluation(tracking: Mapping[str, Any] | None, params: Mapping[str, Any], eval_uri: str,
                     model: Mapping[str, Any]) -> None:
    """evaluate's part: the model's learning curves (step = update count, from its own training history,
    whichever backend trained it), the test metrics (and the parent's beside them), the training job, and
    the small files of the evaluation as artifacts."""
    import tempfile

    from pipeline_tasks.evaluate import TRAINING_METRICS_FILE
    from pipeline_tasks.runs import get_tree

    tracker, run_id = tracker_for(tracking, params)
    if not run_id:
        return
    with tempfile.TemporaryDirectory(prefix="wmt-tracking-") as tmp:
        def fetch() -> Path:
            return get_tree(eval_uri, Path(tmp) / "eval")

        folder = tracker._call("fetch the evaluation", fetch)
        if folder is None:
            return
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        training_file = folder / TRAINING_METRICS_FILE
        training = json.loads(training_file.read_text(encoding="utf-8")) if training_file.is_file() else {}
        step = int(training.get("num_updates") or 0)
        values = history_metrics(training.get("history") or [])
        values += [(k, float(v), step) for k, v in metrics["metrics"].items() if isinstance(v, int | float)]
        parent = metrics.get("parent") or {}
        values += [(f"parent.{k}", float(v), step) for k, v in (parent.get("metrics") or {}).items()
                   if isinstance(v, int | float)]
        tracker.metrics(run_id, values)
        tracker.tags(run_id, {"training_job": model.get("job_name"), "model_uri": model.get("model"),
                              "eval_uri": eval_uri, "bleu_signature": metrics.get("bleu", {}).get("signature"),
                              "stop_reason": training.get("stop_reason")})
        for name in ("metrics.json", TRAINING_METRICS_FILE):
            if (folder / name).is_file():
                tracker.artifacts(run_id, folder / name, "eval")
        if (folder / "report").is_dir():
            tracker.artifacts(run_id, folder / "report", "eval/report")


def track_tuning(tracking: Mapping[str, Any] | None, params: Mapping[str, Any],
                 tuning: Mapping[str, Any] | None) -> None:
    """A tuning job's trials, so tuning runs can be compared: each a nested run of the DAG run's (its tuned
    values as params, its objective as a metric, its status), and the best trial on the DAG run's tags."""
    tracker, run_id = tracker_for(tracking, params)
    if not tuning or not run_id:
        return
    metric = tuning["objective"]["MetricName"]
    tracker.tags(run_id, {"tuning.job": tuning["name"], "tuning.best": tuning["best"],
                          "tuning.strategy": tuning["strategy"], "tuning.objective": metric,
                          "tuning.counters": tuning.get("counters")})
    for trial in tuning["trials"]:
        child = tracker.start(trial["name"], trial.get("tuned") or {},
                              {"mlflow.parentRunId": run_id, "training_job": trial["name"],
                               "status": trial["status"], "best": str(trial["name"] == tuning["best"]).lower()})
        if trial.get("objective") is not None:
            tracker.metrics(child, [(metric, float(trial["objective"]), 0)])
        tracker.end(child, "FAILED" if trial["status"] == "Failed" else "FINISHED")


def track_promotion(tracking: Mapping[str, Any] | None, params: Mapping[str, Any], model: Mapping[str, Any],
                    scores: Mapping[str, Any], airflow_run_id: str) -> str | None:
    """promote's part: a registered model version for the promoted model, the champion alias moved to it."""
    tracker, run_id = tracker_for(tracking, params)
    name = tracker.cfg.registered_model or registered_model_name(params["source_lang"], params["target_lang"])
    tags = {"airflow_run_id": airflow_run_id, "training_job": model.get("job_name"),
            "bleu_signature": scores.get("bleu_signature"),
            **{k: v for k, v in (scores.get("metrics") or {}).items()}}
    version = tracker.register_champion(run_id, name, model["model"], tags)
    if version:
        tracker.tags(run_id, {"registered_model": name, "registered_version": version})
    return version


def finish_run(tracking: Mapping[str, Any] | None, params: Mapping[str, Any], summary: Mapping[str, Any] | None,
               summary_uri: str | None) -> None:
    """The run's outcome: the gate's decision and reason, the approver's answer (``approval.*``: required,
    approved, by, at, reason, timed_out), run.json as an artifact, and its end (FAILED when the pipeline run
    did not get as far as publishing)."""
    import tempfile

    tracker, run_id = tracker_for(tracking, params)
    if not run_id:
        return
    if summary is None:
        tracker.end(run_id, "FAILED")
        return
    approval = summary.get("approval") or {}
    tracker.tags(run_id, {"promoted": str(bool(summary.get("promoted"))).lower(), "gate": summary.get("gate"),
                          "transform_job": summary.get("transform_job"),
                          "model_package_arn": summary.get("model_package_arn"),
                          **{f"approval.{k}": (str(v).lower() if isinstance(v, bool) else v)
                             for k, v in approval.items() if k != "model_package_arn"}})
    if summary_uri:
        with tempfile.TemporaryDirectory(prefix="wmt-tracking-") as tmp:
            local = tracker._call("fetch run.json", storage.get_file, summary_uri, Path(tmp) / "run.json")
            if local is not None:
                tracker.artifacts(run_id, local)
    tracker.end(run_id, "FINISHED")
