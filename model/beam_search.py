"""Greedy and beam-search decoding over the :class:`~model.encoder_decoder.Decoder` step interface.

One search drives every architecture because it only touches ``Seq2Seq.encode``,
``decoder.init_state``, ``decoder.step``, :func:`~model.encoder_decoder.reorder_state` and
:meth:`~model.encoder_decoder.EncoderOutput.index_select`.

Ranking follows Sockeye 1.x, which the built-in SageMaker algorithm is built on; the best-ever record,
the stopping bound and the shrinking batch are our additions and do not change what is ranked how:

- ``B`` sentences × ``K`` beams are flattened to ``B*K`` decoder rows; the encoder output is expanded
  once. Each step scores every (row, token) candidate and each sentence keeps its ``K`` best.
- Every hypothesis is ranked by its *normalized* score, ``score / length_penalty(length)``, where
  ``score`` is the sum of the model's log-probabilities and ``length`` counts tokens including
  ``</s>``. A hypothesis that emits ``</s>`` is finished: it keeps its slot (and its normalized score)
  while live ones compete with it, so the beam fills up with finished hypotheses and the search ends.
- ``max_output_length`` is one limit for the batch or one per sentence (a ``B`` tensor: what
  :func:`output_length_limits` gives, a multiple of each source's length as Sockeye does it).
- A sentence stops when none of its rows is live, or when its best finished hypothesis can no longer
  be beaten: a live hypothesis only loses log-probability from here on and the penalty only grows, so
  ``score / length_penalty(max_output_length)`` bounds anything it can still become. This bound never
  changes the result, it only saves steps. The answer is the best finished hypothesis ever seen
  (also one that was pushed out of the beam later); one that reaches its sentence's
  ``max_output_length`` tokens without ``</s>`` counts as finished at that length.
- Finished sentences leave the decoder batch, so a long sentence does not make short ones pay.
- ``<pad>`` and ``<s>`` are never emitted. They are masked *after* the softmax, so scores stay the
  model's own log-probabilities (what teacher forcing gives), not renormalised ones.

Callers must put the model in ``eval()`` mode (dropout); the search does not touch ``model.training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch
from torch import Tensor

from model.encoder_decoder import EncoderOutput, reorder_state
from model.model import Seq2Seq
from model.vocab import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


@dataclass
class Translation:
    tokens: list[int]  # target ids, without <s> and </s>
    score: float  # sum of log-probabilities of tokens + </s> (not normalised)
    normalized_score: float  # score / length penalty: what beam search ranks by
    attention: list[list[float]] | None  # one row per output token incl. </s>; one column per REAL source token


@overload
def length_penalty(length: int | float, alpha: float, beta: float) -> float: ...
@overload
def length_penalty(length: Tensor, alpha: float, beta: float) -> Tensor: ...
def length_penalty(length: int | float | Tensor, alpha: float, beta: float) -> float | Tensor:
    """GNMT's penalty as Sockeye defines it, so that scores are comparable with the built-in algorithm;
    1 at length 1, and alpha=0 turns normalisation off."""
    return ((beta + length) / (beta + 1.0)) ** alpha


# Sockeye's rule for the longest output of a source: the training data's target/source length ratio plus
# this many standard deviations; without statistics (older models), this factor.
DEFAULT_NUM_STDS = 2
DEFAULT_LENGTH_FACTOR = 2.0


def length_factor(length_ratio: tuple[float, float] | None, num_stds: int = DEFAULT_NUM_STDS) -> float:
    """How many output tokens a source token may give at most: ``mean + num_stds * std`` of the training
    pairs' (target + 1) / (source + 1) length ratio; a negative ``num_stds`` or no statistics give
    :data:`DEFAULT_LENGTH_FACTOR`."""
    if length_ratio is None or num_stds < 0:
        return DEFAULT_LENGTH_FACTOR
    mean, std = length_ratio
    return mean + num_stds * std


def output_length_limits(lengths: Tensor, factor: float, cap: int) -> Tensor:
    """Per sentence, the most output tokens (``</s>`` counted) for sources of ``lengths`` tokens (``</s>``
    counted): ``ceil(factor * length)``, at least 1, at most ``cap``. A model whose output runs on without
    ``</s>`` (repeating itself, as undertrained models do) is stopped near the length a translation of that
    source can have, instead of at the longest sentence the model was trained on."""
    limits = torch.ceil(lengths.to(torch.float64) * factor - 1e-9).to(torch.long)
    return limits.clamp(min=1, max=cap)


def _limits(src: Tensor, lengths: Tensor, max_output_length: int | Tensor) -> Tensor:
    """The per-sentence limits as a ``B`` tensor on the source's device, after checking the inputs."""
    if src.dim() != 2 or lengths.dim() != 1 or lengths.size(0) != src.size(0):
        raise ValueError(f"expected src B×S and lengths B, got {tuple(src.shape)} and {tuple(lengths.shape)}")
    if isinstance(max_output_length, Tensor):
        limits = max_output_length.to(device=src.device, dtype=torch.long)
        if limits.shape != lengths.shape:
            raise ValueError(f"expected one max_output_length per sentence ({lengths.size(0)}), "
                             f"got shape {tuple(limits.shape)}")
    else:
        limits = torch.full_like(lengths, int(max_output_length), device=src.device, dtype=torch.long)
    if limits.numel() and int(limits.min()) < 1:
        raise ValueError(f"max_output_length must be >= 1 (it counts </s>), got {int(limits.min())}")
    return limits


def _log_probs(logits: Tensor) -> Tensor:
    """Float32 log-probabilities with the ids no output may contain removed afterwards, so scores
    remain the model's own log-probabilities."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, PAD_ID] = NEG_INF
    logp[:, BOS_ID] = NEG_INF
    return logp


def _translations(
    tokens: list[list[int]],
    num_emitted: list[int],
    scores: list[float],
    attention: Tensor | None,
    src_lengths: list[int],
    alpha: float,
    beta: float,
) -> list[Translation]:
    """Python objects built once at the end, so the search itself never loops over sentences."""
    out = []
    for i, (row, n, score) in enumerate(zip(tokens, num_emitted, scores, strict=True)):
        ids = row[:n]
        if ids and ids[-1] == EOS_ID:
            ids = ids[:-1]
        att = attention[i, :n, : src_lengths[i]].tolist() if attention is not None else None
        out.append(Translation(ids, score, score / length_penalty(n, alpha, beta), att))
    return out


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq, src: Tensor, lengths: Tensor, max_output_length: int | Tensor, return_attention: bool = False
) -> list[Translation]:
    """The most likely token at every step; kept separate from :func:`beam_search` (rather than beam
    size 1) as the simple reference beam search is tested against. ``normalized_score`` uses the default
    penalty (alpha=1, beta=0): the mean log-probability per token."""
    limits = _limits(src, lengths, max_output_length)
    batch = src.size(0)
    if batch == 0:
        return []
    device = src.device
    enc = model.encode(src, lengths)
    state = model.decoder.init_state(enc)
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    score = torch.zeros(batch, dtype=torch.float32, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    num_emitted = limits.clone()
    steps: list[Tensor] = []
    attns: list[Tensor] = []
    for t in range(int(limits.max())):
        logits, attn, state = model.decoder.step(enc, prev, state, t)
        logp = _log_probs(logits)
        tok = logp.argmax(dim=-1)
        score = torch.where(finished, score, score + logp.gather(1, tok[:, None]).squeeze(1))
        tok = tok.masked_fill(finished, EOS_ID)
        newly = ~finished & (tok == EOS_ID)
        num_emitted = torch.where(newly, t + 1, num_emitted)
        finished = finished | newly | (limits <= t + 1)
        steps.append(tok)
        if return_attention:
            attns.append(attn.float())
        prev = tok
        if bool(finished.all()):
            break
    attention = torch.stack(attns, dim=1).cpu() if return_attention else None
    return _translations(
        torch.stack(steps, dim=1).tolist(),
        num_emitted.tolist(),
        score.tolist(),
        attention,
        lengths.tolist(),
        1.0,
        0.0,
    )


@torch.inference_mode()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    lengths: Tensor,
    beam_size: int,
    max_output_length: int | Tensor,
    length_penalty_alpha: float = 1.0,
    length_penalty_beta: float = 0.0,
    return_attention: bool = False,
) -> list[Translation]:
    """The best hypothesis per sentence by normalized score (see the module docstring for the rules).

    The results do not depend on the batch: each sentence is searched as if it were alone. Beam size 1
    gives exactly :func:`greedy_search`'s tokens and scores.
    """
    limits = _limits(src, lengths, max_output_length)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if length_penalty_alpha < 0 or length_penalty_beta < 0:
        # The stopping bound needs a penalty that never shrinks with length.
        raise ValueError(
            f"length_penalty_alpha and length_penalty_beta must be >= 0, got "
            f"{length_penalty_alpha} and {length_penalty_beta}"
        )
    batch = src.size(0)
    if batch == 0:
        return []
    alpha, beta, k = length_penalty_alpha, length_penalty_beta, beam_size
    device = src.device
    n_rows = batch * k
    all_rows = torch.arange(n_rows, device=device)
    slots = torch.arange(k, device=device)

    enc: EncoderOutput = model.encode(src, lengths).index_select(all_rows // k)
    state = model.decoder.init_state(enc)
    prev = torch.full((n_rows,), BOS_ID, dtype=torch.long, device=device)

    # Per row, global numbering (sentence * K + slot); only the decoder's tensors are compacted.
    # Slots 1..K-1 start dead (-inf) so that step 0 does not fill the beam with K copies of one prefix.
    score = torch.zeros(batch, k, dtype=torch.float32, device=device)
    score[:, 1:] = NEG_INF
    score = score.view(n_rows)
    finished = (slots > 0).repeat(batch)  # emitted </s>, or dead: extended no further
    num_emitted = torch.zeros(n_rows, dtype=torch.long, device=device)  # tokens incl. </s>

    # The best finished hypothesis per sentence, by (step, row) for back-tracking.
    best_key = torch.full((batch,), NEG_INF, dtype=torch.float32, device=device)
    best_score = torch.full((batch,), NEG_INF, dtype=torch.float32, device=device)
    best_step = torch.zeros(batch, dtype=torch.long, device=device)
    best_row = torch.zeros(batch, dtype=torch.long, device=device)

    active = torch.arange(batch, device=device)  # sentences still searched
    active_rows = all_rows  # their rows, in the order of the decoder's batch
    row_limit = limits.repeat_interleave(k)  # per row (global numbering): tokens it may hold, </s> counted
    row_max_penalty = length_penalty(row_limit.to(torch.float32), alpha, beta)
    n_steps_max = int(limits.max())
    hist_tokens: list[Tensor] = []  # step t: N ids, the t-th token of the hypothesis in each row
    hist_back: list[Tensor] = []  # step t: N rows of step t-1 each row continues
    hist_attn: list[Tensor] = []  # step t: N×S attention that produced that token

    for t in range(n_steps_max):
        logits, attn, state = model.decoder.step(enc, prev, state, t)
        logp = _log_probs(logits)
        rows, vocab = logp.shape
        n_active = rows // k
        row_score = score[active_rows]
        row_finished = finished[active_rows]

        if k == 1:
            # Active rows are all live here, and one row's ranking by normalized score is its ranking
            # by log-probability: argmax breaks ties exactly as greedy_search does.
            flat = logp.argmax(dim=-1, keepdim=True)
            cand = logp.add_(row_score[:, None])
            picked_score = cand.gather(1, flat)
        else:
            # Ranked in units of raw score at this step's length: live candidates all share the
            # penalty lp(t+1), so only a finished row's normalized score needs rescaling to compare.
            # In place, because these V-wide passes are most of the search's own cost.
            cand = logp.add_(row_score[:, None]).masked_fill_(row_finished[:, None], NEG_INF)
            # A finished row is one candidate: itself, unchanged (token </s>, back-pointer to itself).
            lengths_done = num_emitted[active_rows].clamp(min=1)
            carried = row_score * (length_penalty(t + 1, alpha, beta) / length_penalty(lengths_done, alpha, beta))
            cand[:, EOS_ID] = torch.where(row_finished, carried, cand[:, EOS_ID])
            picked = cand.view(n_active, k * vocab).topk(k, dim=1)
            flat, picked_score = picked.indices, picked.values
        tok = (flat % vocab).view(rows)
        local_src = ((torch.arange(n_active, device=device)[:, None] * k) + flat // vocab).view(rows)
        was_finished = row_finished[local_src]
        picked_score = picked_score.reshape(rows)
        # Fewer than K real candidates (tiny vocabularies) leave the rest of the beam dead, not copies.
        new_score = torch.where(was_finished & ~picked_score.isneginf(), row_score[local_src], picked_score)
        at_limit = row_limit[active_rows] <= t + 1  # this token is the last its sentence may have
        new_finished = was_finished | (tok == EOS_ID) | new_score.isneginf() | at_limit
        src_rows = active_rows[local_src]
        new_emitted = torch.where(was_finished, num_emitted[src_rows], t + 1)
        score[active_rows] = new_score
        finished[active_rows] = new_finished
        num_emitted[active_rows] = new_emitted

        step_tokens = torch.full((n_rows,), PAD_ID, dtype=torch.long, device=device)
        step_tokens[active_rows] = tok
        step_back = all_rows.clone()
        step_back[active_rows] = src_rows
        hist_tokens.append(step_tokens)
        hist_back.append(step_back)
        if return_attention:
            step_attn = torch.zeros(n_rows, attn.size(1), dtype=torch.float32, device=device)
            step_attn[active_rows] = attn.float()[local_src]
            hist_attn.append(step_attn)

        # Hypotheses completed at this step: by </s>, or by running out of length.
        last = t == n_steps_max - 1
        completed = ~was_finished & ~new_score.isneginf() & ((tok == EOS_ID) | at_limit)
        done_key = torch.where(completed, new_score / length_penalty(new_emitted, alpha, beta), NEG_INF)
        top_key, top_slot = done_key.view(n_active, k).max(dim=1)
        better = top_key > best_key[active]
        best_key[active] = torch.where(better, top_key, best_key[active])
        best_score[active] = torch.where(better, new_score.view(n_active, k).gather(1, top_slot[:, None])[:, 0],
                                         best_score[active])
        best_step[active] = torch.where(better, t, best_step[active])
        best_row[active] = torch.where(better, active * k + top_slot, best_row[active])
        if last:
            break

        live_bound = torch.where(new_finished, NEG_INF, new_score / row_max_penalty[active_rows])
        live_bound = live_bound.view(n_active, k).max(dim=1).values
        keep = best_key[active] < live_bound
        n_keep = int(keep.sum())
        if n_keep == 0:
            break
        reorder = local_src
        prev = tok.masked_fill(new_finished, EOS_ID)
        kept_rows = None
        if n_keep < n_active:
            kept = keep.nonzero().squeeze(1)
            kept_rows = (kept[:, None] * k + slots).view(-1)
            reorder = reorder[kept_rows]
            prev = prev[kept_rows]
            active = active[kept]
            active_rows = active_rows[kept_rows]
            enc = enc.index_select(kept_rows)
        state = reorder_state(state, reorder, model.decoder.static_state, kept_rows)

    # Follow the back-pointers from each sentence's best hypothesis, all sentences at once.
    n_steps = len(hist_tokens)
    tokens_h = torch.stack(hist_tokens)
    back_h = torch.stack(hist_back)
    out_tokens = torch.empty(batch, n_steps, dtype=torch.long, device=device)
    out_attn = None
    if return_attention:
        out_attn = torch.empty(batch, n_steps, attn.size(1), dtype=torch.float32, device=device)
    ptr = best_row
    for t in reversed(range(n_steps)):
        out_tokens[:, t] = tokens_h[t, ptr]
        if out_attn is not None:
            out_attn[:, t] = hist_attn[t][ptr]
        ptr = torch.where(best_step >= t, back_h[t, ptr], ptr)
    return _translations(
        out_tokens.tolist(),
        (best_step + 1).tolist(),
        best_score.tolist(),
        out_attn.cpu() if out_attn is not None else None,
        lengths.tolist(),
        alpha,
        beta,
    )
