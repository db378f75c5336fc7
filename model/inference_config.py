"""How a trained model translates: one set of decoding settings for serving, batch transform and evaluation.

The server reads it from ``SEQ2SEQ_*`` environment variables (so a SageMaker CreateModel request's
``Environment`` sets it); batch transform and evaluation build it from their flags and extend it with
their own fields (:class:`pipeline_tasks.transform.TransformConfig`,
:class:`pipeline_tasks.evaluate.EvaluateConfig`), so each decoding setting is declared, defaulted and
checked here once. No torch import: the pipeline steps and the DAG's tasks build it before any model
is loaded, and a bad value fails there, before a model is fetched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

TEXT_FORMATS = ("raw", "tokens")
UNKNOWN_POLICIES = ("unk", "reject")
ERROR_POLICIES = ("fail", "record")
ENGINES = ("auto", "torch", "ctranslate2")   # model/engines.py
QUANTIZE_MODES = ("none", "int8")           # the torch engine's dynamic int8 (torch.ao)

# CTranslate2's compute types (weights and arithmetic); int8 is the CPU speed path.
COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")

ENV_PREFIX = "SEQ2SEQ_"


@dataclass(frozen=True)
class InferenceConfig:
    """How a model translates; read from the environment by the server (so a SageMaker CreateModel
    request's ``Environment`` sets it) and built from flags by batch transform and evaluation."""

    batch_size: int = 32                  # sentences decoded together (grouped by length)
    beam_size: int | None = None          # None: the model's own beam_size hyperparameter
    max_output_length: int | None = None  # tokens including </s> for every sentence; None: per sentence, below
    max_output_length_num_stds: int | None = None  # None above: ceil((mean + N std) x source length); None: 2
    text_format: str | None = None        # raw | tokens; None: raw when the model ships a tokenizer
    unknown_tokens: str = "unk"           # unk: map to <unk> as training did | reject: a bad item
    on_error: str = "fail"                # fail: the request fails | record: {"error": …} in its slot
    engine: str | None = None             # auto | torch | ctranslate2 (model/engines.py); None: auto
    compute_type: str | None = None       # ctranslate2's: int8, float32, …; None: the export's own (int8)
    quantize: str | None = None           # torch engine: none | int8 (torch.ao dynamic, CPU); None: none

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_output_length is not None and self.max_output_length < 1:
            raise ValueError(f"max_output_length must be >= 1, got {self.max_output_length}")
        for name, allowed in (("text_format", TEXT_FORMATS), ("unknown_tokens", UNKNOWN_POLICIES),
                              ("on_error", ERROR_POLICIES), ("engine", ENGINES),
                              ("compute_type", COMPUTE_TYPES), ("quantize", QUANTIZE_MODES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceConfig:
        """``SEQ2SEQ_BATCH_SIZE``, ``SEQ2SEQ_BEAM_SIZE``, … (the field names, upper case); an unset or
        empty variable keeps the default. Errors name the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        raws: dict[str, str] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            raws[f.name] = raw
            if f.type in ("int", "int | None"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r}: expected an integer") from None
            else:
                values[f.name] = raw
        try:
            return cls(**values)
        except ValueError as e:
            field = str(e).split(" ", 1)[0]  # __post_init__'s messages start with the field's name
            var = f"{ENV_PREFIX}{field.upper()}={raws[field]!r}" if field in raws else f"{ENV_PREFIX}*"
            raise ValueError(f"{var}: {e}") from None

    def to_env(self) -> dict[str, str]:
        """The environment that makes a server behave like this config (the inverse of from_env)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
                for f in fields(InferenceConfig) if getattr(self, f.name) is not None}

    def decoding(self) -> InferenceConfig:
        """The decoding settings alone, as an :class:`InferenceConfig` (a step's config that extends this
        class carries its own fields beside them)."""
        return InferenceConfig(**{f.name: getattr(self, f.name) for f in fields(InferenceConfig)})
