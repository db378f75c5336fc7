"""A tuning job on the bundled WMT sample against the default configuration: the validation perplexity of
the best of N trials over learning rate and hidden size, and of the default, with the same update budget.

    .venv/bin/python -m benchmarks.bench_tuning [--trials 6] [--parallel 2] [--updates 300] [--work-dir DIR]

- Data: the 10,000 bundled pairs through the DAG's own steps (whitespace tokens, BPE 8,000), as `make demo`.
- Default: the `make demo` hyperparameters (LSTM 128 hidden, embeddings 64, batches of 32, learning rate
  0.003), --updates updates, one training job of the local backend.
- Tuning: the CreateHyperParameterTuningJob request the DAG's ``tuning`` param makes (Bayesian, objective
  validation:perplexity, learning_rate 0.0005-0.02 logarithmic, rnn_num_hidden 64/128/256), run here by
  pipeline_tasks/jobs/local/tuning.py: --trials trials, --parallel at once, same static hyperparameters.
- Printed: both objectives, the best trial's values, default / best perplexity, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import demo_hyperparameters
from pipeline_tasks.channels import VocabConfig
from pipeline_tasks.clean import CleanConfig
from pipeline_tasks.jobs.local.tuning import run_tuning_job
from pipeline_tasks.jobs.names import JOB_PREFIX_KEY, TUNING_JOB_NAME_MAX, job_name
from pipeline_tasks.jobs.requests import training_job_config
from pipeline_tasks.jobs.tuning import tuning_request_from_param
from pipeline_tasks.pipeline import (
    CorpusConfig,
    clean_step,
    download_step,
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
OBJECTIVE = "validation:perplexity"
RANGES = {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.0005", "MaxValue": "0.02",
                                         "ScalingType": "Logarithmic"}],
          "CategoricalParameterRanges": [{"Name": "rnn_num_hidden", "Values": ["64", "128", "256"]}]}


def objective(job: dict[str, Any]) -> float:
    [value] = [m["Value"] for m in job["FinalMetricDataList"] if m["MetricName"] == OBJECTIVE]
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6, help="MaxNumberOfTrainingJobs")
    ap.add_argument("--parallel", type=int, default=2, help="MaxParallelTrainingJobs")
    ap.add_argument("--updates", type=int, default=300, help="updates per training job (default and trials)")
    ap.add_argument("--work-dir", type=Path, default=None, help="artifact root (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # parallel trials share the cores

    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        root = str(args.work_dir or Path(tmp))
        run_id = "bench-tuning"
        layout = RunLayout(root, DAG_ID, run_id)
        download_step(layout, CORPUS)
        subset_step(layout, CORPUS, SubsetConfig(size=10000))
        clean_step(layout, CORPUS, CleanConfig())
        tokenize_step(layout, CORPUS, TokenizerConfig(mode="whitespace", detokenizer="none", bpe_vocab_size=8000))
        recordio_step(layout, CORPUS, VocabConfig(num_words_source=50000, num_words_target=50000))
        data = upload_step(layout)
        request = training_job_config(job_name=job_name(DAG_ID, run_id, 1), image_uri="wmt-seq2seq:latest",
                                      role_arn="arn:aws:iam::000000000000:role/local", channels=data["channels"],
                                      output_uri=layout.uri("model"),
                                      hyperparameters=demo_hyperparameters(args.updates, max(args.updates // 3, 1)))
        started = time.monotonic()
        default = train_step({**request, JOB_PREFIX_KEY: DAG_ID}, "local", run_id, 1)["Training"]
        default_s = time.monotonic() - started
        print(f"default (learning_rate 0.003, rnn_num_hidden 128): {OBJECTIVE} {objective(default):.2f} "
              f"in {default_s:.0f} s", flush=True)

        tuning = {"objective": OBJECTIVE, "ranges": RANGES, "strategy": "Bayesian", "max_jobs": args.trials,
                  "max_parallel": args.parallel, "random_seed": 0}
        config = tuning_request_from_param(tuning, job_name(f"{DAG_ID}-tune", run_id, 1, TUNING_JOB_NAME_MAX), request)
        started = time.monotonic()
        result = run_tuning_job(config, "local", store=layout.tuning_store)
        tuning_s = time.monotonic() - started
    best = result["BestTrainingJob"]
    best_value = best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    print(f"\ntuning: {args.trials} trials, {args.parallel} at a time, {args.updates} updates each, "
          f"{tuning_s:.0f} s")
    print("| trial | learning_rate | rnn_num_hidden | status | validation perplexity |")
    print("| --- | --: | --: | --- | --: |")
    for s in result["TrainingJobSummaries"]:
        value = (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        tuned = s["TunedHyperParameters"]
        print(f"| {s['TrainingJobName'].rsplit('-', 2)[-2]} | {float(tuned['learning_rate']):.4g} | "
              f"{tuned['rnn_num_hidden']} | {s['TrainingJobStatus']} | {'' if value is None else f'{value:.2f}'} |")
    ratio = objective(default) / best_value
    print(f"best: {best['TunedHyperParameters']} with {OBJECTIVE} {best_value:.2f}; default / best = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"default": objective(default), "default_s": default_s, "tuning": result,
                                         "tuning_s": tuning_s, "ratio": ratio}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
