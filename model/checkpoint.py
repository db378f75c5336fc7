"""What training leaves behind: the model directory (everything serving needs) and the resumable
training checkpoint.

``/opt/ml/model`` (SageMaker tars it into ``model.tar.gz``) holds ``params.pt`` (the best weights),
``hyperparameters.json`` (the parsed configuration as strings), ``config.json`` (architecture and
vocabulary sizes, format version), ``vocab.src.json``/``vocab.trg.json``, ``metrics.json`` and, when
the vocab channel carried one, the tokenizer (``tokenizer.json``, ``spm.*.model``: model/tokenizer.py).
``/opt/ml/checkpoints/checkpoint.pt`` holds the full training state (weights, optimizer, schedule,
counters, RNG) so that a stopped job — spot interruption, SIGTERM — carries on where it stopped.
Every file is written to a temporary sibling and renamed, so a kill never leaves a torn file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model import vocab as vocab_io
from model.atomic import staged_file
from model.constants import (
    HYPERPARAMETERS_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FILES,
    PARAMS_FILE,
    VOCAB_SOURCE_FILE,
    VOCAB_TARGET_FILE,
)
from model.hyperparameters import Hyperparameters, read_model_hyperparameters, to_strings
from model.model import Seq2Seq, build_model

FORMAT_VERSION = 1


def write_json(path: Path, obj: Any) -> None:
    with staged_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def torch_save(path: Path, obj: Any) -> None:
    with staged_file(path) as f:
        torch.save(obj, f)


def torch_load(path: Path, what: str) -> Any:
    """Load a file we wrote with :func:`torch_save`, allowing tensors and plain values only.

    Checkpoints and models come from S3 prefixes and channels that others may write to: a full unpickle
    would run whatever code the file names with the job's role. ``weights_only`` refuses anything but
    tensors, containers and primitives, which is all we ever save."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first
                      else type(e).__name__)
        raise ValueError(f"{path}: refusing to load this {what}: it holds objects other than tensors and plain "
                         f"values, which could run code ({detail.strip()[:300]}); it was not written by this "
                         "container or has been tampered with") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: cannot read this {what}: {type(e).__name__}: {str(e)[:300]}") from None


def unwrap(model: torch.nn.Module) -> Seq2Seq:
    """The plain model behind a DDP or torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model  # type: ignore[return-value]


def model_config(hp: Hyperparameters, source_vocab_size: int, target_vocab_size: int,
                 length_ratio: tuple[float, float] | None = None,
                 parent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "encoder_type": hp.encoder_type,
        "decoder_type": hp.decoder_type,
        "source_vocab_size": source_vocab_size,
        "target_vocab_size": target_vocab_size,
        "max_seq_len_source": hp.max_seq_len_source,
        "max_seq_len_target": hp.max_seq_len_target,
    }
    if length_ratio is not None:  # the training data's target/source length ratio: decoding's length limits
        config["length_ratio_mean"], config["length_ratio_std"] = (round(v, 6) for v in length_ratio)
    if parent is not None:  # a warm start: which weights training began from
        config["parent"] = dict(parent)
    return config


def save_model_files(
    model_dir: Path, hp: Hyperparameters, source_vocab: Mapping[str, int], target_vocab: Mapping[str, int],
    length_ratio: tuple[float, float] | None = None, parent: Mapping[str, Any] | None = None,
) -> None:
    """The parts of the model directory that do not change during training."""
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / HYPERPARAMETERS_FILE, to_strings(hp))
    write_json(model_dir / MODEL_CONFIG_FILE, model_config(hp, len(source_vocab), len(target_vocab), length_ratio,
                                                          parent))
    for name, v in ((VOCAB_SOURCE_FILE, source_vocab), (VOCAB_TARGET_FILE, target_vocab)):
        with staged_file(model_dir / name, "w", encoding="utf-8") as f:
            f.write(vocab_io.dumps(v))


def save_params(model_dir: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch_save(model_dir / PARAMS_FILE, state)


def save_metrics(model_dir: Path, metrics: Mapping[str, Any]) -> None:
    write_json(model_dir / METRICS_FILE, dict(metrics))


class LoadedModel:
    """A model directory loaded for decoding: model in eval mode plus its vocabularies."""

    def __init__(self, model: Seq2Seq, hp: Hyperparameters, source_vocab: dict[str, int],
                 target_vocab: dict[str, int], model_dir: Path,
                 length_ratio: tuple[float, float] | None = None) -> None:
        self.model = model
        self.length_ratio = length_ratio  # (mean, std) of the training data; None for older models
        self.hp = hp
        self.source_vocab = source_vocab
        self.target_vocab = target_vocab
        self.source_tokens = vocab_io.reverse(source_vocab)
        self.target_tokens = vocab_io.reverse(target_vocab)
        self.model_dir = model_dir


def load_model(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the trained model from a model directory; errors name the file that is wrong."""
    root = Path(model_dir)
    for name in MODEL_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"model directory {root} has no {name}: not a model written by our train")
    config = json.loads((root / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / MODEL_CONFIG_FILE}: format_version {config.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}")
    hp = read_model_hyperparameters(root)
    source_vocab = vocab_io.load(root / VOCAB_SOURCE_FILE)
    target_vocab = vocab_io.load(root / VOCAB_TARGET_FILE)
    model = build_model(hp, len(source_vocab), len(target_vocab))
    state = torch_load(root / PARAMS_FILE, "model parameter file")
    model.load_state_dict(state)
    model.to(device).eval()
    ratio = None
    if "length_ratio_mean" in config and "length_ratio_std" in config:
        ratio = (float(config["length_ratio_mean"]), float(config["length_ratio_std"]))
    return LoadedModel(model, hp, source_vocab, target_vocab, root, ratio)
