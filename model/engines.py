"""Which engine decodes for a :class:`model.translator.Translator`: our PyTorch search (fp32, or with
``torch.ao`` dynamic int8 quantization on CPU), or CTranslate2 on the model directory's export.

Selected per model (an export in ``MODEL_DIR/ctranslate2/`` and its recorded compute type) and per
environment (``SEQ2SEQ_ENGINE``, ``SEQ2SEQ_COMPUTE_TYPE``, ``SEQ2SEQ_QUANTIZE`` via ``InferenceConfig``):

- ``engine=torch``: our search on the model as trained; ``quantize=int8`` first replaces its
  ``nn.LSTM``/``nn.GRU``/``nn.Linear`` modules by dynamically quantized ones (CPU only: PyTorch has no
  dynamic int8 kernels for CUDA).
- ``engine=ctranslate2``: CTranslate2, or an error at load naming what is missing (the library, the
  export, a Transformer model, an export of these weights, a setting it cannot honour).
- ``engine=auto`` (the default, also when unset): CTranslate2 when the model directory holds an export,
  the library is installed and ``quantize`` is not asked for; otherwise torch, with a log line saying
  why when an export was there but could not be used. A model without an export decodes as before.

Why the choice is made once at load, not per request: the engines hold the weights in different forms
(CTranslate2 quantizes at load), and a server must report a bad setting before it accepts traffic.
Requests CTranslate2 cannot decode with our semantics (an output longer than the export's position table)
go through our search instead, with a log line.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from model.beam_search import Translation
from model.constants import MODEL_CONFIG_FILE

log = logging.getLogger(__name__)



class Engine(Protocol):
    """What the Translator asks of an engine other than our own search."""

    name: str

    def decode(self, sources: Sequence[Sequence[int]], beam_size: int, max_output_length: int | Sequence[int],
               alpha: float, beta: float, attention: bool) -> list[Translation]: ...

    def unsupported(self, beam_size: int, max_output_length: int, alpha: float, beta: float,
                    longest_source: int) -> Any: ...


def quantize_int8(model: nn.Module) -> nn.Module:
    """``torch.ao`` dynamic int8 quantization of the recurrent and linear layers: weights int8, activations
    quantized per batch on the fly, so no calibration data is needed. Embeddings and convolutions stay
    float32. Returns a new module (the float one is left as it was)."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    if torch.backends.quantized.engine == "none":
        raise ValueError("quantize=int8: this PyTorch build has no quantized CPU engine")
    with warnings.catch_warnings():
        # torch 2.13 announces the removal of torch.ao.quantization and of quantized tensors (in favour of
        # torchao, which has no dynamic LSTM/GRU) on every call; they work in the pinned torch, which the
        # tests run. A torch upgrade that removes them fails those tests, not silently.
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(copy.deepcopy(model), {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8).eval()


def describe(engine: Engine | None, config: Any) -> str:
    """What decodes, for logs and reports: the CTranslate2 engine's own description, or torch (int8)."""
    if engine is not None:
        return repr(engine)
    return "torch int8 (torch.ao dynamic)" if config.quantize == "int8" else "torch"


def library_installed() -> bool:
    """Whether ``import ctranslate2`` would find the library, without importing it (the server's master
    must not load its thread pools before forking workers)."""
    if "ctranslate2" in sys.modules:
        return sys.modules["ctranslate2"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("ctranslate2") is not None


def _is_transformer(hp: Any) -> bool:
    return hp.encoder_type == "transformer" and hp.decoder_type == "transformer"


def check(model_dir: Path, config: Any) -> None:
    """Cheap checks of the engine settings against a model directory, without loading the model or the
    library (the server's master runs this before forking workers): a clear error instead of a crash in
    every worker."""
    from model.ctranslate import EXPORT_DIR, EngineUnavailable, read_export_info

    if config.engine != "ctranslate2":
        return
    if config.quantize == "int8":
        raise ValueError("SEQ2SEQ_QUANTIZE=int8 quantizes the torch engine; with SEQ2SEQ_ENGINE=ctranslate2 use "
                         "SEQ2SEQ_COMPUTE_TYPE=int8")
    if not library_installed():
        raise EngineUnavailable("SEQ2SEQ_ENGINE=ctranslate2, but the ctranslate2 library is not installed")
    try:
        arch = json.loads((model_dir / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the model check reports the model directory itself
    if arch.get("encoder_type") != "transformer" or arch.get("decoder_type") != "transformer":
        raise EngineUnavailable(f"SEQ2SEQ_ENGINE=ctranslate2 needs a transformer model; {model_dir} is "
                                f"{arch.get('encoder_type')}/{arch.get('decoder_type')}")
    if read_export_info(model_dir) is None:
        raise EngineUnavailable(f"SEQ2SEQ_ENGINE=ctranslate2, but {model_dir} has no {EXPORT_DIR}/ export: run "
                                f"`python -m model.ctranslate export {model_dir}`")


def prepare(loaded: Any, config: Any, device: torch.device) -> Engine | None:
    """The engine for this model and config: a CTranslate2 engine, or None for our own search (on
    ``loaded.model``, which this quantizes in place of the float model when ``quantize=int8``).
    Raises ValueError (EngineUnavailable) when the config asks for what cannot be had."""
    from model.ctranslate import EXPORT_DIR, CTranslate2Engine, EngineUnavailable

    engine = config.engine or "auto"
    quantize = config.quantize or "none"
    hp = loaded.hp
    if engine == "ctranslate2" and quantize != "none":
        raise ValueError("quantize=int8 quantizes the torch engine; with engine=ctranslate2 use compute_type=int8")
    if engine == "ctranslate2":
        if not _is_transformer(hp):
            raise EngineUnavailable(f"engine=ctranslate2 needs a transformer model; {loaded.model_dir} is "
                                    f"{hp.encoder_type}/{hp.decoder_type} (use engine=torch, quantize=int8)")
        if hp.length_penalty_beta != 0:
            raise EngineUnavailable(f"engine=ctranslate2 cannot apply length_penalty_beta="
                                    f"{hp.length_penalty_beta:g} (its length penalty is length**alpha)")
        ct2 = CTranslate2Engine(loaded, device, config.compute_type)
        log.info("decoding with %r", ct2)
        return ct2
    if engine == "auto" and quantize == "none" and (loaded.model_dir / EXPORT_DIR).is_dir():
        why = None
        if not _is_transformer(hp):
            why = f"the model is {hp.encoder_type}/{hp.decoder_type}"
        elif hp.length_penalty_beta != 0:
            why = f"length_penalty_beta={hp.length_penalty_beta:g} is not CTranslate2's penalty"
        else:
            try:
                ct2 = CTranslate2Engine(loaded, device, config.compute_type)
            except EngineUnavailable as e:
                why = str(e)
            else:
                log.info("decoding with %r (engine auto: the model directory holds an export)", ct2)
                return ct2
        log.warning("%s/%s is not used, decoding with torch: %s", loaded.model_dir, EXPORT_DIR, why)
    if quantize == "int8":
        if device.type != "cpu":
            raise ValueError(f"quantize=int8 (torch.ao dynamic quantization) runs on CPU only, not on {device}")
        loaded.model = quantize_int8(loaded.model)
        log.info("decoding with torch, dynamic int8 quantization of LSTM/GRU/Linear layers")
    return None


_fallbacks_logged: set[str] = set()


def try_decode(engine: Engine, sources: Sequence[Sequence[int]], beam_size: int,
               max_output_length: int | Sequence[int], alpha: float, beta: float,
               attention: bool) -> list[Translation] | None:
    """`engine`'s translations, or None when these settings would not decode as our search does there:
    the caller then runs our search. The reason is logged as a warning the first time, then at debug
    level, so a long batch transform does not repeat it for every batch."""
    longest = max((len(ids) for ids in sources), default=0) + 1  # + </s>
    longest_output = max_output_length if isinstance(max_output_length, int) else max(max_output_length, default=1)
    why = engine.unsupported(beam_size, longest_output, alpha, beta, longest)
    if why is None:
        return engine.decode(sources, beam_size, max_output_length, alpha, beta, attention)
    level = logging.DEBUG if why.reason in _fallbacks_logged else logging.WARNING
    _fallbacks_logged.add(why.reason)
    log.log(level, "%s cannot decode this batch as our search would (%s): decoding it with torch", engine.name,
            why.reason)
    return None
