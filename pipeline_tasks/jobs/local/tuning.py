"""Executes a CreateHyperParameterTuningJob request on this machine: Optuna searches the request's ranges,
and each trial is a training job of the local or docker backend (run_training_job), as SageMaker's tuner
starts training jobs.

- **Strategy**: Bayesian is Optuna's TPE sampler, Random its random sampler, Grid every combination of the
  categorical values once (queued in order; Optuna's GridSampler stops the study itself, which an
  ask-and-tell loop cannot have), Hyperband its Hyperband pruner (resource = validation checkpoints) on TPE. Seeded
  by the request's RandomSeed (0 when unset), so a tuning job is reproducible.
- **Scaling**: Logarithmic samples log-uniformly; ReverseLogarithmic samples 1 - x log-uniformly (dense near
  1, as SageMaker's); Auto and Linear sample uniformly.
- **Limits**: at most MaxParallelTrainingJobs trials at once, at most MaxNumberOfTrainingJobs in all, no new
  trial after the tuning job's MaxRuntimeInSeconds, and running ones stopped at their next metric line
  after it (SageMaker stops them too). A failed trial is counted (NonRetryableError, objective
  Failed) and the search goes on.
- **Early stopping** (TrainingJobEarlyStoppingType Auto, and Hyperband): each validation checkpoint's
  objective line is reported to the pruner as it is printed; a trial the pruner drops is stopped as
  SageMaker stops one (SIGTERM, then its status Stopped). Auto is Optuna's median rule: stop when the
  objective at a checkpoint is worse than the median of earlier trials' at the same checkpoint.
- **Objective**: a trial's objective is the last value of the objective metric it printed (SageMaker's
  rule); the best training job is the completed trial with the best one.
- **Warm start**: every tuning job's result is stored as ``<store>/<name>.json``; a child reads its parents'
  trials from there and gives them to the sampler. Parents must have the child's objective and the same
  static + tunable hyperparameter names (SageMaker's rule); IdenticalDataAndAlgorithm also wants the same
  static values. A parent trial outside the child's ranges is skipped, with a log line.

The result is DescribeHyperParameterTuningJob's shape, plus ``TrainingJobSummaries`` as
ListTrainingJobsForHyperParameterTuningJob returns them.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from model.hyperparameters import format_value
from pipeline_tasks import storage
from pipeline_tasks.jobs.tuning import RANGE_KEYS, TuningError, check_parameter_ranges, check_tuning_job_name

_LOG = logging.getLogger(__name__)

OBJECTIVE_HYPERPARAMETER = "_tuning_objective_metric"  # SageMaker passes it to each trial; our parser ignores it
RESULT_SUFFIX = ".json"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _reverse_name(name: str) -> str:
    return f"{name}.1-x"  # the sampled quantity of a ReverseLogarithmic range


def distributions(ranges: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of the request's ParameterRanges, keyed by what is sampled."""
    import optuna

    out: dict[str, Any] = {}
    for entry in ranges.get("IntegerParameterRanges") or []:
        out[entry["Name"]] = optuna.distributions.IntDistribution(
            int(entry["MinValue"]), int(entry["MaxValue"]), log=entry.get("ScalingType") == "Logarithmic")
    for entry in ranges.get("ContinuousParameterRanges") or []:
        low, high = float(entry["MinValue"]), float(entry["MaxValue"])
        if entry.get("ScalingType") == "ReverseLogarithmic":
            out[_reverse_name(entry["Name"])] = optuna.distributions.FloatDistribution(1 - high, 1 - low, log=True)
        else:
            out[entry["Name"]] = optuna.distributions.FloatDistribution(
                low, high, log=entry.get("ScalingType") == "Logarithmic")
    for entry in ranges.get("CategoricalParameterRanges") or []:
        out[entry["Name"]] = optuna.distributions.CategoricalDistribution(list(entry["Values"]))
    return out


def tuned_values(params: Mapping[str, Any]) -> dict[str, str]:
    """A trial's sampled params as the hyperparameter strings the training job gets."""
    out = {}
    for key, value in params.items():
        if key.endswith(".1-x"):
            out[key.removesuffix(".1-x")] = format_value(1 - float(value))
        else:
            out[key] = value if isinstance(value, str) else format_value(value)
    return out


def sampled_params(tuned: Mapping[str, str], dists: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inverse of :func:`tuned_values` for a parent's trial: None when a value lies outside the ranges."""
    import optuna

    out: dict[str, Any] = {}
    for key, dist in dists.items():
        name = key.removesuffix(".1-x")
        if name not in tuned:
            return None
        raw = tuned[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            value: Any = raw
        elif isinstance(dist, optuna.distributions.IntDistribution):
            value = int(raw)
        else:
            value = 1 - float(raw) if key.endswith(".1-x") else float(raw)
        inside = (value in dist.choices if isinstance(dist, optuna.distributions.CategoricalDistribution)
                  else dist.low <= value <= dist.high)
        if not inside:
            return None
        out[key] = value
    return out


def _sampler(config: Mapping[str, Any], seed: int) -> Any:
    import optuna

    if config["Strategy"] in ("Random", "Grid"):  # Grid: every trial is queued, the sampler picks nothing
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid(ranges: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every combination of the categorical values, in the request's order."""
    import itertools

    entries = ranges.get("CategoricalParameterRanges") or []
    return [dict(zip([e["Name"] for e in entries], values, strict=True))
            for values in itertools.product(*[e["Values"] for e in entries])]


def _pruner(config: Mapping[str, Any]) -> Any:
    import optuna

    if config["Strategy"] == "Hyperband":
        hb = (config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
        return optuna.pruners.HyperbandPruner(min_resource=int(hb.get("MinResource", 1)),
                                              max_resource=int(hb["MaxResource"]) if hb.get("MaxResource") else "auto")
    if config.get("TrainingJobEarlyStoppingType") == "Auto":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def default_store(request: Mapping[str, Any]) -> str:
    """``tuning-jobs/`` beside the trials' output: tuning jobs that write their trials to one place find
    each other there for a warm start."""
    return storage.join(request["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"], "tuning-jobs")


def result_uri(store: str, name: str) -> str:
    return storage.join(store, name + RESULT_SUFFIX)


def _read_result(store: str, name: str) -> dict[str, Any] | None:
    import tempfile
    from pathlib import Path

    uri = result_uri(store, name)
    if not storage.exists(uri):
        return None
    with tempfile.TemporaryDirectory(prefix="wmt-tuning-") as tmp:
        return json.loads(Path(storage.get_file(uri, Path(tmp) / "result.json")).read_text(encoding="utf-8"))


def _write_result(store: str, name: str, result: Mapping[str, Any]) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="wmt-tuning-") as tmp:
        path = Path(tmp) / "result.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        storage.put_file(path, result_uri(store, name))


def _names(request: Mapping[str, Any]) -> tuple[set[str], dict[str, str]]:
    ranges = request["HyperParameterTuningJobConfig"]["ParameterRanges"]
    tunable = {e["Name"] for key in RANGE_KEYS for e in ranges.get(key) or []}
    return tunable, dict(request["TrainingJobDefinition"].get("StaticHyperParameters") or {})


def check_parent(child: Mapping[str, Any], parent: Mapping[str, Any] | None, parent_name: str) -> None:
    """SageMaker's warm-start rules between a child tuning request and a stored parent result."""
    if parent is None:
        raise TuningError(f"warm start: parent tuning job {parent_name} has no stored result (it never ran here, "
                          "or ran with another store)")
    described = parent["Describe"]
    status = described.get("HyperParameterTuningJobStatus")
    if status != "Completed":
        raise TuningError(f"warm start: parent tuning job {parent_name} is {status}, not Completed")
    mine = child["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    theirs = described["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    if mine != theirs:
        raise TuningError(f"warm start: parent tuning job {parent_name} optimised {theirs['Type']} "
                          f"{theirs['MetricName']}, this one {mine['Type']} {mine['MetricName']}: the objective "
                          "must be the same")
    tunable, static = _names(child)
    p_tunable, p_static = _names(described)
    if tunable | set(static) != p_tunable | set(p_static):
        differ = sorted((tunable | set(static)) ^ (p_tunable | set(p_static)))
        raise TuningError(f"warm start: parent tuning job {parent_name} has other hyperparameters "
                          f"({', '.join(differ)} in one but not the other): static + tunable names must be the same")
    warm = child.get("WarmStartConfig") or {}
    if warm.get("WarmStartType") == "IdenticalDataAndAlgorithm":
        changed = sorted(k for k in static if k in p_static and static[k] != p_static[k])
        same_data = (child["TrainingJobDefinition"]["InputDataConfig"]
                     == described["TrainingJobDefinition"]["InputDataConfig"])
        if changed or not same_data:
            what = (f"static hyperparameters {', '.join(changed)} changed" if changed else "the input data changed")
            raise TuningError(f"warm start: IdenticalDataAndAlgorithm, but {what} since parent tuning job "
                              f"{parent_name}: use TransferLearning")


def _summary(tuning_name: str, job: Mapping[str, Any], tuned: Mapping[str, str], objective: Mapping[str, str],
             value: float | None) -> dict[str, Any]:
    status = job.get("TrainingJobStatus", "Failed")
    summary: dict[str, Any] = {
        "TrainingJobName": job["TrainingJobName"], "TuningJobName": tuning_name,
        "CreationTime": job.get("CreationTime"), "TrainingStartTime": job.get("TrainingStartTime"),
        "TrainingEndTime": job.get("TrainingEndTime"), "TrainingJobStatus": status,
        "TunedHyperParameters": dict(tuned),
        "ObjectiveStatus": "Succeeded" if value is not None else "Failed",
    }
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {"Type": objective["Type"],
                                                                  "MetricName": objective["MetricName"], "Value": value}
    if job.get("FailureReason"):
        summary["FailureReason"] = job["FailureReason"]
    return summary


def run_tuning_job(request: Mapping[str, Any], backend: str = "local", *, store: str,
                   workdir: str | None = None, log: logging.Logger | None = None,
                   train: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the tuning request here; returns its DescribeHyperParameterTuningJob-shaped result with
    ``TrainingJobSummaries``, also stored as ``<store>/<name>.json`` (what a warm start reads, and what a
    retried task returns without running the trials again). `train` defaults to run_training_job."""
    import optuna

    from pipeline_tasks.jobs.local.training import run_training_job

    jlog = log or _LOG
    train = train or run_training_job
    name = request["HyperParameterTuningJobName"]
    check_tuning_job_name(name)
    config = request["HyperParameterTuningJobConfig"]
    definition = request["TrainingJobDefinition"]
    check_parameter_ranges(config["ParameterRanges"], definition.get("StaticHyperParameters"))
    stored = _read_result(store, name)
    if stored is not None:
        if stored.get("Request") != json.loads(json.dumps(request, default=str)):
            raise TuningError(f"tuning job {name} already ran with another request ({result_uri(store, name)}): "
                              "tuning job names are unique per request, as on SageMaker")
        jlog.info("tuning job %s already ran: returning its stored result", name)
        return {**stored["Describe"], "TrainingJobSummaries": stored["TrainingJobSummaries"]}

    objective = config["HyperParameterTuningJobObjective"]
    metric = objective["MetricName"]
    maximize = objective["Type"] == "Maximize"
    limits = config["ResourceLimits"]
    max_parallel = int(limits.get("MaxParallelTrainingJobs", 1))
    dists = distributions(config["ParameterRanges"])
    max_jobs = limits.get("MaxNumberOfTrainingJobs")
    deadline = time.monotonic() + float(limits.get("MaxRuntimeInSeconds") or math.inf)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                sampler=_sampler(config, int(config.get("RandomSeed", 0))), pruner=_pruner(config))
    parents = [p["HyperParameterTuningJobName"]
               for p in (request.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs") or []]
    seeded = 0
    for parent_name in parents:
        parent = _read_result(store, parent_name)
        check_parent(request, parent, parent_name)
        for s in parent["TrainingJobSummaries"]:
            value = (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
            params = sampled_params(s["TunedHyperParameters"], dists)
            if value is None or params is None:
                if value is not None:
                    jlog.info("warm start: %s of %s lies outside this job's ranges: not used", s["TrainingJobName"],
                              parent_name)
                continue
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dict(dists), value=float(value)))
            seeded += 1
    if parents:
        jlog.info("warm start from %s: %d earlier trials seed the search", ", ".join(parents), seeded)
    if config["Strategy"] == "Grid":
        combinations = grid(config["ParameterRanges"])
        for params in combinations:
            study.enqueue_trial(params)
        max_jobs = len(combinations) if max_jobs is None else min(int(max_jobs), len(combinations))

    created = _now()
    summaries: list[dict[str, Any]] = []
    counters = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    lock = threading.Lock()

    def run_trial(index: int, trial: Any) -> tuple[Any, dict[str, Any], float | None, bool]:
        tuned = tuned_values(trial.params)
        job_name = f"{name}-{index:03d}-{secrets.token_hex(4)}"
        job = json.loads(json.dumps(dict(definition)))
        job.pop("StaticHyperParameters", None)
        job["TrainingJobName"] = job_name
        job["HyperParameters"] = {**definition.get("StaticHyperParameters", {}), **tuned,
                                  OBJECTIVE_HYPERPARAMETER: metric}
        if job.get("CheckpointConfig"):  # each trial resumes only from its own checkpoints
            job["CheckpointConfig"]["S3Uri"] = storage.join(job["CheckpointConfig"]["S3Uri"], job_name)
        steps = [0]
        pruned = [False]

        def on_metric(metric_name: str, value: float) -> bool:
            if time.monotonic() >= deadline:  # the tuning job's MaxRuntimeInSeconds stops its running trials too
                jlog.warning("trial %s: the tuning job's MaxRuntimeInSeconds has passed: stopping it", job_name)
                return True
            if metric_name != metric:
                return False
            steps[0] += 1
            trial.report(value, steps[0])
            if trial.should_prune():
                pruned[0] = True
                jlog.info("trial %s: %s=%g at checkpoint %d: early stopping", job_name, metric, value, steps[0])
                return True
            return False

        jlog.info("trial %s: %s", job_name, ", ".join(f"{k}={v}" for k, v in tuned.items()))
        with lock:
            counters["InProgress"] += 1
        try:
            result = train(job, backend, workdir, log=jlog, on_metric=on_metric)
        except Exception as e:  # a trial that cannot start is a failed trial, not a failed search
            result = {"TrainingJobName": job_name, "TrainingJobStatus": "Failed",
                      "FailureReason": f"{type(e).__name__}: {e}"}
        final = {m["MetricName"]: m["Value"] for m in result.get("FinalMetricDataList") or []}
        value = final.get(metric) if result.get("TrainingJobStatus") in ("Completed", "Stopped") else None
        return trial, _summary(name, result, tuned, objective, value), value, pruned[0]

    started = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_parallel) as pool:
        running: set[concurrent.futures.Future] = set()
        while True:
            while len(running) < max_parallel and started < max_jobs and time.monotonic() < deadline:
                started += 1
                running.add(pool.submit(run_trial, started, study.ask(dict(dists))))
            if not running:
                break
            done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                trial, summary, value, pruned = future.result()
                status = summary["TrainingJobStatus"]
                with lock:
                    counters["InProgress"] -= 1
                    counters["Completed" if status == "Completed" else "Stopped" if status == "Stopped"
                             else "NonRetryableError"] += 1
                summaries.append(summary)
                if pruned:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                elif value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
                jlog.info("trial %s: %s%s", summary["TrainingJobName"], status,
                          f", {metric}={value:g}" if value is not None else
                          f" ({summary.get('FailureReason', 'no objective')})")
    if started < max_jobs and time.monotonic() >= deadline:
        jlog.warning("tuning job %s: MaxRuntimeInSeconds reached after %d trials", name, started)

    scored = [s for s in summaries if s["ObjectiveStatus"] == "Succeeded" and s["TrainingJobStatus"] == "Completed"]
    best = (max if maximize else min)(
        scored, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]) if scored else None
    describe: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "HyperParameterTuningJobStatus": "Completed" if best else "Failed",
        "CreationTime": created, "HyperParameterTuningEndTime": _now(), "LastModifiedTime": _now(),
        "TrainingJobStatusCounters": counters,
        "ObjectiveStatusCounters": {"Succeeded": sum(s["ObjectiveStatus"] == "Succeeded" for s in summaries),
                                    "Pending": 0, "Failed": sum(s["ObjectiveStatus"] == "Failed" for s in summaries)},
        "Backend": {"Name": backend, "Store": store, "WarmStartTrials": seeded},
    }
    if best:
        describe["BestTrainingJob"] = best
    else:
        describe["FailureReason"] = f"no training job of the {len(summaries)} completed with a {metric} value"
    if request.get("WarmStartConfig"):
        describe["WarmStartConfig"] = request["WarmStartConfig"]
    _write_result(store, name, {"Request": request, "Describe": describe, "TrainingJobSummaries": summaries})
    jlog.info("tuning job %s: %s; best %s", name, describe["HyperParameterTuningJobStatus"],
              f"{best['TrainingJobName']} ({metric}={best['FinalHyperParameterTuningJobObjectiveMetric']['Value']:g})"
              if best else "none")
    return {**describe, "TrainingJobSummaries": summaries}
