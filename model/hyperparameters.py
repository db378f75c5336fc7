"""The training configuration: every hyperparameter of the built-in SageMaker seq2seq algorithm, plus
our documented extensions, parsed from the string → string ``hyperparameters.json`` SageMaker writes.

One frozen dataclass holds them all because the training job, the checkpoints and the serving side
must agree on one typed view; the parser is the only place strings become values, and
:func:`format_value` the only place values become the strings SageMaker passes.

What each name allows (choices, ranges) and means is written beside its field, in the field's
metadata (:func:`_hp`); the parser, :func:`validate` and :func:`describe_markdown` all read it, so the
README cannot drift from the checks. The value *types* come from the dataclass annotations, so they
are not written down twice either.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from model.constants import HYPERPARAMETERS_FILE

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# What a hyperparameter allows and means, carried by its own dataclass field


@dataclass(frozen=True)
class _Spec:
    meaning: str
    choices: tuple[str, ...] = ()  # for str fields: the allowed values
    extension_choices: tuple[str, ...] = ()  # those of ``choices`` the built-in algorithm lacks
    low: float | None = None  # numeric range; None = unbounded
    high: float | None = None
    low_open: bool = False  # True: low itself is excluded
    high_open: bool = False
    special: int | None = None  # one extra value outside the range (e.g. -1 = no limit)
    accepts_none: bool = False  # "none" parses to None
    extension: bool = False  # not a built-in name
    default_text: str | None = None  # how describe_markdown shows a default that is not a value
    architecture: bool = False  # shapes the network: a warm start must keep the parent's value


_SPEC_KEY = "spec"


def _hp(default: Any, meaning: str, choices: tuple[str, ...] = (), extension_choices: tuple[str, ...] = (), *,
        low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
        special: int | None = None, accepts_none: bool = False, extension: bool = False,
        default_text: str | None = None, architecture: bool = False) -> Any:
    """A dataclass field whose metadata says what the hyperparameter allows and means, so that a new
    name cannot be added without its checks and its README row."""
    spec = _Spec(meaning, choices, extension_choices, low, high, low_open, high_open, special, accepts_none,
                 extension, default_text, architecture)
    return field(default=default, metadata={_SPEC_KEY: spec})


_DROPOUT = {"low": 0.0, "high": 1.0, "high_open": True}
_POSITIVE = {"low": 1}
# Upper bounds no real model reaches, so that a slip (1e9 for 1024) is named here, not found as an
# allocation failure deep inside torch after the data was prepared.
_SIZE = {"low": 1, "high": 16384}  # hidden, embedding and model sizes
_LAYERS = {"low": 1, "high": 128}
_LENGTH = {"low": 1, "high": 16384}  # tokens per sentence
_WIDTH = {"low": 1, "high": 64}  # convolution kernels


@dataclass(frozen=True)
class Hyperparameters:
    # --- the built-in algorithm's names, defaults as in the SageMaker seq2seq documentation ---
    batch_size: int = _hp(
        64, "batch_type=sentence: sentences per batch; batch_type=word: real target tokens per batch (</s> counted, "
        "padding not), filled to within 8 sentences of it in multiples of 8 sentences", low=1, high=2**20)
    beam_size: int = _hp(5, "beam for BLEU during training and for inference", low=1, high=256)
    bleu_sample_size: int = _hp(0, "validation sentences scored with BLEU at checkpoints; -1 = all, 0 = none", low=-1)
    bucket_width: int = _hp(
        10, "width of the (source, target) length buckets of batch_type=sentence; word batches are cut from the "
        "epoch sorted by exact length instead, which pads less", **_POSITIVE)
    bucketing_enabled: bool = _hp(True, "batch sentences of similar length together; false: a plain shuffle")
    checkpoint_frequency_num_batches: int = _hp(1000, "checkpoint and evaluate every N batches", **_POSITIVE)
    checkpoint_threshold: int = _hp(3, "stop after N checkpoints without improvement of optimized_metric",
                                    **_POSITIVE)
    clip_gradient: float = _hp(1.0, "clip absolute gradient values above it; <= 0 disables")
    cnn_activation_type: str = _hp(
        "glu", "activation of the convolutional layers", ("glu", "relu", "softrelu", "sigmoid", "tanh"),
        architecture=True)
    cnn_hidden_dropout: float = _hp(0.0, "dropout between convolutional layers", **_DROPOUT)
    cnn_kernel_width_decoder: int = _hp(5, "kernel width of the cnn decoder", **_WIDTH, architecture=True)
    cnn_kernel_width_encoder: int = _hp(3, "kernel width of the cnn encoder", **_WIDTH, architecture=True)
    cnn_num_hidden: int = _hp(512, "hidden size of the cnn layers", **_SIZE, architecture=True)
    decoder_type: str = _hp("rnn", "decoder architecture", ("rnn", "cnn", "transformer"), ("transformer",),
                            architecture=True)
    embed_dropout_source: float = _hp(0.0, "dropout on the source embeddings", **_DROPOUT)
    embed_dropout_target: float = _hp(0.0, "dropout on the target embeddings", **_DROPOUT)
    encoder_type: str = _hp(
        "rnn", "encoder architecture (rnn: Bahdanau-style attention, cnn: Gehring-style convolutional)",
        ("rnn", "cnn", "transformer"), ("transformer",), architecture=True)
    fixed_rate_lr_half_life: int = _hp(10, "checkpoints until the fixed_rate_* schedulers halve the rate",
                                       **_POSITIVE)
    learning_rate: float = _hp(0.0003, "initial learning rate", low=0.0, high=10.0, low_open=True)
    loss_type: str = _hp("cross-entropy", "training loss", ("cross-entropy",))
    lr_scheduler_type: str = _hp(
        "plateau_reduce", "learning-rate schedule", ("plateau_reduce", "fixed_rate_inv_t", "fixed_rate_inv_sqrt_t"))
    max_num_batches: int = _hp(-1, "stop after N batches; -1 = no limit", low=1, special=-1)
    max_num_epochs: int | None = _hp(None, "stop after N epochs; none = no limit", low=1, accepts_none=True)
    max_seq_len_source: int = _hp(100, "longer source sentences are truncated", **_LENGTH)
    max_seq_len_target: int = _hp(100, "longer target sentences are truncated", **_LENGTH)
    min_num_epochs: int = _hp(0, "do not stop early before this many epochs", low=0)
    momentum: float | None = _hp(
        None, "momentum of sgd (ignored by the other optimizers)", low=0.0, high=1.0, high_open=True,
        accepts_none=True)
    num_embed_source: int = _hp(512, "source embedding size", **_SIZE, architecture=True)
    num_embed_target: int = _hp(512, "target embedding size", **_SIZE, architecture=True)
    num_layers_decoder: int = _hp(1, "decoder layers", **_LAYERS, architecture=True)
    num_layers_encoder: int = _hp(1, "encoder layers", **_LAYERS, architecture=True)
    optimized_metric: str = _hp(
        "perplexity", "validation metric that picks the best checkpoint and drives early stopping",
        ("perplexity", "accuracy", "bleu"))
    optimizer_type: str = _hp("adam", "optimizer", ("adam", "sgd", "rmsprop"))
    plateau_reduce_lr_factor: float = _hp(
        0.5, "plateau_reduce multiplies the rate by it on a plateau", low=0.0, high=1.0, low_open=True)
    plateau_reduce_lr_threshold: int = _hp(3, "checkpoints without improvement before plateau_reduce acts",
                                           **_POSITIVE)
    rnn_attention_in_upper_layers: bool = _hp(
        True, "feed the attention context to the upper decoder layers (like GNMT)", architecture=True)
    # None in the dataclass = "same as rnn_num_hidden"
    rnn_attention_num_hidden: int | None = _hp(None, "hidden size of the mlp attention", **_SIZE,
                                               default_text="rnn_num_hidden", architecture=True)
    rnn_attention_type: str = _hp("mlp", "rnn decoder attention", ("dot", "fixed", "mlp", "bilinear"),
                                  architecture=True)
    rnn_cell_type: str = _hp("lstm", "recurrent cell", ("lstm", "gru"), architecture=True)
    rnn_decoder_hidden_dropout: float = _hp(0.0, "dropout on the decoder's hidden state with context", **_DROPOUT)
    rnn_decoder_state_init: str = _hp(
        "last", "how the decoder's state starts from the encoder's", ("last", "avg", "zero"), architecture=True)
    rnn_first_residual_layer: int = _hp(2, "first rnn layer with a residual connection", **_POSITIVE, architecture=True)
    rnn_num_hidden: int = _hp(
        1024, "rnn hidden size; even for an rnn encoder (its first layer is bidirectional)", **_SIZE, architecture=True)
    rnn_residual_connections: bool = _hp(False, "residual connections between stacked rnn layers", architecture=True)
    training_metric: str = _hp("perplexity", "metric reported on the training data", ("perplexity", "accuracy"))
    weight_decay: float = _hp(0.0, "L2 weight decay", low=0.0, high=1.0)
    weight_init_scale: float = _hp(
        2.34, "xavier: the scale (> 0); uniform: values in ±scale", low=-100.0, high=100.0)
    weight_init_type: str = _hp("xavier", "weight initialisation", ("uniform", "xavier"))
    xavier_factor_type: str = _hp("in", "fan used by xavier", ("in", "out", "avg"))

    # --- extensions (not in the built-in algorithm; documented as such) ---
    # encoder_type / decoder_type also accept "transformer".
    transformer_model_size: int = _hp(512, "transformer model (and embedding) size", **_SIZE, extension=True,
                                      architecture=True)
    transformer_attention_heads: int = _hp(
        8, "transformer attention heads; must divide transformer_model_size", low=1, high=256, extension=True,
        architecture=True)
    transformer_feed_forward_num_hidden: int = _hp(
        2048, "transformer feed-forward hidden size", low=1, high=65536, extension=True, architecture=True)
    transformer_dropout: float = _hp(
        0.1, "transformer dropout (attention, feed-forward, residual)", **_DROPOUT, extension=True)
    transformer_positional_embedding_type: str = _hp(  # fixed (sinusoidal) | learned
        "fixed", "fixed: sinusoidal; learned: trained position embeddings", ("fixed", "learned"), extension=True,
                                                     architecture=True)
    weight_tying: bool = _hp(False, "share embedding/output weights per weight_tying_type", extension=True,
                             architecture=True)
    weight_tying_type: str = _hp(  # trg_softmax | src_trg | src_trg_softmax
        "trg_softmax", "which weights weight_tying shares", ("trg_softmax", "src_trg", "src_trg_softmax"),
        extension=True, architecture=True)
    label_smoothing: float = _hp(0.0, "label smoothing of the cross-entropy loss", **_DROPOUT, extension=True)
    learning_rate_warmup: int = _hp(  # batches of linear warm-up before the scheduler takes over
        0, "batches of linear learning-rate warm-up; 0 = none", low=0, extension=True)
    batch_type: str = _hp(  # sentence: batch_size sentences | word: about batch_size target tokens
        "sentence", "sentence: batch_size sentences; word: about batch_size real target tokens",
        ("sentence", "word"), extension=True)
    max_training_seconds: int | None = _hp(  # wall-clock budget of the training loop (Sockeye's --max-seconds)
        None, "stop training after this many seconds of wall-clock time (across restarts), then checkpoint and keep "
        "the best model; none = no limit", low=1, accepts_none=True, extension=True)
    average_checkpoints: int = _hp(  # Sockeye's average / fairseq's average_checkpoints.py, at the end of training
        1, "the final model is the parameter average of this many best checkpoints (by optimized_metric), kept "
        "only if it scores at least as well on the validation channel as the best single one; 1 = off",
        low=1, high=100, extension=True)
    length_penalty_alpha: float = _hp(
        1.0, "beam search length penalty exponent; 0 = no penalty", low=0.0, extension=True)
    length_penalty_beta: float = _hp(0.0, "beam search length penalty constant", low=0.0, extension=True)
    seed: int = _hp(13, "random seed", low=0, high=2**32 - 1, extension=True)
    precision: str = _hp(  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU", ("auto", "bf16", "fp32"), extension=True)
    torch_compile: str = _hp(  # auto (on CUDA only) | on | off: torch.compile of the training step
        "auto", "torch.compile the training step: auto = on CUDA only (on a small CPU the minutes it takes to "
        "compile outweigh the 20 % it gains per step within a short job); on; off. A model that fails to compile "
        "trains on uncompiled, with a warning", ("auto", "on", "off"), extension=True)

    @property
    def attention_num_hidden(self) -> int:
        """The built-in default of rnn_attention_num_hidden is "whatever rnn_num_hidden is"."""
        return self.rnn_attention_num_hidden if self.rnn_attention_num_hidden is not None else self.rnn_num_hidden


# --------------------------------------------------------------------------------------------------
# Errors


class HyperparameterError(ValueError):
    """A value the training job must not start with; ``name`` and ``value`` let callers (and tests)
    react to which one without parsing the message."""

    def __init__(self, name: str, value: object, reason: str, message: str | None = None) -> None:
        self.name = name
        self.value = value
        self.reason = reason
        super().__init__(message or f"hyperparameter {name}={_quote(value)}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable across worker processes
        return (type(self), (self.name, self.value, self.reason))


class UnknownHyperparameterError(HyperparameterError):
    """Every unknown name at once, so a user fixes a misspelt hyperparameters.json in one go.

    ``name`` is the comma-joined names, ``value`` maps each to its raw value, ``suggestions`` each to
    its closest known name (or None)."""

    def __init__(self, raw: Mapping[str, object]) -> None:
        names = sorted(raw, key=str)
        self.names = tuple(str(n) for n in names)
        self.suggestions = {str(n): _suggest(str(n)) for n in names}
        parts = [f"{n} (did you mean {self.suggestions[n]}?)" if self.suggestions[n] else n for n in self.names]
        super().__init__(", ".join(self.names), dict(raw), "unknown", f"unknown hyperparameter(s): {', '.join(parts)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.value,))


def _shown(value: object) -> str:
    """A value as messages show it: spelt as SageMaker passes it when it is a plain JSON-like value, so a
    message quotes what the user wrote; anything else (a list, a numpy scalar) as Python shows it."""
    if isinstance(value, str):
        return value
    if value is None or type(value) in (bool, int, float):
        return format_value(value)
    return repr(value) if isinstance(value, float) else str(value)


def _quote(value: object) -> str:
    return json.dumps(_shown(value), ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# The fields' specs and types, read once

_IGNORED_PREFIXES = ("_tuning", "sagemaker_")

_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(Hyperparameters)}


def _spec(name: str) -> _Spec:
    return _FIELDS[name].metadata[_SPEC_KEY]


def _kinds() -> dict[str, tuple[type, bool]]:
    """(base type, optional) per field, from the dataclass annotations: the single source of types.

    Fails at import, not in a training job, when a field has no spec or its spec does not fit its type."""
    out = {}
    for name, hint in typing.get_type_hints(Hyperparameters).items():
        optional = False
        if isinstance(hint, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            (hint,) = args
        spec = _FIELDS[name].metadata.get(_SPEC_KEY)
        if spec is None:
            raise RuntimeError(f"hyperparameter {name} has no spec: declare it with _hp(...)")
        if (hint is str) != bool(spec.choices) or (spec.accepts_none and not optional):
            raise RuntimeError(f"hyperparameter spec of {name} does not fit its type")
        out[name] = (hint, optional)
    return out


_KINDS = _kinds()

EXTENSIONS: tuple[str, ...] = tuple(name for name in _FIELDS if _spec(name).extension)
"""The names the built-in algorithm does not have."""


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _allowed(name: str) -> str:
    """What a value of ``name`` may be, as the noun phrase the error messages and the README use."""
    spec = _spec(name)
    kind, _ = _KINDS[name]
    if kind is bool:
        return "true or false"
    if kind is str:
        return "one of " + ", ".join(spec.choices)
    noun = "integer" if kind is int else "float"
    low, high = spec.low, spec.high
    if kind is int and low == 1 and high is None:
        text = "a positive integer"
    elif low is not None and high is not None:
        left, right = "(" if spec.low_open else "[", ")" if spec.high_open else "]"
        text = f"{'an' if kind is int else 'a'} {noun} in {left}{_fmt_number(low)}, {_fmt_number(high)}{right}"
    elif low is not None:
        text = f"{'an' if kind is int else 'a'} {noun} {'>' if spec.low_open else '>='} {_fmt_number(low)}"
    elif high is not None:
        text = f"{'an' if kind is int else 'a'} {noun} {'<' if spec.high_open else '<='} {_fmt_number(high)}"
    else:
        text = f"{'an' if kind is int else 'a'} {noun}"
    if spec.special is not None:
        text = f"{spec.special} or {text}"
    if spec.accepts_none:
        text += " or none"
    return text


# --------------------------------------------------------------------------------------------------
# Strings → values

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _as_text(name: str, raw: object) -> str:
    """SageMaker hands strings; a hand-written file may hold JSON numbers, booleans or null, which we
    read exactly as their JSON spelling so that 64 and "64" (or true and "true") mean the same."""
    if isinstance(raw, str):
        return raw.strip()
    if raw is None or isinstance(raw, bool | int | float):
        return format_value(raw)
    raise HyperparameterError(name, raw, f"must be a string (or a JSON number/boolean); allowed: {_allowed(name)}")


def _convert(name: str, text: str) -> object:
    """The typed value of ``text``; only the type is checked here, ranges by :func:`_check_value`."""
    kind, _ = _KINDS[name]
    spec = _spec(name)
    if spec.accepts_none and text.lower() == "none":
        return None
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise HyperparameterError(name, text, "must be true or false")
    if kind is int:
        if _INT_RE.fullmatch(text):
            return int(text)
        raise HyperparameterError(name, text, _type_reason("an integer", name))
    if kind is float:
        if _FLOAT_RE.fullmatch(text):
            return float(text)
        raise HyperparameterError(name, text, _type_reason("a number", name))
    return text


def _type_reason(what: str, name: str) -> str:
    if _spec(name).accepts_none:
        what += " or none"
    return f"must be {what}; allowed: {_allowed(name)}"


def _check_value(name: str, value: object, shown: object) -> None:
    """Raise unless ``value`` (already of the field's type) is one the table allows."""
    spec = _spec(name)
    kind, optional = _KINDS[name]
    if value is None:
        if optional:  # the parser yields None only for accepts_none names; in code, None means the default
            return
        raise HyperparameterError(name, shown, f"must be {_allowed(name)}")
    if kind is str:
        if value not in spec.choices:
            raise HyperparameterError(name, shown, f"must be {_allowed(name)}")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise HyperparameterError(name, shown, "must be true or false")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise HyperparameterError(name, shown, _type_reason("an integer" if kind is int else "a number", name))
    if not math.isfinite(value):
        raise HyperparameterError(name, shown, f"must be finite; allowed: {_allowed(name)}")
    if spec.special is not None and value == spec.special:
        return
    too_low = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
    too_high = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
    if too_low or too_high:
        raise HyperparameterError(name, shown, f"must be {_allowed(name)}")


def _check_cross_fields(hp: Hyperparameters) -> None:
    """Combinations no single value reveals; they would otherwise fail deep inside model building."""
    if hp.encoder_type == "rnn" and hp.rnn_num_hidden % 2:
        raise HyperparameterError(
            "rnn_num_hidden",
            hp.rnn_num_hidden,
            "must be even when encoder_type is rnn (the first encoder layer is bidirectional)",
        )
    uses_transformer = "transformer" in (hp.encoder_type, hp.decoder_type)
    if uses_transformer and hp.transformer_model_size % hp.transformer_attention_heads:
        raise HyperparameterError(
            "transformer_model_size",
            hp.transformer_model_size,
            f"must be divisible by transformer_attention_heads ({hp.transformer_attention_heads}) "
            "when encoder_type or decoder_type is transformer",
        )
    if hp.max_num_epochs is not None and hp.max_num_epochs < hp.min_num_epochs:
        raise HyperparameterError(
            "max_num_epochs", hp.max_num_epochs, f"must be >= min_num_epochs ({hp.min_num_epochs})"
        )
    if hp.weight_init_type == "xavier" and hp.weight_init_scale <= 0:
        raise HyperparameterError(
            "weight_init_scale", hp.weight_init_scale, "must be > 0 when weight_init_type is xavier"
        )
    if hp.momentum is not None and hp.optimizer_type != "sgd":
        logger.warning(
            "momentum=%s is ignored: optimizer_type is %s, momentum applies to sgd only",
            _shown(hp.momentum),
            hp.optimizer_type,
        )


def _ignored(name: object) -> bool:
    return isinstance(name, str) and name.startswith(_IGNORED_PREFIXES)


def _suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name.lower(), list(_FIELDS), n=1)
    return close[0] if close else None


# --------------------------------------------------------------------------------------------------
# Public API


def read_model_hyperparameters(model_dir: Path) -> Hyperparameters:
    """A model folder's ``hyperparameters.json``, parsed: what the container (loading a model or a warm
    start's parent) and the pipeline (checking a parent before any data is made) each read from a model.

    A missing, unreadable or invalid file raises ValueError naming it."""
    path = model_dir / HYPERPARAMETERS_FILE
    try:
        return parse_hyperparameters(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: the model's hyperparameters cannot be read: {e}") from None


def parse_hyperparameters(raw: Mapping[str, str]) -> Hyperparameters:
    """The typed, validated configuration of a SageMaker ``hyperparameters.json``.

    Missing names take the built-in defaults. SageMaker's own ``sagemaker_*`` and tuning
    (``_tuning*``) entries are ignored; any other unknown name is an error, because a misspelt
    hyperparameter that silently keeps its default wastes a whole training job.
    """
    unknown = {k: v for k, v in raw.items() if k not in _FIELDS and not _ignored(k)}
    if unknown:
        raise UnknownHyperparameterError(unknown)
    for k in raw:
        if _ignored(k):
            logger.debug("ignoring SageMaker hyperparameter %s", k)
    values: dict[str, object] = {}
    for name in _FIELDS:  # field order, so the first error reported does not depend on the file's order
        if name in raw:
            text = _as_text(name, raw[name])
            value = _convert(name, text)
            _check_value(name, value, text)
            values[name] = value
    hp = Hyperparameters(**values)  # type: ignore[arg-type]
    _check_cross_fields(hp)
    return hp


def validate(hp: Hyperparameters) -> None:
    """Apply the parser's checks to a dataclass built in code (e.g. with ``dataclasses.replace``)."""
    for name in _FIELDS:
        value = getattr(hp, name)
        _check_value(name, value, value)
    _check_cross_fields(hp)


def format_value(value: object) -> str:
    """A hyperparameter value as SageMaker passes it and :func:`parse_hyperparameters` reads it back: the
    one spelling for job requests, checkpoints and the README (``true``/``false``, ``none``, integers as
    digits, floats as their shortest exact form).

    Raises TypeError for a value no hyperparameter can hold (a list, a dict, an arbitrary object)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))  # shortest string that reads back as the same float
    raise TypeError(f"{type(value).__name__} value {value!r} is not a hyperparameter value "
                    "(a string, number, boolean or None)")


def to_strings(hp: Hyperparameters) -> dict[str, str]:
    """Every hyperparameter as SageMaker passes it, so that ``parse_hyperparameters(to_strings(hp)) == hp``:
    what a launcher sends to SageMaker and what a checkpoint records."""
    return {
        name: format_value(getattr(hp, name))
        for name in _FIELDS
        if not (name == "rnn_attention_num_hidden" and hp.rnn_attention_num_hidden is None)
    }


def describe_markdown() -> str:
    """The README's hyperparameter table, generated from the same field specs the parser checks against."""
    rows = [
        "| name | default | allowed | built-in or extension | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, f in _FIELDS.items():
        spec = _spec(name)
        default = spec.default_text or format_value(f.default)
        allowed = _allowed(name)
        allowed = allowed.removeprefix("an ").removeprefix("a ")
        origin = "extension" if spec.extension else "built-in"
        if spec.extension_choices:
            origin += f" ({', '.join(spec.extension_choices)}: extension)"
        cells = [f"`{name}`", default, allowed, origin, spec.meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def architecture_names() -> list[str]:
    """The names that shape the network (types, layers, sizes, attention, tying): a model warm-started
    from a parent must keep the parent's values, while training names (learning rate, batches, dropout,
    stopping) may change."""
    return [f.name for f in fields(Hyperparameters) if f.metadata[_SPEC_KEY].architecture]


def architecture_differences(parent: Hyperparameters, child: Hyperparameters) -> list[str]:
    """"name: parent X, this job Y" for each architecture hyperparameter that differs: what keeps a child
    from starting from the parent's weights. The container's warm-start check and the pipeline's early
    check (before any data is prepared) both use it, so they cannot disagree."""
    return [f"{name}: parent {format_value(getattr(parent, name))}, this job {format_value(getattr(child, name))}"
            for name in architecture_names() if getattr(parent, name) != getattr(child, name)]


def parse_value(name: str, raw: object) -> object:
    """One hyperparameter's value, typed and checked against its own range (not against other names, which
    a tuning range's endpoints and categorical values have no fixed partner for)."""
    if name not in _FIELDS:
        raise UnknownHyperparameterError({name: raw})
    text = _as_text(name, raw)
    value = _convert(name, text)
    _check_value(name, value, text)
    return value


def value_type(name: str) -> type:
    """The Python type of a hyperparameter's values (int, float, bool or str); a tuning range's kind
    follows from it (integer, continuous, categorical)."""
    if name not in _FIELDS:
        raise UnknownHyperparameterError({name: None})
    return _KINDS[name][0]


def hyperparameter_names() -> list[str]:
    """Every accepted name (the built-in algorithm's and our extensions), for a JSON schema's enum."""
    return [f.name for f in fields(Hyperparameters)]
