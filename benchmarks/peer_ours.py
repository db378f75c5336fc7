"""Our side of benchmarks/bench_peer.py's scoring and translation, as a process of its own.

    .venv/bin/python -m benchmarks.peer_ours score --model DIR --source S --target T --output OUT.json
    .venv/bin/python -m benchmarks.peer_ours translate --model DIR --input S --output HYP --beam-size 5 ...
        [--engine torch|ctranslate2|auto] [--compute-type int8]

A separate process for the same reasons Sockeye's ``sockeye-score`` / ``sockeye-translate`` are one:
its peak RSS can be sampled alone, its threads are set by the same environment (``OMP_NUM_THREADS``)
and ``torch.set_num_threads``, and the benchmark driver itself never loads torch.

- ``score`` is the product's own test-perplexity code, ``pipeline_tasks.evaluate.perplexity_on``:
  sources prepared by ``model.translator.Translator`` (truncated to max_seq_len_source), targets mapped
  with the model's vocabulary and truncated to max_seq_len_target, scored by training's
  ``evaluate_likelihood``: plain NLL (no label smoothing) per target token, ``</s>`` counted.
- ``translate`` is ``Translator.translate`` in ``tokens`` text format (the input is already
  subword-split), as serving and batch transform run it. Model loading is timed apart from decoding;
  the decoding time covers what Sockeye's own "Total time" covers: turning lines into ids, the
  length-sorted batched search, and turning ids back into token strings. ``--engine`` and
  ``--compute-type`` are the product's ``InferenceConfig.engine`` / ``compute_type`` (what
  ``SEQ2SEQ_ENGINE`` / ``SEQ2SEQ_COMPUTE_TYPE`` set for serving, model/engines.py): ``torch`` (the
  default here: our search, even where the model directory holds an export) or ``ctranslate2`` on the
  directory's ``python -m model.ctranslate export`` (``--compute-type int8``: its 7-bit int8 weights).
  The engine that decoded is written to the output's ``.json`` (``engine``). The output length rule and
  the length penalty are the Translator's whichever engine decodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def score(a: argparse.Namespace) -> dict:
    """Validation NLL and perplexity of the model on (source, target) token files."""
    from model.inference_config import InferenceConfig
    from model.translator import Translator
    from pipeline_tasks.evaluate import perplexity_on

    translator = Translator.load(a.model, InferenceConfig(batch_size=a.batch_size, text_format="tokens"), "cpu")
    sources = [translator.source_from_text(line) if line.strip() else None for line in _lines(a.source)]
    t0 = time.perf_counter()
    result = perplexity_on(translator, sources, _lines(a.target), a.batch_size)
    result["seconds"] = time.perf_counter() - t0
    return result


def translate(a: argparse.Namespace) -> dict:
    """Translate a token file; load and decode times apart."""
    from model import engines
    from model.inference_config import InferenceConfig
    from model.translator import Translator

    t0 = time.perf_counter()
    config = InferenceConfig(batch_size=a.batch_size, beam_size=a.beam_size, text_format="tokens", engine=a.engine,
                             compute_type=a.compute_type)
    translator = Translator.load(a.model, config, "cpu")
    loaded = time.perf_counter()
    lines = _lines(a.input)
    t1 = time.perf_counter()
    outputs = translator.translate([translator.source_from_text(line) for line in lines])
    hyps = [" ".join(o.target_tokens) for o in outputs]
    decode_s = time.perf_counter() - t1
    Path(a.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return {"sentences": len(lines), "load_s": loaded - t0, "decode_s": decode_s,
            "beam_size": translator.beam_size, "batch_size": a.batch_size,
            "engine": engines.describe(translator.engine, translator.config),
            "max_output_length": translator.max_output_length,
            "output_length_rule": getattr(translator, "output_length_rule", f"{translator.max_output_length} tokens")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score")
    s.add_argument("--source", required=True)
    s.add_argument("--target", required=True)
    t = sub.add_parser("translate")
    t.add_argument("--input", required=True)
    t.add_argument("--beam-size", type=int, required=True)
    t.add_argument("--engine", choices=("torch", "ctranslate2", "auto"), default="torch",
                   help="InferenceConfig.engine (torch: our search even where the model has an export)")
    t.add_argument("--compute-type", help="InferenceConfig.compute_type for ctranslate2 (int8, float32, ...)")
    for p in (s, t):
        p.add_argument("--model", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    if a.command == "score":
        Path(a.output).write_text(json.dumps({**score(a), "threads": torch.get_num_threads()}) + "\n")
    else:
        info = translate(a)
        Path(a.output + ".json").write_text(json.dumps({**info, "threads": torch.get_num_threads()}) + "\n")


if __name__ == "__main__":
    main()
