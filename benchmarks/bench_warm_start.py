"""A weekly retrain, warm-started from the promoted model against one from scratch, with the same update
budget: test BLEU, chrF and perplexity of both, and the ratio of their perplexities.

    .venv/bin/python -m benchmarks.bench_warm_start [--updates 600] [--week1-pairs 5000] [--work-dir DIR]

- Week 1: the first --week1-pairs training pairs of the bundled WMT sample; a model trained for --updates
  updates is promoted (the parent).
- Week 2, old plus new data: all 10,000 pairs. Two runs with the same hyperparameters and --updates:
  ``init_model=promoted`` (the parent's tokenizer and vocabularies, its weights in the ``model`` channel)
  and ``init_model=none`` (its own BPE and vocabularies, from scratch), as the DAG would run them.
- Every run goes through the DAG's own step functions (pipeline_tasks/pipeline.py) on the local backend
  with local storage, at the `make demo` sizes (LSTM 128 hidden, embeddings 64, BPE 8,000, batches of
  32 sentences, learning rate 0.003); test: the first --test-sentences sentences, beam 5.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import demo_hyperparameters
from pipeline_tasks.channels import VocabConfig
from pipeline_tasks.clean import CleanConfig
from pipeline_tasks.evaluate import EvaluateConfig
from pipeline_tasks.gate import GateRule, gate
from pipeline_tasks.jobs.names import JOB_PREFIX_KEY, job_name
from pipeline_tasks.jobs.requests import training_job_config
from pipeline_tasks.parent_model import resolve_init_model
from pipeline_tasks.pipeline import (
    CorpusConfig,
    clean_step,
    download_step,
    evaluate_step,
    parent_step,
    recordio_step,
    subset_step,
    tokenize_step,
    train_step,
    upload_step,
)
from pipeline_tasks.runs import RunLayout
from pipeline_tasks.subset import SubsetConfig
from pipeline_tasks.tokenization import TokenizerConfig

DAG_ID = "wmt_seq2seq"
CORPUS = CorpusConfig("wmt-toy-ende-sample")
TOKENIZER = TokenizerConfig(mode="whitespace", detokenizer="none", bpe_vocab_size=8000)
VOCAB = VocabConfig(num_words_source=50000, num_words_target=50000)


def run(root: str, run_id: str, pairs: int, init_model: str, updates: int, test_sentences: int) -> dict[str, Any]:
    """One DAG run up to the gate, through the DAG's step functions; promotes when the gate says so."""
    layout = RunLayout(root, DAG_ID, run_id)
    hp = demo_hyperparameters(updates)
    download_step(layout, CORPUS)
    subset_step(layout, CORPUS, SubsetConfig(size=pairs))
    clean_step(layout, CORPUS, CleanConfig())
    parent = parent_step(layout, CORPUS, resolve_init_model(init_model, layout.pointer), hp, TOKENIZER)["parent"]
    tokenize_step(layout, CORPUS, TOKENIZER, parent)
    rec = recordio_step(layout, CORPUS, VOCAB, parent)
    data = upload_step(layout)
    request = training_job_config(job_name=job_name(DAG_ID, run_id, 1), image_uri="wmt-seq2seq:latest",
                                  role_arn="arn:aws:iam::000000000000:role/local", channels=data["channels"],
                                  output_uri=layout.uri("model"), hyperparameters=hp,
                                  model_uri=parent["model"] if parent else None)
    started = time.monotonic()
    job = train_step({**request, JOB_PREFIX_KEY: DAG_ID}, "local", run_id, 1)["Training"]
    seconds = time.monotonic() - started
    model = job["ModelArtifacts"]["S3ModelArtifacts"]
    scores = evaluate_step(layout, CORPUS, model, EvaluateConfig(beam_size=5, max_sentences=test_sentences),
                           parent=parent)
    decision = gate(scores["metrics"], layout.pointer, GateRule("test:bleu"),
                    {"run_id": run_id, "model": model, "training_job": job["TrainingJobName"], "dag_id": DAG_ID})
    return {"run_id": run_id, "init_model": init_model, "pairs": pairs, "model": model,
            "train_seconds": round(seconds, 1), "vocab": rec["vocab"]["source_size"],
            "metrics": scores["metrics"], "parent_metrics": (scores.get("parent") or {}).get("metrics"),
            "promoted": decision["promote"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=600, help="updates per training job (all three)")
    ap.add_argument("--week1-pairs", type=int, default=5000, help="training pairs of the parent's run")
    ap.add_argument("--week2-pairs", type=int, default=10000, help="training pairs of the retrains")
    ap.add_argument("--test-sentences", type=int, default=500, help="the first N test sentences, beam 5")
    ap.add_argument("--work-dir", type=Path, default=None, help="artifact root (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-warm-start-") as tmp:
        root = str(args.work_dir or Path(tmp))
        week1 = run(root, "week1", args.week1_pairs, "none", args.updates, args.test_sentences)
        print(f"week 1 (the parent): {week1['pairs']:,} pairs, {args.updates} updates in {week1['train_seconds']} s: "
              f"BLEU {week1['metrics']['test:bleu']:.2f}, perplexity {week1['metrics']['test:perplexity']:.2f}",
              flush=True)
        warm = run(root, "week2-warm", args.week2_pairs, "promoted", args.updates, args.test_sentences)
        scratch = run(str(Path(root) / "scratch"), "week2-scratch", args.week2_pairs, "none", args.updates,
                      args.test_sentences)
    print(f"\nweek 2: {args.week2_pairs:,} pairs (old + new), {args.updates} updates each, test: first "
          f"{args.test_sentences} sentences, beam 5")
    print("| second run | BLEU | chrF | perplexity | training s |")
    print("| --- | --: | --: | --: | --: |")
    for name, r in (("from scratch (init_model=none)", scratch), ("warm start (init_model=promoted)", warm)):
        m = r["metrics"]
        print(f"| {name} | {m['test:bleu']:.2f} | {m['test:chrf']:.2f} | {m['test:perplexity']:.2f} | "
              f"{r['train_seconds']} |")
    ratio = scratch["metrics"]["test:perplexity"] / warm["metrics"]["test:perplexity"]
    print(f"perplexity from scratch / warm-started: {ratio:.2f}x; BLEU warm - scratch: "
          f"{warm['metrics']['test:bleu'] - scratch['metrics']['test:bleu']:+.2f}; the parent scored on the same "
          f"sentences in the warm run: BLEU {warm['parent_metrics']['test:bleu']:.2f}, perplexity "
          f"{warm['parent_metrics']['test:perplexity']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"week1": week1, "warm": warm, "scratch": scratch,
                                         "perplexity_ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
