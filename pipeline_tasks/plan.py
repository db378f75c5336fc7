"""What a DAG run's ``plan`` task checks before any work: everything a JSON schema on the trigger form
cannot say, with messages that name the one thing at fault.

A run that downloads, tokenizes and uploads for minutes before a typo stops it wastes those minutes on
every try; these checks take milliseconds, so a bad run fails in seconds and (the DAG marks it so) is
not retried. Nothing here imports Airflow or torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from model.distributed import FULLY_REPLICATED, SHARDED_BY_S3_KEY
from model.hyperparameters import HyperparameterError, parse_hyperparameters
from pipeline_tasks.clean import CleanConfig
from pipeline_tasks.evaluate import MEAN
from pipeline_tasks.jobs.requests import hyperparameter_strings, is_builtin_image
from pipeline_tasks.jobs.tuning import TuningError, check_tuning_param
from pipeline_tasks.parent_model import INIT_NONE
from pipeline_tasks.pipeline import corpus_sources
from pipeline_tasks.test_sets import TestSetError, parse_test_sets
from pipeline_tasks.tracking import TrackingConfig

# The train channel's S3DataDistributionType values, the DAG's default first.
TRAIN_DISTRIBUTIONS = (FULLY_REPLICATED, SHARDED_BY_S3_KEY)


class PlanError(ValueError):
    """A run's parameters cannot work; retrying will not change that."""


def training_shards(distribution: str, shards: int | None, instance_count: int) -> int:
    """How many files the recordio step writes the training split as: as asked, else one per instance
    under ShardedByS3Key (so that each instance gets a file), else one."""
    if shards is not None:
        return int(shards)
    return int(instance_count) if distribution == SHARDED_BY_S3_KEY else 1


def unknown_keys(given: Iterable[str], known: Iterable[str], what: str) -> str | None:
    """"unknown conf key subset_sise (did you mean subset_size?)", or None when every key is known.

    Airflow accepts any key in a run's conf and the run quietly uses the param's default for the one a
    user misspelt, so the misspelling has to be caught by us."""
    known = sorted(known)
    bad = sorted(k for k in given if k not in known)
    if not bad:
        return None
    parts = []
    for key in bad:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        parts.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
    return f"unknown {what}{'s' if len(bad) > 1 else ''} {', '.join(parts)}"


def check_hyperparameters(hyperparameters: Mapping[str, Any]) -> None:
    """The container's own parser on the values the job will get, so that its message (naming the
    hyperparameter, the value and what is allowed) reaches the user before the data is prepared."""
    from pipeline_tasks.jobs.requests import hyperparameter_strings

    try:
        parse_hyperparameters(hyperparameter_strings(hyperparameters))
    except HyperparameterError as e:
        raise PlanError(str(e)) from None
    except ValueError as e:  # a value that cannot be passed as a string at all
        raise PlanError(str(e)) from None


# Params that moved: a conf that still names them is told where they are now.
MOVED = {"max_len": "cleaning.max_len", "max_ratio": "cleaning.max_ratio"}


def check_conf(conf: Mapping[str, Any] | None, params: Iterable[str]) -> None:
    """Refuse top-level conf keys that are not params of the DAG."""
    known = set(params)
    moved = [f"{k} is now {MOVED[k]}" for k in conf or {} if k in MOVED and k not in known]
    if moved:
        raise PlanError(f"conf: {'; '.join(moved)} (the clean step filters by length), e.g. "
                        '{"cleaning": {"max_len": 100, "max_ratio": 3}}')
    problem = unknown_keys(conf or {}, params, "conf key")
    if problem:
        raise PlanError(f"{problem}: the run would quietly use the default instead")


def check_training_run(params: Mapping[str, Any], conf: Mapping[str, Any] | None, known: Iterable[str]) -> None:
    """Every check of the wmt_seq2seq DAG's plan task; the first problem found is raised. `known` is the
    DAG's declared params (the run's resolved params also hold any unknown key of the conf)."""
    from pipeline_tasks.gate import GateRule

    check_conf(conf, known)
    check_hyperparameters(params["hyperparameters"])
    try:
        rule = GateRule.from_dict(params["gate"])
    except ValueError as e:
        raise PlanError(f"gate: {e}") from None
    try:
        sets = parse_test_sets(params.get("test_sets"), params["source_lang"], params["target_lang"])
    except TestSetError as e:
        raise PlanError(str(e)) from None
    try:
        sources = corpus_sources(params.get("corpus", "wmt17-de-en-preprocessed"), params.get("corpus_layout"))
    except ValueError as e:
        raise PlanError(str(e)) from None
    if not any(s.files().get("val") for s in sources):
        raise PlanError("corpus: no source has a validation split; give one a layout with val, e.g. "
                        '{"source": …, "layout": {"train": …, "val": "newstest2016.{lang}"}}')
    if any(s.corpus_split for s in sets) and not any(s.files().get("test") for s in sources):
        raise PlanError("corpus: no source has a test split, and test_sets asks for it (\"test\", the default); "
                        "name test sets, e.g. [\"newstest2017\"]")
    names = [s.name for s in sets]
    if rule.test_set is not None and rule.test_set not in (*names, MEAN):
        raise PlanError(f"gate: test_set {rule.test_set!r} is not one of the run's test sets ({', '.join(names)}) "
                        f"or {MEAN}")
    try:
        TrackingConfig.from_dict(params.get("tracking"))
    except (ValueError, TypeError) as e:
        raise PlanError(f"tracking: {e}") from None
    try:
        CleanConfig.from_dict(params.get("cleaning"))
    except (ValueError, TypeError) as e:
        raise PlanError(str(e)) from None
    if params.get("tuning"):
        try:
            check_tuning_param(params["tuning"], hyperparameter_strings(params["hyperparameters"]))
        except TuningError as e:
            raise PlanError(str(e)) from None
    count = int(params.get("instance_count") or 1)
    distribution = params.get("train_distribution") or FULLY_REPLICATED
    if count > 1 and is_builtin_image(params["image"]):
        raise PlanError(f"instance_count={count} with the built-in seq2seq algorithm ({params['image']}): it trains "
                        f"on one instance, so {count} instances would each train alone (and be billed); use this "
                        "project's image, which trains across instances, or instance_count=1")
    shards = training_shards(distribution, params.get("train_shards"), count)
    if distribution == SHARDED_BY_S3_KEY and shards < count:
        raise PlanError(f"train_shards={shards} with ShardedByS3Key over instance_count={count}: each instance gets "
                        f"about 1/{count} of the training files, so {count - shards} would get none; use at least "
                        f"{count} shards (null: one per instance)")
    if params["source_lang"] == params["target_lang"]:
        raise PlanError(f"source_lang and target_lang are the same ({params['source_lang']!r})")
    init_model = str(params.get("init_model") or INIT_NONE).strip()
    if init_model.lower() != INIT_NONE and is_builtin_image(params["image"]):
        raise PlanError(f"init_model={init_model} needs this project's image: {params['image']} is the built-in "
                        "seq2seq algorithm, whose training jobs take no 'model' channel (no warm start)")
    if params["backend"] == "sagemaker":
        if not str(params["artifact_root"]).startswith("s3://"):
            raise PlanError("backend=sagemaker needs an s3:// artifact_root (SageMaker reads channels from S3)")
        if not params.get("role_arn"):
            raise PlanError("backend=sagemaker needs role_arn (the SageMaker execution role)")
    elif params.get("register_model_package"):
        raise PlanError(f"register_model_package needs backend=sagemaker: a SageMaker model package names an S3 "
                        f"model and an ECR image, and backend={params['backend']} has neither")


def resolve_parent(params: Mapping[str, Any], pointer_uri: str) -> dict[str, Any] | None:
    """The warm start's parent for the ``init_model`` param, resolved once, now (see
    pipeline_tasks/parent_model.py); None to train from scratch."""
    from pipeline_tasks.parent_model import ParentModelError, resolve_init_model

    try:
        return resolve_init_model(params.get("init_model"), pointer_uri, backend=params["backend"])
    except ParentModelError as e:
        raise PlanError(str(e)) from None
