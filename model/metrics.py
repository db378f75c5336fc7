"""Metric lines on stdout, in the form SageMaker's MetricDefinitions regexes read (docs/ARCHITECTURE.md §4), and the
evaluation measures behind them.

The built-in algorithm publishes ``validation:bleu``, ``validation:perplexity`` and
``validation:accuracy``; a tuning job optimises one of them by its regex, so names and the number
format are part of the contract.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

NUMBER = "([0-9.eE+-]+)"
METRIC_NAMES = (
    "train:loss",
    "train:perplexity",
    "train:accuracy",
    "validation:perplexity",
    "validation:accuracy",
    "validation:bleu",
)
METRIC_DEFINITIONS: list[dict[str, str]] = [{"Name": name, "Regex": f"{name}={NUMBER}"} for name in METRIC_NAMES]
# What a tuning job may optimise, and in which direction (the built-in algorithm's objective metrics).
OBJECTIVE_METRICS = {
    "validation:bleu": "Maximize",
    "validation:accuracy": "Maximize",
    "validation:perplexity": "Minimize",
}


def format_metric(name: str, value: float) -> str:
    """``name=value`` with enough digits for a tuning job to rank by, and no locale surprises."""
    return f"{name}={value:.6g}"


def emit(metrics: Mapping[str, float], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    for name, value in metrics.items():
        out.write(format_metric(name, value) + "\n")
    out.flush()


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp(mean token NLL); capped so that an untrained model prints a number, not ``inf``."""
    if num_tokens == 0:
        return float("nan")
    return math.exp(min(total_nll / num_tokens, 700.0))


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new < best if metric == "perplexity" else new > best


def corpus_bleu(hypotheses: Sequence[str], references: Iterable[str]) -> float:
    """BLEU on token strings as they are (no re-tokenisation): the built-in algorithm's view of BLEU
    during training, on its own tokens. Detokenized sacreBLEU is the evaluation step's job."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="none", force=True).score)
