"""The CreateHyperParameterTuningJob request and its checks (SageMaker Automatic Model Tuning).

:func:`tuning_job_config` builds the boto3 ``create_hyper_parameter_tuning_job`` request from a training
request made by pipeline_tasks.jobs.requests.training_job_config, so a tuning job's trials are the
training jobs a single run would start, with the container's MetricDefinitions (the objective is one of
them). :func:`check_parameter_ranges` checks the ranges in SageMaker's shape with the container's own
hyperparameter spec (model/hyperparameters.py): the names must be the algorithm's, the range's kind must
fit the name's type, every endpoint and categorical value must be one the name allows, min ≤ max, and the
scaling must suit the type and the range. A bad range is a ``TuningError`` (a ValueError) naming the
parameter, raised before any data work. Nothing here imports torch or Airflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from model.hyperparameters import HyperparameterError, format_value, parse_value, value_type
from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks.jobs.names import TUNING_JOB_NAME_MAX, validate_job_name

# The objectives the built-in algorithm is tunable on, and their direction.
OBJECTIVES = {"validation:bleu": "Maximize", "validation:perplexity": "Minimize", "validation:accuracy": "Maximize"}
STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
WARM_START_TYPES = ("IdenticalDataAndAlgorithm", "TransferLearning")
EARLY_STOPPING_TYPES = ("Off", "Auto")
RANGE_KEYS = ("IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges")
MAX_TUNABLE = 30            # hyperparameters one tuning job may search over
MAX_CATEGORICAL_VALUES = 30
MAX_PARENTS = 5             # parent tuning jobs of a warm start


class TuningError(ValueError):
    """A tuning request SageMaker would refuse, or that would tune something other than was meant."""


def _number(name: str, raw: Any, what: str) -> float:
    """An endpoint, typed as the name's values are (an int stays an int)."""
    try:
        return parse_value(name, raw)  # type: ignore[return-value]
    except HyperparameterError as e:
        raise TuningError(f"tuning range of {name}: {what} {raw!r}: {e.reason}") from None


def _check_scaling(name: str, scaling: str, kind: str, low: float, high: float) -> None:
    if scaling not in SCALING_TYPES:
        raise TuningError(f"tuning range of {name}: ScalingType {scaling!r} is not one of {', '.join(SCALING_TYPES)}")
    if scaling == "ReverseLogarithmic" and kind == "Integer":
        raise TuningError(f"tuning range of {name}: ReverseLogarithmic scaling is for continuous ranges only")
    if scaling == "Logarithmic" and low <= 0:
        raise TuningError(f"tuning range of {name}: Logarithmic scaling needs MinValue > 0, got {format_value(low)}")
    if scaling == "ReverseLogarithmic" and not (low >= 0 and high < 1):
        raise TuningError(f"tuning range of {name}: ReverseLogarithmic scaling needs 0 <= MinValue and MaxValue < 1, "
                          f"got {format_value(low)}..{format_value(high)}")


def check_parameter_ranges(ranges: Mapping[str, Sequence[Mapping[str, Any]]],
                           static: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The ranges as the API takes them (every value a string, ScalingType spelled out), or TuningError.

    ``ranges`` has SageMaker's ParameterRanges shape; ``static`` are the hyperparameters every trial shares,
    which a range may not also set."""
    unknown_keys = sorted(set(ranges) - set(RANGE_KEYS))
    if unknown_keys:
        raise TuningError(f"ParameterRanges: unknown key(s) {', '.join(unknown_keys)}; "
                          f"allowed: {', '.join(RANGE_KEYS)}")
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in RANGE_KEYS}
    seen: set[str] = set()
    for key in RANGE_KEYS:
        kind = key.removesuffix("ParameterRanges")
        for entry in ranges.get(key) or []:
            name = entry.get("Name")
            if not isinstance(name, str) or not name:
                raise TuningError(f"{key}: every range needs a Name, got {dict(entry)!r}")
            try:
                typ = value_type(name)
            except HyperparameterError as e:
                raise TuningError(f"tuning range of {name}: {e}") from None
            if name in seen:
                raise TuningError(f"tuning range of {name}: the name has more than one range")
            if static and name in static:
                raise TuningError(f"tuning range of {name}: also a static hyperparameter; tune it or fix it, not both")
            seen.add(name)
            if kind == "Categorical":
                values = entry.get("Values")
                if not isinstance(values, list | tuple) or not 1 <= len(values) <= MAX_CATEGORICAL_VALUES:
                    raise TuningError(f"tuning range of {name}: Values must be a list of 1..{MAX_CATEGORICAL_VALUES} "
                                      f"values, got {values!r}")
                texts = []
                for value in values:
                    try:
                        texts.append(format_value(parse_value(name, value)))
                    except HyperparameterError as e:
                        raise TuningError(f"tuning range of {name}: value {value!r}: {e.reason}") from None
                if len(set(texts)) != len(texts):
                    raise TuningError(f"tuning range of {name}: Values repeat a value ({', '.join(texts)})")
                out[key].append({"Name": name, "Values": texts})
                continue
            wanted = int if kind == "Integer" else float
            if typ is not wanted:
                what = {int: "an integer", float: "a number", bool: "true/false", str: "a choice"}[typ]
                fit = "Integer" if typ is int else "Continuous" if typ is float else "Categorical"
                raise TuningError(f"tuning range of {name}: {name} is {what}, so its range is {fit}, not {kind}")
            low = _number(name, entry.get("MinValue"), "MinValue")
            high = _number(name, entry.get("MaxValue"), "MaxValue")
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise TuningError(f"tuning range of {name}: MinValue {format_value(low)} > "
                                  f"MaxValue {format_value(high)}")
            scaling = entry.get("ScalingType", "Auto")
            _check_scaling(name, scaling, kind, low, high)
            spell = (lambda v: str(int(v))) if kind == "Integer" else format_value
            out[key].append({"Name": name, "MinValue": spell(low), "MaxValue": spell(high), "ScalingType": scaling})
    if not seen:
        raise TuningError("ParameterRanges: no hyperparameter to tune")
    if len(seen) > MAX_TUNABLE:
        raise TuningError(f"ParameterRanges: {len(seen)} hyperparameters, at most {MAX_TUNABLE} can be tuned at once")
    return out


def check_tuning_job_name(name: str) -> None:
    """A HyperParameterTuningJobName SageMaker accepts (32 characters at most)."""
    try:
        validate_job_name(name, TUNING_JOB_NAME_MAX)
    except ValueError as e:
        raise TuningError(f"tuning {e}") from None


def tuning_job_config(*, job_name: str, training_request: Mapping[str, Any], objective: str,
                      ranges: Mapping[str, Sequence[Mapping[str, Any]]], strategy: str = "Bayesian",
                      max_jobs: int | None = 6, max_parallel: int = 1, early_stopping: str = "Off",
                      max_runtime_s: int | None = None, hyperband: Mapping[str, int] | None = None,
                      parents: Sequence[str] = (), warm_start_type: str = "IdenticalDataAndAlgorithm",
                      random_seed: int | None = None) -> dict[str, Any]:
    """The boto3 ``create_hyper_parameter_tuning_job`` request; its TrainingJobDefinition is the training
    request's job (image, MetricDefinitions, channels, output, resources, stopping condition, spot,
    environment), with the tuned names taken out of its hyperparameters. Not its CheckpointConfig: every
    trial would sync the one prefix, and a trial would resume from another's checkpoints."""
    check_tuning_job_name(job_name)
    if objective not in OBJECTIVES:
        raise TuningError(f"objective {objective!r}: the algorithm is tunable on {', '.join(OBJECTIVES)}")
    if strategy not in STRATEGIES:
        raise TuningError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if early_stopping not in EARLY_STOPPING_TYPES:
        raise TuningError(f"early stopping {early_stopping!r} is not one of {', '.join(EARLY_STOPPING_TYPES)}")
    algorithm = training_request["AlgorithmSpecification"]
    if objective not in {d["Name"] for d in algorithm.get("MetricDefinitions") or METRIC_DEFINITIONS}:
        raise TuningError(f"objective {objective}: the training request's MetricDefinitions do not define it")
    tuned = {e.get("Name") for key in RANGE_KEYS for e in ranges.get(key) or []}
    static = {k: v for k, v in (training_request.get("HyperParameters") or {}).items() if k not in tuned}
    checked = check_parameter_ranges(ranges, static)
    if strategy == "Grid":
        if checked["IntegerParameterRanges"] or checked["ContinuousParameterRanges"]:
            raise TuningError("strategy Grid searches categorical ranges only")
        if max_jobs is not None:
            raise TuningError("strategy Grid runs every combination: leave MaxNumberOfTrainingJobs unset")
    elif max_jobs is None or max_jobs < 1:
        raise TuningError(f"MaxNumberOfTrainingJobs must be at least 1, got {max_jobs!r}")
    if max_parallel < 1 or (max_jobs is not None and max_parallel > max_jobs):
        raise TuningError(f"MaxParallelTrainingJobs must be 1..MaxNumberOfTrainingJobs ({max_jobs}), "
                          f"got {max_parallel}")
    if strategy == "Hyperband" and early_stopping != "Off":
        raise TuningError("strategy Hyperband stops trials itself: TrainingJobEarlyStoppingType must be Off")
    if hyperband and strategy != "Hyperband":
        raise TuningError("a Hyperband strategy config needs strategy Hyperband")
    limits: dict[str, int] = {"MaxParallelTrainingJobs": int(max_parallel)}
    if max_jobs is not None:
        limits["MaxNumberOfTrainingJobs"] = int(max_jobs)
    if max_runtime_s is not None:
        if not 120 <= max_runtime_s <= 15 * 24 * 3600:
            raise TuningError(f"the tuning job's MaxRuntimeInSeconds must be 120..1296000, got {max_runtime_s}")
        limits["MaxRuntimeInSeconds"] = int(max_runtime_s)
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": OBJECTIVES[objective], "MetricName": objective},
        "ResourceLimits": limits,
        "ParameterRanges": checked,
        "TrainingJobEarlyStoppingType": early_stopping,
    }
    if hyperband:
        low, high = int(hyperband.get("MinResource", 1)), int(hyperband.get("MaxResource", 0))
        if not 1 <= low <= high:
            raise TuningError(f"Hyperband MinResource/MaxResource must be 1 <= min <= max, got {low}/{high}")
        config["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": low, "MaxResource": high}}
    if random_seed is not None:
        config["RandomSeed"] = int(random_seed)
    definition: dict[str, Any] = {
        "AlgorithmSpecification": {k: algorithm[k] for k in ("TrainingImage", "TrainingInputMode", "MetricDefinitions")
                                   if k in algorithm},
        "RoleArn": training_request["RoleArn"],
        "InputDataConfig": training_request["InputDataConfig"],
        "OutputDataConfig": training_request["OutputDataConfig"],
        "ResourceConfig": training_request["ResourceConfig"],
        "StoppingCondition": training_request["StoppingCondition"],
        "StaticHyperParameters": static,
        "EnableManagedSpotTraining": bool(training_request.get("EnableManagedSpotTraining", False)),
    }
    if "Environment" in training_request:
        definition["Environment"] = training_request["Environment"]
    request: dict[str, Any] = {"HyperParameterTuningJobName": job_name, "HyperParameterTuningJobConfig": config,
                               "TrainingJobDefinition": definition}
    if parents:
        if len(parents) > MAX_PARENTS:
            raise TuningError(f"a warm start takes at most {MAX_PARENTS} parent tuning jobs, got {len(parents)}")
        if warm_start_type not in WARM_START_TYPES:
            raise TuningError(f"WarmStartType {warm_start_type!r} is not one of {', '.join(WARM_START_TYPES)}")
        for parent in parents:
            check_tuning_job_name(parent)
        request["WarmStartConfig"] = {
            "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": p} for p in parents],
            "WarmStartType": warm_start_type}
    if training_request.get("Tags"):
        request["Tags"] = training_request["Tags"]
    return request


# The wmt_seq2seq DAG's ``tuning`` param: its keys and what they become in the request.
TUNING_PARAM_KEYS = ("objective", "ranges", "strategy", "max_jobs", "max_parallel", "early_stopping",
                     "max_runtime_s", "hyperband", "parents", "warm_start_type", "random_seed")


def tuning_request_from_param(tuning: Mapping[str, Any], job_name: str,
                              training_request: Mapping[str, Any]) -> dict[str, Any]:
    """The request for the DAG's ``tuning`` param (its keys: :data:`TUNING_PARAM_KEYS`), or TuningError."""
    unknown = sorted(set(tuning) - set(TUNING_PARAM_KEYS))
    if unknown:
        raise TuningError(f"tuning: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TUNING_PARAM_KEYS)}")
    if "objective" not in tuning or "ranges" not in tuning:
        raise TuningError("tuning: objective and ranges are required")
    return tuning_job_config(
        job_name=job_name, training_request=training_request, objective=tuning["objective"],
        ranges=tuning["ranges"], strategy=tuning.get("strategy") or "Bayesian",
        max_jobs=tuning.get("max_jobs", None if tuning.get("strategy") == "Grid" else 6),
        max_parallel=int(tuning.get("max_parallel") or 1), early_stopping=tuning.get("early_stopping") or "Off",
        max_runtime_s=tuning.get("max_runtime_s"), hyperband=tuning.get("hyperband"),
        parents=tuning.get("parents") or (),
        warm_start_type=tuning.get("warm_start_type") or "IdenticalDataAndAlgorithm",
        random_seed=tuning.get("random_seed"))


def check_tuning_param(tuning: Mapping[str, Any], hyperparameters: Mapping[str, str]) -> None:
    """plan's check of the ``tuning`` param, before any data work: the request it makes, on a training
    request that has the run's hyperparameters and placeholders for what only later tasks know."""
    placeholder = {"AlgorithmSpecification": {"TrainingImage": "image", "TrainingInputMode": "File",
                                              "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS]},
                   "RoleArn": "role", "InputDataConfig": [], "OutputDataConfig": {"S3OutputPath": "s3://b/p"},
                   "ResourceConfig": {}, "StoppingCondition": {}, "HyperParameters": dict(hyperparameters)}
    tuning_request_from_param(tuning, "plan-check", placeholder)
