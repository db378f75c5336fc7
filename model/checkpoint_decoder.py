"""What each checkpoint measures on the validation channel: perplexity and accuracy from the
teacher-forced likelihood, and BLEU of beam-search output on a sample fixed for the whole run.

The evaluation step of the pipeline scores a model with the same :func:`evaluate_likelihood`, so a
checkpoint's perplexity and the evaluation report's are computed alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from model import data_io, metrics
from model.beam_search import beam_search, length_factor, output_length_limits
from model.hyperparameters import Hyperparameters
from model.loss import forward_real, token_losses
from model.precision import autocast_context


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while scoring, and the model's own mode back afterwards, also on error: a checkpoint
    scores the model the training loop goes on training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate_likelihood(model: nn.Module, data: data_io.ParallelData, batch_size: int,
                        device: torch.device, precision: str) -> dict[str, float]:
    """Validation perplexity (exp mean NLL, ``</s>`` counted, ``<pad>`` not) and token accuracy."""
    total_nll = 0.0
    correct = tokens = 0
    with _eval_mode(model):
        for indices in data_io.evaluation_batches(data, batch_size):
            batch = data_io.collate(data, indices).to(device)
            with autocast_context(device, precision):
                logits, targets = forward_real(model, batch)
            _, nll, corr = token_losses(logits, targets, 0.0)
            total_nll += float(nll)
            correct += int(corr)
            tokens += batch.num_target_tokens
    return {"perplexity": metrics.perplexity(total_nll, tokens), "accuracy": correct / tokens if tokens else 0.0,
            "nll": total_nll, "tokens": tokens}


def bleu_sample(num_pairs: int, hp: Hyperparameters) -> np.ndarray | None:
    """Which validation pairs BLEU is computed on: fixed for the whole run so checkpoints compare.

    ``bleu_sample_size`` -1 is all of them, 0 none — except that ``optimized_metric=bleu`` needs BLEU,
    so 0 then means all (the AWS example sets optimized_metric=bleu and leaves the sample size alone)."""
    n = hp.bleu_sample_size
    if n == 0 and hp.optimized_metric == "bleu":
        n = -1
    if n == 0:
        return None
    if n < 0 or n >= num_pairs:
        return np.arange(num_pairs)
    rng = np.random.default_rng(hp.seed)
    return np.sort(rng.choice(num_pairs, size=n, replace=False))


def evaluate_bleu(model: nn.Module, data: data_io.ParallelData, indices: np.ndarray, hp: Hyperparameters,
                  target_tokens: list[str], device: torch.device, batch_size: int = 32,
                  length_ratio: tuple[float, float] | None = None) -> float:
    """Token-level BLEU of beam-search output against the validation targets (the algorithm's view), with
    the output length limits serving uses (``length_ratio`` of the training data)."""
    hyps: dict[int, str] = {}
    refs: dict[int, str] = {}
    subset = data.subset(indices)
    factor = length_factor(length_ratio)
    with _eval_mode(model):
        for batch_indices in data_io.evaluation_batches(subset, batch_size):
            batch = data_io.collate(subset, batch_indices).to(device)
            with autocast_context(device, hp.precision):
                out = beam_search(model, batch.src, batch.lengths, beam_size=hp.beam_size,
                                  max_output_length=output_length_limits(batch.lengths, factor,
                                                                         hp.max_seq_len_target + 1),
                                  length_penalty_alpha=hp.length_penalty_alpha,
                                  length_penalty_beta=hp.length_penalty_beta)
            for i, translation in zip(batch_indices.tolist(), out):
                hyps[i] = " ".join(target_tokens[t] for t in translation.tokens)
                refs[i] = " ".join(target_tokens[t] for t in subset.target(i))
    order = sorted(hyps)
    return metrics.corpus_bleu([hyps[i] for i in order], [refs[i] for i in order])
