"""Warm start, the pipeline's side: which model a run starts from, and what of it the data steps reuse.

A scheduled retrain that starts from the promoted model must mean the same by every token id as that
model did, so the run tokenizes with the parent's tokenizer and converts with the parent's
vocabularies; the training job then gets the parent in its ``model`` channel (the container's side is
model/warm_start.py). The parent is resolved once, in ``plan`` (``init_model``: ``none``, ``promoted``
or a URI), so the run records the model it started from even if the pointer moves while it runs. The
``parent_model`` task then fetches it once, checks it before any data is prepared (our model's files,
the run's languages, the architecture the run's hyperparameters ask for) and publishes its small files
under ``<run>/parent/``: the tokenizer, both vocabularies, its hyperparameters, config and training
metrics, and ``parent.json`` naming it. Nothing here imports Airflow or torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.archive import sha256_file
from model.constants import (
    HYPERPARAMETERS_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FILES,
    PARAMS_FILE,
    TOKENIZER_FILE,
    VOCAB_SOURCE_FILE,
    VOCAB_TARGET_FILE,
)
from model.hyperparameters import (
    HyperparameterError,
    architecture_differences,
    parse_hyperparameters,
    read_model_hyperparameters,
)
from model.tokenizer import Tokenizer, TokenizerConfig, tokenizer_files
from pipeline_tasks import storage

log = logging.getLogger(__name__)

INIT_NONE = "none"
INIT_PROMOTED = "promoted"
PARENT_FILE = "parent.json"
# What a run keeps of its parent (params.pt stays where it is: the training job fetches it).
_KEPT_FILES = (VOCAB_SOURCE_FILE, VOCAB_TARGET_FILE, HYPERPARAMETERS_FILE, MODEL_CONFIG_FILE, METRICS_FILE)


class ParentModelError(ValueError):
    """The run cannot start from this parent; retrying will not change that."""


def _exists(uri: str) -> bool:
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        return storage.head(loc) is not None or bool(storage.list_files(uri))
    return loc.exists()


def resolve_init_model(init_model: str | None, pointer_uri: str, *, backend: str = "local") -> dict[str, Any] | None:
    """The parent of this run, or None to train from scratch.

    ``promoted`` reads the pointer now (with nothing promoted yet the run trains from scratch and says
    so); any other value is a model URI (a model.tar.gz or a model folder; a path, file:// or s3://),
    which must exist. Returns ``{"init_model", "model", …}``; for ``promoted`` also the run, training
    job and metrics the pointer records."""
    value = (init_model or INIT_NONE).strip()
    if value.lower() == INIT_NONE:
        return None
    if value.lower() == INIT_PROMOTED:
        from pipeline_tasks.gate import read_pointer

        pointer = read_pointer(pointer_uri)
        if pointer is None:
            log.warning("init_model=promoted, but no model is promoted yet (%s): this run trains from scratch",
                        pointer_uri)
            return None
        if not isinstance(pointer.get("model"), str) or not pointer["model"]:
            raise ParentModelError(f"{pointer_uri}: the promoted-model pointer names no model")
        parent = {"init_model": INIT_PROMOTED, "model": pointer["model"], "pointer": pointer_uri,
                  "run_id": pointer.get("run_id"), "training_job": pointer.get("training_job"),
                  "metrics": pointer.get("metrics") or {}}
        log.info("init_model=promoted: starting from %s (run %s, training job %s)", parent["model"],
                 parent["run_id"], parent["training_job"])
    else:
        loc = storage.parse(value)
        uri = value if isinstance(loc, storage.S3Location) else os.path.abspath(loc)
        if not _exists(uri):
            raise ParentModelError(f"init_model {value}: no model there (a model.tar.gz or a model folder)")
        parent = {"init_model": value, "model": uri}
        log.info("init_model: starting from %s", uri)
    if backend == "sagemaker" and not parent["model"].startswith("s3://"):
        raise ParentModelError(f"init_model: {parent['model']} is not in S3; a SageMaker training job reads its "
                               "model channel from S3 only")
    return parent


def _read_tokenizer(model_dir: Path) -> TokenizerConfig | None:
    if not tokenizer_files(model_dir):
        return None
    try:
        return Tokenizer.load(model_dir).cfg
    except (ValueError, TypeError) as e:
        raise ParentModelError(f"{model_dir / TOKENIZER_FILE}: the parent's tokenizer cannot be read: {e}") from None


def check_parent(model_dir: Path, hyperparameters: Mapping[str, Any], source_lang: str, target_lang: str,
                 tokenizer: TokenizerConfig) -> TokenizerConfig | None:
    """The parent's tokenizer (None for a word-level parent without one), after checking that this run can
    start from it: our model's files, the run's languages, the architecture the run's hyperparameters
    give (each difference named with both values, as the container would name it after the data was made)."""
    from pipeline_tasks.jobs.requests import hyperparameter_strings

    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ParentModelError(f"the parent model has no {', '.join(missing)}: not a model written by this "
                               "project's container")
    try:
        parent_hp = read_model_hyperparameters(model_dir)
    except ValueError as e:
        raise ParentModelError(f"the parent model: {e}") from None
    try:
        child_hp = parse_hyperparameters(hyperparameter_strings(hyperparameters))
    except HyperparameterError as e:
        raise ParentModelError(str(e)) from None
    problems = architecture_differences(parent_hp, child_hp)
    if problems:
        raise ParentModelError("the run's hyperparameters do not keep the parent's architecture (a warm start "
                               "keeps every hyperparameter that shapes a tensor; set them as the parent has "
                               "them): " + "; ".join(problems))
    cfg = _read_tokenizer(model_dir)
    if cfg is None:
        if tokenizer.bpe_vocab_size:
            raise ParentModelError("the parent has no tokenizer (a word-level model): a warm start from it needs "
                                   "bpe_vocab_size null, or its words would be split into subwords it never saw")
        return None
    if (cfg.source_lang, cfg.target_lang) != (source_lang, target_lang):
        raise ParentModelError(f"the parent translates {cfg.source_lang}→{cfg.target_lang}, this run "
                               f"{source_lang}→{target_lang}")
    return cfg


def describe_tokenizer(cfg: TokenizerConfig) -> str:
    """"moses, joint BPE 8000" or "whitespace, words": for log lines that compare two tokenizers."""
    if not cfg.bpe_vocab_size:
        return f"{cfg.mode}, words"
    return f"{cfg.mode}, {'joint ' if cfg.bpe_joint else ''}BPE {cfg.bpe_vocab_size}"


def keep_parent_files(model_dir: Path, dest: Path, parent: Mapping[str, Any],
                      tokenizer: TokenizerConfig | None) -> dict[str, Any]:
    """Copy what the run reuses of the parent into `dest` and write ``parent.json``; returns its content."""
    dest.mkdir(parents=True, exist_ok=True)
    kept = []
    for path in [*(model_dir / name for name in _KEPT_FILES), *tokenizer_files(model_dir)]:
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
            kept.append(path.name)
    record = {**dict(parent), "params_sha256": sha256_file(model_dir / PARAMS_FILE), "files": sorted(kept),
              "tokenizer": describe_tokenizer(tokenizer) if tokenizer else None}
    (dest / PARENT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record
