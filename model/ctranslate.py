"""CTranslate2 for our Transformer models: the export (``python -m model.ctranslate export MODEL_DIR``) and
the decoding engine :class:`model.translator.Translator` uses when a model directory holds the export.

Why: CTranslate2 decodes a Transformer several times faster than our PyTorch search on a CPU, most of all
with int8 weights (``compute_type=int8``), which is what CPU serving and batch transform pay for. The
export writes ``MODEL_DIR/ctranslate2/``: the model with float32 weights (exactly ours; float32 decoding,
and what CTranslate2 converts at load for other compute types) and ``ctranslate2/int8/``, the same model
with int8 weights in 7 bits, which int8 compute types load (:func:`quantize_int8_7bit` says why 7).
Both are built from our state dict with CTranslate2's own ``TransformerSpec``, so that the model
CTranslate2 runs is ours, operation for operation:

- pre-norm layers (LayerNorm before each sub-layer) and one final LayerNorm per stack, epsilon as ours;
- our separate q/k/v projections (no bias) fused into CTranslate2's ``qkv`` linear for self-attention
  and ``q`` + fused ``kv`` for cross-attention; the output projections; ReLU feed-forward with biases;
- embeddings scaled by sqrt(model size) before the positions are added, as ours;
- positions exported as a table (``position_encodings/encodings``) computed by our own
  :class:`~model.transformer.PositionalEmbedding`: CTranslate2's built-in sinusoids have the same layout
  (sines, then cosines) but start at position 1 where ours start at 0. The table has
  ``max_positions`` rows (``export.json``); a learned table's last row repeats past its end, as ours does;
- tied embeddings/output layer (CTranslate2 aliases identical variables), the output bias;
- our vocabularies in id order (``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3): the decoder starts
  from ``<s>`` and stops at ``</s>``; ``<pad>`` and ``<s>`` are never emitted (suppressed, as our
  search masks them).

``export.json`` records the sha256 of the ``params.pt`` it was made from: a model directory whose weights
changed since (a retrained model copied over) does not silently decode with stale weights.

Decoding semantics are ours (:mod:`model.beam_search`): ``max_output_length`` counts tokens including
``</s>`` (``max_decoding_length``, with ``</s>`` returned so the length penalty counts it as ours does),
``</s>`` may come first (``min_decoding_length=0``), GNMT's penalty with beta 0 is CTranslate2's
``length_penalty`` = alpha; scores are returned raw and normalized as :class:`Translation` holds them.
What CTranslate2 cannot do the same way (``length_penalty_beta`` > 0) is refused when the engine is asked
for by name, and falls back to our search under ``auto``. Beam search differs in one detail: CTranslate2
stops a sentence once ``beam_size`` hypotheses have finished, ours when no live one can beat the best
finished one; the two agree on nearly every sentence (tested), greedy on all but float-level ties.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.archive import sha256_file
from model.beam_search import Translation
from model.checkpoint import LoadedModel, load_model
from model.constants import PARAMS_FILE
from model.inference_config import COMPUTE_TYPES
from model.vocab import BOS_SYMBOL, EOS_SYMBOL, PAD_SYMBOL, UNK_SYMBOL

log = logging.getLogger(__name__)

EXPORT_DIR = "ctranslate2"      # inside the model directory
EXPORT_INFO = "export.json"     # written last inside the staged export: what it was made from
EXPORT_FORMAT = 1
DEFAULT_MAX_POSITIONS = 1024    # rows of the position tables: source tokens and decoding steps
INT8_DIR = "int8"               # inside the export: the same model with int8 weights, for int8 compute types
INT8_WEIGHT_MAX = 63            # 7 bits: see quantize_int8_7bit


class ExportError(ValueError):
    """The model cannot be exported (not a Transformer, an unsupported setting); the message says why."""


class EngineUnavailable(ValueError):
    """CTranslate2 cannot decode this model here (library missing, no export, a stale export …)."""


def import_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or EngineUnavailable saying how to install it."""
    try:
        import ctranslate2
    except ImportError as e:
        raise EngineUnavailable(f"the ctranslate2 library is not installed ({e}): pip install "
                                f"'wmt-seq2seq-pipeline[serve]' (or ctranslate2, see constraints.txt)") from None
    return ctranslate2


def params_sha256(model_dir: Path) -> str:
    return sha256_file(model_dir / PARAMS_FILE)


# --- export ------------------------------------------------------------------------------------------------

def check_exportable(loaded: LoadedModel) -> None:
    """Refuse, naming the reason, a model the spec below would not reproduce exactly."""
    hp = loaded.hp
    if hp.encoder_type != "transformer" or hp.decoder_type != "transformer":
        raise ExportError(f"{loaded.model_dir}: CTranslate2 export needs encoder_type=transformer and "
                          f"decoder_type=transformer, this model is {hp.encoder_type}/{hp.decoder_type} "
                          f"(rnn and cnn models decode with the torch engine; SEQ2SEQ_QUANTIZE=int8 quantizes "
                          f"them)")
    if not isinstance(loaded.model.decoder.encoder_projection, torch.nn.Identity):
        raise ExportError(f"{loaded.model_dir}: the decoder projects the encoder states, which CTranslate2 "
                          f"has no layer for")


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _linear(spec: Any, *layers: torch.nn.Linear) -> None:
    """One CTranslate2 linear from one or several of ours (fused along the output dimension); a bias only
    where ours has one (zeros for the parts without, as CTranslate2's own converters fuse)."""
    spec.weight = np.concatenate([_array(layer.weight) for layer in layers])
    if any(layer.bias is not None for layer in layers):
        spec.bias = np.concatenate([_array(layer.bias) if layer.bias is not None
                                    else np.zeros(layer.out_features, np.float32) for layer in layers])


def _norm(spec: Any, norm: torch.nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _positions(module: torch.nn.Module, rows: int) -> np.ndarray:
    """Our positions 0..rows-1 as a table: what our module adds at each position, whatever its kind."""
    with torch.no_grad():
        return _array(module(torch.arange(rows, dtype=torch.long)))


def build_spec(loaded: LoadedModel, max_positions: int = DEFAULT_MAX_POSITIONS) -> Any:
    """CTranslate2's ``TransformerSpec`` filled from our weights (see the module docstring for the map)."""
    check_exportable(loaded)
    import_ctranslate2()  # a clear error when the library is missing
    from ctranslate2.specs import common_spec, transformer_spec

    hp, model = loaded.hp, loaded.model
    enc, dec = model.encoder, model.decoder
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) > 1:
        raise ExportError(f"{loaded.model_dir}: layer norms with different epsilons {sorted(eps)}")
    needed = max(hp.max_seq_len_source, hp.max_seq_len_target) + 2
    if max_positions < needed:
        raise ExportError(f"max_positions {max_positions} is below what the model needs ({needed})")
    spec = transformer_spec.TransformerSpec.from_config(
        (len(enc.layers), len(dec.layers)), hp.transformer_attention_heads, pre_norm=True,
        activation=common_spec.Activation.RELU, alignment_layer=-1, alignment_heads=0)  # 0: mean of all heads
    spec.config.layer_norm_epsilon = float(eps.pop()) if eps else 1e-5

    e = spec.encoder
    e.embeddings[0].weight = _array(enc.embedding.weight)
    e.scale_embeddings = True
    e.position_encodings.encodings = _positions(enc.positions, max_positions)
    _norm(e.layer_norm, enc.final_norm)
    for s, layer in zip(e.layer, enc.layers):
        att = layer.self_attn
        _norm(s.self_attention.layer_norm, layer.self_norm)
        _linear(s.self_attention.linear[0], att.q_proj, att.k_proj, att.v_proj)
        _linear(s.self_attention.linear[1], att.out_proj)
        _norm(s.ffn.layer_norm, layer.ff_norm)
        _linear(s.ffn.linear_0, layer.ff.inner)
        _linear(s.ffn.linear_1, layer.ff.outer)

    d = spec.decoder
    d.embeddings.weight = _array(dec.embedding.weight)
    d.scale_embeddings = True
    d.position_encodings.encodings = _positions(dec.positions, max_positions)
    _norm(d.layer_norm, dec.final_norm)
    _linear(d.projection, dec.output_layer)
    for s, layer in zip(d.layer, dec.layers):
        att, cross = layer.self_attn, layer.cross_attn
        _norm(s.self_attention.layer_norm, layer.self_norm)
        _linear(s.self_attention.linear[0], att.q_proj, att.k_proj, att.v_proj)
        _linear(s.self_attention.linear[1], att.out_proj)
        _norm(s.attention.layer_norm, layer.cross_norm)
        _linear(s.attention.linear[0], cross.q_proj)
        _linear(s.attention.linear[1], cross.k_proj, cross.v_proj)
        _linear(s.attention.linear[2], cross.out_proj)
        _norm(s.ffn.layer_norm, layer.ff_norm)
        _linear(s.ffn.linear_0, layer.ff.inner)
        _linear(s.ffn.linear_1, layer.ff.outer)

    spec.register_source_vocabulary(list(loaded.source_tokens))
    spec.register_target_vocabulary(list(loaded.target_tokens))
    return spec


def quantize_int8_7bit(spec: Any) -> None:
    """Int8 weights in 7 bits (±63 per row, scale 63/max|row|) in place of CTranslate2's ±127, for every
    variable CTranslate2 would quantize (linear weights, embeddings).

    Why: on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake; this project's AMD EPYC), CTranslate2's
    int8 GEMM is oneDNN's u8s8s32, whose vpmaddubsw adds pairs of u8×s8 products in int16 and saturates:
    CTranslate2 shifts the activations into u8 (0..255), so with weights up to ±127 a pair reaches 64,770,
    past 32,767, on ordinary inputs. With ±63 a pair stays below 32,130. Measured on the tiny Transformer
    of the tests: the mean per-token log-probability error of int8 falls from 0.023 to 0.0004; it is
    oneDNN's own advice for these ISAs (and why fbgemm reduces its range on them). Weights that are
    already int8 are not quantized again at load when the compute type is int8, so these are used as
    they are; on VNNI CPUs and GPUs the 7-bit weights cost a bit of precision, nothing else."""
    from ctranslate2.specs import model_spec

    def visit(layer: Any, name: str, value: Any) -> None:
        key = name.split("/")[-1]
        if not isinstance(value, model_spec.Variable) or value.is_scalar() or not hasattr(layer, f"{key}_scale"):
            return  # aliases (tied weights) are names; norms and biases stay float
        w = value.to("float32").numpy()
        amax = np.abs(w).max(axis=1)
        amax[amax == 0] = INT8_WEIGHT_MAX
        scale = (INT8_WEIGHT_MAX / amax).astype(np.float32)
        setattr(layer, key, model_spec.NumpyVariable(np.rint(w * scale[:, None]).astype(np.int8)))
        setattr(layer, f"{key}_scale", model_spec.NumpyVariable(scale))

    spec._visit(visit)


def export(model_dir: str | os.PathLike[str], compute_type: str = "int8", max_positions: int = DEFAULT_MAX_POSITIONS,
           int8: bool = True) -> Path:
    """Write ``MODEL_DIR/ctranslate2/`` and return its path: the model with float32 weights (the exact
    model: float32 decoding, and any compute type CTranslate2 converts to at load) and, with `int8`, the
    same model with 7-bit int8 weights in ``ctranslate2/int8/`` (see :func:`quantize_int8_7bit`), which
    int8 compute types load. Staged in a temporary sibling and renamed into place, so a failed or killed
    export leaves the previous export (or none), never a partial one.

    `compute_type` is recorded as this model's default for decoding (``SEQ2SEQ_COMPUTE_TYPE`` overrides it)."""
    if compute_type not in COMPUTE_TYPES:
        raise ExportError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, got {compute_type!r}")
    root = Path(model_dir)
    loaded = load_model(root, "cpu")
    check_exportable(loaded)
    final = root / EXPORT_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIR}.", suffix=".tmp", dir=root))
    try:
        spec = build_spec(loaded, max_positions)
        spec.validate()
        spec.optimize()  # aliases the tied weights; float32 as they are
        spec.save(str(staging))
        if int8:
            spec = build_spec(loaded, max_positions)
            spec.validate()
            spec.optimize()
            quantize_int8_7bit(spec)
            (staging / INT8_DIR).mkdir()
            spec.save(str(staging / INT8_DIR))
        info = {
            "format_version": EXPORT_FORMAT,
            "params_sha256": params_sha256(root),
            "compute_type": compute_type,
            "int8_weights": f"{INT8_DIR}/ (7-bit)" if int8 else None,
            "max_positions": max_positions,
            "ctranslate2_version": import_ctranslate2().__version__,
            "encoder_layers": len(loaded.model.encoder.layers),
            "decoder_layers": len(loaded.model.decoder.layers),
            "model_size": loaded.hp.transformer_model_size,
            "attention_heads": loaded.hp.transformer_attention_heads,
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())
        old = None
        if final.exists():
            old = root / f".{EXPORT_DIR}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s (float32%s; default compute type %s, %d positions)", root, final,
             f" and {INT8_DIR}/ int8" if int8 else "", compute_type, max_positions)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_export_info(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``export.json`` of the model directory's export; None when there is no export. An export folder
    without it (foreign or damaged) is an EngineUnavailable."""
    folder = Path(model_dir) / EXPORT_DIR
    if not folder.is_dir():
        return None
    try:
        info = json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EngineUnavailable(f"{folder}: not an export of ours ({EXPORT_INFO}: {e}); run "
                                f"`python -m model.ctranslate export {model_dir}` again") from None
    if info.get("format_version") != EXPORT_FORMAT:
        raise EngineUnavailable(f"{folder / EXPORT_INFO}: format_version {info.get('format_version')!r} is not "
                                f"{EXPORT_FORMAT}; export again")
    return info


# --- decoding ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unsupported:
    """Why a request cannot go through CTranslate2 with our semantics (the caller falls back or refuses)."""

    reason: str


class CTranslate2Engine:
    """A CTranslate2 ``Translator`` on the model directory's export, speaking our ids and Translation."""

    name = "ctranslate2"

    def __init__(self, loaded: LoadedModel, device: torch.device, compute_type: str | None = None,
                 threads: int | None = None) -> None:
        ct2 = import_ctranslate2()
        info = read_export_info(loaded.model_dir)
        folder = loaded.model_dir / EXPORT_DIR
        if info is None:
            raise EngineUnavailable(f"{loaded.model_dir} has no {EXPORT_DIR}/ export: run "
                                    f"`python -m model.ctranslate export {loaded.model_dir}`")
        digest = params_sha256(loaded.model_dir)
        if info.get("params_sha256") != digest:
            raise EngineUnavailable(f"{folder} was exported from other weights than {loaded.model_dir / PARAMS_FILE} "
                                    f"(sha256 differs): export again")
        if device.type == "cuda":
            if ct2.get_cuda_device_count() == 0:
                raise EngineUnavailable("the ctranslate2 library sees no CUDA device")
            kind, index = "cuda", device.index or 0
        elif device.type == "cpu":
            kind, index = "cpu", 0
        else:
            raise EngineUnavailable(f"ctranslate2 runs on cpu or cuda, not {device.type}")
        self.compute_type = compute_type or info.get("compute_type") or "int8"
        self.threads = threads if threads is not None else (torch.get_num_threads() if kind == "cpu" else 0)
        # int8 compute types load the 7-bit int8 weights when the export has them (quantize_int8_7bit)
        self.weights = folder / INT8_DIR if (self.compute_type.startswith("int8")
                                             and (folder / INT8_DIR / "model.bin").is_file()) else folder
        try:
            self.translator = ct2.Translator(str(self.weights), device=kind, device_index=index,
                                             compute_type=self.compute_type, inter_threads=1,
                                             intra_threads=self.threads)
        except (RuntimeError, ValueError) as e:
            raise EngineUnavailable(f"ctranslate2 cannot load {folder} with compute_type={self.compute_type}: "
                                    f"{e}") from None
        self.max_positions = int(info["max_positions"])
        self.device = f"{kind}:{index}" if kind == "cuda" else kind
        self._source_tokens = loaded.source_tokens
        self._target_ids = loaded.target_vocab
        self.hp = loaded.hp

    def __repr__(self) -> str:
        weights = "7-bit int8 weights" if self.weights.name == INT8_DIR else "float32 weights"
        return f"ctranslate2 ({self.device}, {self.compute_type}, {weights}, {self.threads} threads)"

    def unsupported(self, beam_size: int, max_output_length: int, alpha: float, beta: float,
                    longest_source: int) -> Unsupported | None:
        """Why these settings would not decode as our search does here; None when they would."""
        if beta != 0:
            return Unsupported(f"length_penalty_beta={beta:g}: CTranslate2's penalty is length**alpha, GNMT's "
                               f"with beta 0")
        if max_output_length > self.max_positions:
            return Unsupported(f"max_output_length {max_output_length} is past the export's {self.max_positions} "
                               f"positions (export with --max-positions)")
        if longest_source > self.max_positions:
            return Unsupported(f"a source of {longest_source} tokens is past the export's {self.max_positions} "
                               f"positions")
        return None

    def decode(self, sources: Sequence[Sequence[int]], beam_size: int, max_output_length: int | Sequence[int],
               alpha: float, beta: float, attention: bool) -> list[Translation]:
        """The best translation of each source (ids without ``</s>``), as :func:`model.beam_search.beam_search`
        (or ``greedy_search`` for beam 1) returns them.

        With one limit per sentence (``max_output_length`` a sequence), CTranslate2 is called once per
        distinct limit: its ``max_decoding_length`` is one number a call, and only a search that knows the
        limit stops its hypotheses there as ours does. A length-sorted batch has few distinct limits."""
        if not sources:
            return []
        limits = ([max_output_length] * len(sources) if isinstance(max_output_length, int)
                  else [int(v) for v in max_output_length])
        out: list[Translation | None] = [None] * len(sources)
        for limit in sorted(set(limits)):
            rows = [i for i, v in enumerate(limits) if v == limit]
            for i, tr in zip(rows, self._decode_batch([sources[i] for i in rows], beam_size, limit, alpha,
                                                      attention)):
                out[i] = tr
        return out  # type: ignore[return-value]

    def _decode_batch(self, sources: Sequence[Sequence[int]], beam_size: int, max_output_length: int,
                      alpha: float, attention: bool) -> list[Translation]:
        tokens = [[self._source_tokens[i] for i in ids] + [EOS_SYMBOL] for ids in sources]
        penalty = alpha if beam_size > 1 else 1.0  # greedy: our normalized score is the mean per token
        results = self.translator.translate_batch(
            tokens, beam_size=beam_size, patience=1, num_hypotheses=1, length_penalty=penalty,
            max_decoding_length=max_output_length, min_decoding_length=0, max_input_length=0,
            return_end_token=True, return_scores=True, return_attention=attention,
            suppress_sequences=[[PAD_SYMBOL], [BOS_SYMBOL]])
        out = []
        for ids, result in zip(sources, results):
            hyp = result.hypotheses[0]
            n = len(hyp)  # tokens incl. </s> when it came: what both penalties count
            normalized = float(result.scores[0])
            target = [self._target_ids.get(t, self._target_ids[UNK_SYMBOL]) for t in hyp]
            if target and hyp[-1] == EOS_SYMBOL:
                target = target[:-1]
            rows = None
            if attention:
                rows = [list(row[:len(ids) + 1]) for row in result.attention[0]]
            out.append(Translation(target, normalized * (n ** penalty if n else 1.0), normalized, rows))
        return out


# --- the CLI -----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model.ctranslate export MODEL_DIR``: one line on success, one ``error: …`` line and
    exit status 1 on failure."""
    p = argparse.ArgumentParser(prog="python -m model.ctranslate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write MODEL_DIR/ctranslate2/ from a transformer model directory")
    e.add_argument("model_dir", type=Path)
    e.add_argument("--compute-type", default="int8", choices=COMPUTE_TYPES,
                   help="this model's default compute type for decoding (SEQ2SEQ_COMPUTE_TYPE overrides it)")
    e.add_argument("--max-positions", type=int, default=DEFAULT_MAX_POSITIONS,
                   help=f"longest source and output the export handles (default {DEFAULT_MAX_POSITIONS})")
    e.add_argument("--no-int8", action="store_true", help="float32 weights only (int8 is then quantized at load, "
                   "in 8 bits, which saturates on CPUs without VNNI)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        path = export(args.model_dir, args.compute_type, args.max_positions, int8=not args.no_int8)
    except (ExportError, EngineUnavailable, FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"export": str(path), "int8": not args.no_int8, "compute_type": args.compute_type}))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
