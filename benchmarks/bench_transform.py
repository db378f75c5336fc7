"""Batch transform throughput: our streaming transform (length-sorted batches) against translating one
sentence at a time, in sentences/s, with beam 5 and greedy; plus peak memory for 10k and 100k lines.

    .venv/bin/python -m benchmarks.bench_transform [--model DIR] [--lines 1000] [--memory-lines 10000,100000]

- model: --model, or (default) a model trained here for --updates updates on the bundled WMT sample,
  at the `make demo` sizes (LSTM 128 hidden, embeddings 64, vocabularies of 8,000 words a side).
- input: the sample's held-out test split (real English sentences, as tokenized for training),
  repeated to --lines lines of ``{"source": …}``.
- ours: ``pipeline_tasks.transform.transform`` as the CLI runs it (batch 64, chunks of 2,000 lines,
  reading and writing the files included in the time).
- baseline: a plain loop that, for each line, parses it, maps tokens to ids and calls the same
  ``beam_search`` / ``greedy_search`` on a batch of one, then writes the line. The search code is shared
  on purpose: what is measured is batching, not a different decoder. Their outputs are compared: beam
  search results do not depend on the batch, so they agree up to float rounding between batch shapes.
- memory: ``transform`` in a fresh process per size (greedy), peak RSS of that process; the input
  grows 10×, the peak must not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import SAMPLE, PeakRSS
from model.beam_search import beam_search, greedy_search
from model.inference_config import InferenceConfig
from model.translator import Translator
from model.vocab import EOS_ID, UNK_ID
from pipeline_tasks.transform import TransformConfig, transform

log = logging.getLogger("bench_transform")

DEMO_HP = {
    "max_seq_len_source": "60", "max_seq_len_target": "60", "optimized_metric": "perplexity",
    "batch_size": "32", "rnn_num_hidden": "128", "num_embed_source": "64", "num_embed_target": "64",
    "checkpoint_frequency_num_batches": "100", "learning_rate": "0.003", "bleu_sample_size": "0",
}


def train_model(root: Path, updates: int) -> Path:
    from model.sagemaker import SageMakerPaths
    from model.train import run
    from pipeline_tasks.channels import VocabConfig, make_channels

    make_channels(str(SAMPLE / "train.en"), str(SAMPLE / "train.de"), str(SAMPLE / "val.en"), str(SAMPLE / "val.de"),
                  root / "input/data", VocabConfig(num_words_source=8000, num_words_target=8000))
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**DEMO_HP, "max_num_batches": str(updates)}))
    if run(SageMakerPaths(root)) != 0:
        raise RuntimeError("training the benchmark model failed")
    return root / "model"


def make_input(path: Path, lines: int) -> list[str]:
    test = [s for s in (SAMPLE / "test.en").read_text(encoding="utf-8").splitlines() if s.strip()]
    sources = [test[i % len(test)] for i in range(lines)]
    with open(path, "w", encoding="utf-8") as f:
        for s in sources:
            f.write(json.dumps({"source": s}) + "\n")
    return sources


def baseline(model_dir: Path, src: Path, out: Path, beam: int) -> float:
    """One sentence at a time; returns seconds."""
    tr = Translator.load(model_dir, InferenceConfig(beam_size=beam), device="cpu")
    model, hp, vocab, tokens = tr.loaded.model, tr.loaded.hp, tr.loaded.source_vocab, tr.loaded.target_tokens
    started = time.perf_counter()
    with open(src, encoding="utf-8") as fin, open(out, "w", encoding="utf-8") as fout:
        for line in fin:
            words = json.loads(line)["source"].split()[:hp.max_seq_len_source]
            ids = torch.tensor([[*(vocab.get(w, UNK_ID) for w in words), EOS_ID]])
            lengths = torch.tensor([ids.size(1)])
            if beam == 1:
                t = greedy_search(model, ids, lengths, hp.max_seq_len_target + 1)[0]
            else:
                t = beam_search(model, ids, lengths, beam, hp.max_seq_len_target + 1,
                                hp.length_penalty_alpha, hp.length_penalty_beta)[0]
            fout.write(json.dumps({"target": " ".join(tokens[i] for i in t.tokens)}, ensure_ascii=False) + "\n")
    return time.perf_counter() - started


def ours(model_dir: Path, src: Path, out: Path, beam: int) -> float:
    started = time.perf_counter()
    transform(model_dir, str(src), str(out), TransformConfig(beam_size=beam, batch_size=64, text_format="tokens"),
              device="cpu")
    return time.perf_counter() - started


def agreement(a: Path, b: Path) -> float:
    la, lb = a.read_text(encoding="utf-8").splitlines(), b.read_text(encoding="utf-8").splitlines()
    assert len(la) == len(lb)
    return sum(x == y for x, y in zip(la, lb)) / len(la)


def peak_memory(model_dir: Path, work: Path, lines: int) -> tuple[int, float]:
    """(peak RSS bytes, seconds) of a fresh process transforming `lines` lines greedily."""
    src = work / f"mem-{lines}.jsonl"
    make_input(src, lines)
    code = ("import sys, logging; logging.basicConfig(level=logging.WARNING);"
            "from pipeline_tasks.transform import transform, TransformConfig;"
            "transform(sys.argv[1], sys.argv[2], sys.argv[3], TransformConfig(beam_size=1, batch_size=64, "
            "text_format='tokens'), device='cpu')")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(model_dir), str(src), str(work / f"mem-{lines}.out")],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    with PeakRSS(proc.pid) as rss:
        if proc.wait() != 0:
            raise RuntimeError(f"transform of {lines} lines failed")
    return rss.peak, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a model directory (default: train one here)")
    p.add_argument("--updates", type=int, default=300, help="updates when training the model (default: 300)")
    p.add_argument("--lines", type=int, default=1000, help="input lines for the throughput runs")
    p.add_argument("--memory-lines", default="10000,100000", help="input sizes for the memory runs ('' skips)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-transform-") as tmp:
        work = Path(tmp)
        model_dir = args.model or train_model(work / "ml", args.updates)
        src = work / "in.jsonl"
        make_input(src, args.lines)
        print(f"model {model_dir}; {args.lines} lines of the sample's test split; {torch.get_num_threads()} "
              f"torch thread(s); CPU")
        print(f"{'search':<8} {'baseline sent/s':>16} {'ours sent/s':>12} {'ratio':>7} {'same output':>12}")
        for name, beam in (("beam 5", 5), ("greedy", 1)):
            t_base = baseline(model_dir, src, work / "base.out", beam)
            t_ours = ours(model_dir, src, work / "ours.out", beam)
            same = agreement(work / "base.out", work / "ours.out")
            print(f"{name:<8} {args.lines / t_base:>16,.1f} {args.lines / t_ours:>12,.1f} "
                  f"{t_base / t_ours:>6.1f}x {same:>11.1%}")
        sizes = [int(x) for x in args.memory_lines.split(",") if x.strip()]
        if sizes:
            print(f"{'lines':>8} {'peak RSS':>10} {'seconds':>8} {'sent/s':>8}")
            for n in sizes:
                peak, seconds = peak_memory(model_dir, work, n)
                print(f"{n:>8,} {peak / 2**20:>8.0f}MB {seconds:>8.1f} {n / seconds:>8,.0f}")


if __name__ == "__main__":
    main()
