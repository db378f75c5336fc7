"""The int8 engines against our float32 search: sentences/s and BLEU on the bundled WMT sample's test split.

    .venv/bin/python -m benchmarks.bench_int8 [--work DIR] [--lines 1000] [--runs 3] [--threads 1]
                                              [--transformer-updates 1500] [--rnn-updates 300]

- models: trained here on the sample's 10k training pairs (word vocabularies of 8,000 a side, as
  bench_transform), or reused from ``--work`` when a previous run left them there:
  a Transformer (``TRANSFORMER_HP``: 128 wide, 4 heads, 3+3 layers, feed-forward 512, tied target
  embeddings) and bench_transform's demo-size LSTM (128 hidden, embeddings 64). The Transformer is
  exported with ``model.ctranslate.export`` (float32 + 7-bit int8 weights).
- engines: Transformer with our torch search (fp32), CTranslate2 float32 and CTranslate2 int8; LSTM with
  our torch search fp32 and with ``torch.ao`` dynamic int8 (``quantize=int8``). Each through
  ``model.translator.Translator.translate`` (batches of 32 sentences sorted by length), as serving, batch
  transform and evaluation call it.
- input: the first ``--lines`` sentences of the sample's test split (already tokenized), beam 5 and greedy.
- timing: ``--runs`` rounds, each engine once per round in turn (so a load spike on this shared machine hits
  every engine alike), the best round per engine; model loading is not timed.
- quality: sacreBLEU (13a, on the tokenized text, as the demo scores it) against the references; ΔBLEU
  against the same model's float32 torch output; and how many lines are identical to it, with the BLEU of
  the int8 output taking the float32 output as its reference (100 = the same translations), which shows
  what quantization changed even where the models are too weak for BLEU against references to move.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import sacrebleu
import torch

from benchmarks.bench_transform import DEMO_HP
from benchmarks.common import SAMPLE
from model.inference_config import InferenceConfig
from model.translator import Translator

log = logging.getLogger("bench_int8")

TRANSFORMER_HP = {  # demo-size, like DEMO_HP's LSTM: what trains in minutes on this project's 2-core machine
    "encoder_type": "transformer", "decoder_type": "transformer", "transformer_model_size": "128",
    "transformer_attention_heads": "4", "transformer_feed_forward_num_hidden": "512", "num_layers_encoder": "3",
    "num_layers_decoder": "3", "transformer_dropout": "0.1", "label_smoothing": "0.1", "weight_tying": "true",
    "weight_tying_type": "trg_softmax", "learning_rate": "0.001", "learning_rate_warmup": "200",
    "batch_size": "32", "max_seq_len_source": "60", "max_seq_len_target": "60", "optimized_metric": "perplexity",
    "bleu_sample_size": "0",
}


def train(root: Path, hp: dict[str, str], updates: int) -> Path:
    """A model directory under `root`, trained unless a previous run left one there."""
    from model.sagemaker import SageMakerPaths
    from model.train import run
    from pipeline_tasks.channels import VocabConfig, make_channels

    model_dir = root / "model"
    if (model_dir / "params.pt").is_file():
        log.warning("reusing %s", model_dir)
        return model_dir
    log.warning("training %s for %d updates (minutes on 2 CPUs)", root, updates)
    make_channels(str(SAMPLE / "train.en"), str(SAMPLE / "train.de"), str(SAMPLE / "val.en"), str(SAMPLE / "val.de"),
                  root / "input/data", VocabConfig(num_words_source=8000, num_words_target=8000))
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(
        {**hp, "max_num_batches": str(updates), "checkpoint_frequency_num_batches": str(updates)}))
    started = time.perf_counter()
    if run(SageMakerPaths(root)) != 0:
        raise RuntimeError(f"training the benchmark model under {root} failed")
    log.warning("trained %s in %.0f s", model_dir, time.perf_counter() - started)
    return model_dir


def test_split(lines: int) -> tuple[list[str], list[str]]:
    src = (SAMPLE / "test.en").read_text(encoding="utf-8").splitlines()
    ref = (SAMPLE / "test.de").read_text(encoding="utf-8").splitlines()
    pairs = [(s, r) for s, r in zip(src, ref) if s.strip()][:lines]
    return [s for s, _ in pairs], [r for _, r in pairs]


def describe(t: Translator) -> str:
    hp = t.loaded.hp
    params = sum(p.numel() for p in {id(p): p for p in t.loaded.model.parameters()}.values())
    if hp.encoder_type == "transformer":
        arch = (f"transformer ({hp.transformer_model_size} wide, {hp.num_layers_encoder}+{hp.num_layers_decoder} "
                f"layers")
    else:
        arch = f"{hp.rnn_cell_type} ({hp.rnn_num_hidden} hidden, {hp.num_layers_encoder}+{hp.num_layers_decoder} layers"
    vocab = f"{len(t.loaded.source_vocab)}/{len(t.loaded.target_vocab)}"
    return f"{arch}, {params / 1e6:.1f}M parameters, vocabularies {vocab})"


def measure(translators: dict[str, Translator], sources: list[str], runs: int) -> dict[str, tuple[float, list[str]]]:
    """Best seconds over `runs` alternating rounds, and the output, per engine."""
    prepared = {name: [t.source_from_text(s) for s in sources] for name, t in translators.items()}
    best: dict[str, float] = {}
    outputs: dict[str, list[str]] = {}
    for _ in range(runs):
        for name, t in translators.items():
            started = time.perf_counter()
            outs = t.translate(prepared[name])
            elapsed = time.perf_counter() - started
            best[name] = min(best.get(name, elapsed), elapsed)
            outputs[name] = [o.target for o in outs]
    return {name: (best[name], outputs[name]) for name in translators}


def report(title: str, results: dict[str, tuple[float, list[str]]], refs: list[str], baseline: str) -> None:
    base_s, base_out = results[baseline]
    base_bleu = sacrebleu.corpus_bleu(base_out, [refs]).score
    print(f"  {title}")
    print(f"    {'engine':<22} {'sent/s':>8} {'speed-up':>9} {'BLEU':>6} {'ΔBLEU':>6} {'same lines':>11} "
          f"{'BLEU vs fp32':>13}")
    for name, (seconds, out) in results.items():
        score = sacrebleu.corpus_bleu(out, [refs]).score
        same = sum(a == b for a, b in zip(out, base_out)) / len(out)
        fidelity = sacrebleu.corpus_bleu(out, [base_out]).score
        print(f"    {name:<22} {len(out) / seconds:>8.1f} {base_s / seconds:>8.2f}x {score:>6.2f} "
              f"{score - base_bleu:>+6.2f} {same:>10.1%} {fidelity:>13.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path(".bench-int8"), help="models are trained (or reused) here")
    p.add_argument("--lines", type=int, default=1000, help="test sentences translated")
    p.add_argument("--runs", type=int, default=3, help="alternating rounds; the best one counts")
    p.add_argument("--threads", type=int, default=1, help="threads per engine (torch and CTranslate2)")
    p.add_argument("--transformer-updates", type=int, default=600)
    p.add_argument("--rnn-updates", type=int, default=300)
    p.add_argument("--skip-rnn", action="store_true")
    p.add_argument("--skip-transformer", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sources, refs = test_split(args.lines)
    if not args.skip_transformer:
        torch.set_num_threads(2)  # training: the machine's cores
        tf_dir = train(args.work / "transformer", TRANSFORMER_HP, args.transformer_updates)
        from model import ctranslate

        if not (tf_dir / ctranslate.EXPORT_DIR).is_dir():
            ctranslate.export(tf_dir)
    if not args.skip_rnn:
        torch.set_num_threads(2)
        rnn_dir = train(args.work / "rnn", DEMO_HP, args.rnn_updates)
    torch.set_num_threads(args.threads)
    print(f"{len(sources)} sentences of the sample's test split, {args.threads} thread(s) per engine, "
          f"best of {args.runs} alternating rounds; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    for beam in (5, 1):
        search = f"beam {beam}" if beam > 1 else "greedy"
        config = {"beam_size": beam, "text_format": "tokens", "batch_size": 32}
        if not args.skip_transformer:
            translators = {
                "torch fp32": Translator.load(tf_dir, InferenceConfig(engine="torch", **config), "cpu"),
                **{f"ctranslate2 {ct}": Translator.load(tf_dir, InferenceConfig(engine="ctranslate2", compute_type=ct,
                                                                                **config), "cpu")
                   for ct in ("float32", "int8")},
            }
            report(f"{describe(translators['torch fp32'])}, {search}", measure(translators, sources, args.runs), refs,
                   "torch fp32")
        if not args.skip_rnn:
            translators = {
                "torch fp32": Translator.load(rnn_dir, InferenceConfig(**config), "cpu"),
                "torch.ao int8": Translator.load(rnn_dir, InferenceConfig(quantize="int8", **config), "cpu"),
            }
            report(f"{describe(translators['torch fp32'])}, {search}", measure(translators, sources, args.runs), refs,
                   "torch fp32")


if __name__ == "__main__":
    main()
