"""Warm start: a training job that begins from a parent model's weights (SageMaker's incremental training).

The parent arrives in the optional ``model`` channel, as SageMaker passes a model for incremental
training: a ``model.tar.gz`` (what a training job leaves in S3) or its extracted files. The child
keeps everything that shapes a tensor (:func:`model.hyperparameters.architecture_names`) and the
parent's vocabularies, so that id 417 means the same word in both; training hyperparameters
(learning rate, batches, schedule, dropout, stopping) may change, and the optimizer and schedule start
fresh. Every mismatch is named with both values before any data is loaded, so a wrong parent costs
seconds, not a training job. The checks happen here, in the container, because the container is what
a SageMaker job runs: the pipeline's own checks cannot vouch for a request submitted another way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model import vocab as vocab_io
from model.archive import MODEL_ARCHIVE_SUFFIXES, extract_model_archive, sha256_file
from model.checkpoint import torch_load, unwrap
from model.constants import (
    MODEL_CHANNEL,
    MODEL_FILES,
    PARAMS_FILE,
    VOCAB_SOURCE_FILE,
    VOCAB_TARGET_FILE,
)
from model.hyperparameters import Hyperparameters, architecture_differences, read_model_hyperparameters

log = logging.getLogger(__name__)

class WarmStartError(ValueError):
    """The ``model`` channel holds no usable parent, or one this job's architecture cannot start from."""


def parent_dir(channel: Path, scratch: Path) -> Path | None:
    """The folder of the parent model in the ``model`` channel, or None when the channel is absent or empty.

    An archive is extracted into `scratch` (checked member by member); otherwise the channel holds the
    model files themselves, at its top or in one subfolder (how an extracted archive may be laid out)."""
    if not channel.is_dir():
        return None
    files = sorted(p for p in channel.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    archives = [p for p in files if p.name.endswith(MODEL_ARCHIVE_SUFFIXES)]
    if len(archives) > 1:
        raise WarmStartError(f"channel '{MODEL_CHANNEL}' holds {len(archives)} model archives "
                             f"({', '.join(p.name for p in archives[:3])}): pass one parent model")
    if archives:
        try:
            root = extract_model_archive(archives[0], scratch)
        except ValueError as e:
            raise WarmStartError(f"channel '{MODEL_CHANNEL}': {e}") from None
    else:
        found = sorted({p.parent for p in files if p.name == PARAMS_FILE})
        if len(found) != 1:
            raise WarmStartError(f"channel '{MODEL_CHANNEL}' ({channel}): expected one model ({PARAMS_FILE} with "
                                 f"its files, or a model.tar.gz), found {len(found)} {PARAMS_FILE}")
        root = found[0]
    missing = [name for name in MODEL_FILES if not (root / name).is_file()]
    if missing:
        raise WarmStartError(f"channel '{MODEL_CHANNEL}': the parent model has no {', '.join(missing)} "
                             f"(in {root}): not a model written by this container")
    return root


def _first_difference(parent: Mapping[str, int], child: Mapping[str, int]) -> str:
    by_id_parent = {i: t for t, i in parent.items()}
    by_id_child = {i: t for t, i in child.items()}
    for i in range(max(len(parent), len(child))):
        a, b = by_id_parent.get(i), by_id_child.get(i)
        if a != b:
            return f"id {i} is {a!r} in the parent, {b!r} here"
    return "same ids"  # pragma: no cover - only called when they differ


def check_compatible(parent: Path, hp: Hyperparameters, source_vocab: Mapping[str, int],
                     target_vocab: Mapping[str, int]) -> Hyperparameters:
    """The parent's hyperparameters, after checking that this job can start from its weights.

    Raises :class:`WarmStartError` naming each architecture hyperparameter that differs (both values)
    and each vocabulary that is not the parent's (sizes, or the first id that differs)."""
    try:
        parent_hp = read_model_hyperparameters(parent)
    except ValueError as e:
        raise WarmStartError(f"the parent model in channel 'model': {e}") from None
    problems = architecture_differences(parent_hp, hp)
    for file, mine in ((VOCAB_SOURCE_FILE, source_vocab), (VOCAB_TARGET_FILE, target_vocab)):
        try:
            theirs = vocab_io.load(parent / file)
        except (ValueError, OSError) as e:
            raise WarmStartError(f"{parent / file}: the parent's vocabulary cannot be read: {e}") from None
        if len(theirs) != len(mine):
            problems.append(f"{file}: parent {len(theirs)} entries, this job's vocab channel {len(mine)}")
        elif dict(theirs) != dict(mine):
            problems.append(f"{file}: not the parent's vocabulary ({_first_difference(theirs, mine)})")
    if problems:
        raise WarmStartError("the parent model in channel 'model' does not fit this job (a warm start keeps the "
                             "parent's architecture and vocabularies; make the channels with the parent's "
                             "vocabulary): " + "; ".join(problems))
    return parent_hp


def load_parent_weights(model: torch.nn.Module, parent: Path) -> dict[str, Any]:
    """Copy the parent's parameters into `model`; returns the parent's identity for the model's config.json.

    Shapes are checked tensor by tensor (the hyperparameter check should have caught every difference;
    this names what it could not, e.g. a learned position table of another length)."""
    path = parent / PARAMS_FILE
    state = torch_load(path, "parent model parameter file")
    if not isinstance(state, dict):
        raise WarmStartError(f"{path}: not a parameter file (a {type(state).__name__}, not a state dict)")
    own = unwrap(model).state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + \
                ([f"shapes differ (parent vs this job): {', '.join(wrong[:5])}"] if wrong else [])
        raise WarmStartError(f"{path}: the parent's parameters do not fit this model: {'; '.join(parts)}")
    unwrap(model).load_state_dict(state)
    identity = {"params_sha256": sha256_file(path), "parameters": sum(int(v.numel()) for v in state.values())}
    log.info("warm start: %d parameters from the parent model (%s, params.pt sha256 %s); optimizer and "
             "learning-rate schedule start fresh", identity["parameters"], parent, identity["params_sha256"][:12])
    return identity
