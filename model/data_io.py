"""Training data from the SageMaker channels: reading, checking, truncating, bucketing, batching.

The channels are the built-in algorithm's (docs/ARCHITECTURE.md §3): ``train/`` and ``validation/`` hold any number of
RecordIO-protobuf ``.rec`` files (ours or AWS's ``create_vocab_proto.py``'s), ``vocab/`` the two JSON
vocabularies. Pairs are held as flat numpy arrays (ids, uint16 for vocabularies up to 65,536 words, plus
int64 offsets), not Python lists, so millions of pairs fit in a few hundred MB; batches are index arrays
into them, collated to padded int64 tensors on demand.

Bucketing puts sentences of nearly equal length together so that a batch is mostly real tokens: that,
not the model, is where most of the speed on real data comes from. Word batches are filled to a budget
of real target tokens, as Sockeye and fairseq do, so an update sees the data its batch size promises.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import recordio, vocab
from model.constants import VOCAB_CHANNEL, VOCAB_SOURCE_FILE, VOCAB_TARGET_FILE
from model.hyperparameters import Hyperparameters
from model.vocab import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)



class ChannelError(ValueError):
    """A channel that is missing, empty or holds data the model cannot use; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    max_seq_len_source: int
    max_seq_len_target: int
    batch_size: int
    batch_type: str = "sentence"  # sentence | word
    bucketing_enabled: bool = True
    bucket_width: int = 10
    seed: int = 13

    @classmethod
    def from_hyperparameters(cls, hp: Hyperparameters) -> DataConfig:
        return cls(
            max_seq_len_source=hp.max_seq_len_source,
            max_seq_len_target=hp.max_seq_len_target,
            batch_size=hp.batch_size,
            batch_type=hp.batch_type,
            bucketing_enabled=hp.bucketing_enabled,
            bucket_width=hp.bucket_width,
            seed=hp.seed,
        )


@dataclass
class ParallelData:
    """Sentence pairs as flat arrays: ``src[src_offsets[i]:src_offsets[i+1]]`` is pair i's source."""

    src: np.ndarray
    src_offsets: np.ndarray
    trg: np.ndarray
    trg_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def trg_lengths(self) -> np.ndarray:
        return np.diff(self.trg_offsets)

    def source(self, i: int) -> np.ndarray:
        return self.src[self.src_offsets[i]:self.src_offsets[i + 1]]

    def target(self, i: int) -> np.ndarray:
        return self.trg[self.trg_offsets[i]:self.trg_offsets[i + 1]]

    def subset(self, indices: np.ndarray) -> ParallelData:
        """The given pairs, in that order, with the id dtype kept."""
        indices = np.asarray(indices, dtype=np.int64)
        return ParallelData(*_gather(self.src, self.src_offsets, indices),
                            *_gather(self.trg, self.trg_offsets, indices))


def _gather(ids: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = offsets[indices + 1] - offsets[indices]
    new_offsets = _offsets(lengths)
    return ids[np.arange(new_offsets[-1]) + np.repeat(offsets[indices] - new_offsets[:-1], lengths)], new_offsets


def _offsets(lengths: list[int] | np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def from_lists(src: list, trg: list) -> ParallelData:
    """Pairs held in memory (a subset, test pairs to score) in the layout a channel loads into, so that
    batching, collation and scoring treat them as they treat a channel."""
    def flat(seqs: list) -> np.ndarray:
        return np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)

    return ParallelData(flat(src), _offsets([len(s) for s in src]), flat(trg), _offsets([len(t) for t in trg]))


def channel_files(channel_dir: str | os.PathLike[str], channel: str) -> list[Path]:
    """Every ``.rec`` file of a channel, in a stable order (SageMaker may copy S3 prefixes with subfolders)."""
    root = Path(channel_dir)
    if not root.is_dir():
        raise ChannelError(f"channel '{channel}' is missing: no directory {root}")
    files = sorted(p for p in root.rglob("*.rec") if p.is_file())
    if not files:
        raise ChannelError(f"channel '{channel}' is empty: no .rec files in {root}")
    return files


def load_vocabularies(vocab_dir: str | os.PathLike[str]) -> tuple[vocab.Vocab, vocab.Vocab]:
    root = Path(vocab_dir)
    if not root.is_dir():
        raise ChannelError(f"channel '{VOCAB_CHANNEL}' is missing: no directory {root}")
    paths = [root / VOCAB_SOURCE_FILE, root / VOCAB_TARGET_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ChannelError(f"channel '{VOCAB_CHANNEL}' is incomplete: {', '.join(missing)} not found in {root}")
    return vocab.load(paths[0]), vocab.load(paths[1])


def id_dtype(vocab_size: int) -> type[np.integer]:
    """The narrowest dtype that holds every id of a vocabulary: 6M WMT pairs take 0.7 GB as uint16
    where int32 would take twice that (and int64, as per-record arrays were, four times)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


class _Column:
    """A flat array filled chunk by chunk into room reserved up front for an upper bound of its size.

    Pages of the reservation that are never written are never backed by memory, and the final shrink
    gives the tail back in place (realloc), so loading never holds the data twice, as concatenating a
    list of chunk arrays at the end would."""

    def __init__(self, capacity: int, dtype: type[np.integer]) -> None:
        self.array = np.empty(capacity, dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.array):   # only if a file grew while the channel was read
            self.array.resize(max(end, 2 * len(self.array)), refcheck=False)
        self.array[self.size:end] = values
        self.size = end

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)
        return self.array


def _first_bad_id(ids: np.ndarray, lengths: np.ndarray, keep: np.ndarray, size: int) -> tuple[int, int] | None:
    """(record index in the chunk, id) of the first id outside 0..size-1 of a kept record, if any."""
    if not len(ids) or (ids.min() >= 0 and ids.max() < size):
        return None
    bad = np.flatnonzero((ids < 0) | (ids >= size))
    record = np.searchsorted(np.cumsum(lengths), bad, side="right")
    kept = keep[record]
    if not kept.any():
        return None
    i = int(np.argmax(kept))
    return int(record[i]), int(ids[bad[i]])


def _truncated(ids: np.ndarray, lengths: np.ndarray, limit: int) -> np.ndarray:
    """The first `limit` ids of each record."""
    starts = np.cumsum(lengths) - lengths
    return ids[np.arange(len(ids)) - np.repeat(starts, lengths) < limit]


def load_channel(
    channel_dir: str | os.PathLike[str],
    channel: str,
    source_vocab_size: int,
    target_vocab_size: int,
    max_seq_len_source: int,
    max_seq_len_target: int,
) -> ParallelData:
    """All pairs of a channel, truncated to the maximum lengths; ids are checked against the vocabularies
    because an id outside the embedding would otherwise surface as an opaque index error mid-training.

    Files are decoded a chunk at a time into flat arrays of the narrowest id dtype (:func:`id_dtype`):
    starting a job on millions of pairs takes seconds, and memory holds little more than the result."""
    files = channel_files(channel_dir, channel)
    # Upper bounds (every id takes at least one byte of a file, every record at least 8), reserved, not used.
    total = sum(f.stat().st_size for f in files)
    src, trg = _Column(total, id_dtype(source_vocab_size)), _Column(total, id_dtype(target_vocab_size))
    src_offsets, trg_offsets = _Column(total // 8 + 1, np.int64), _Column(total // 8 + 1, np.int64)
    src_offsets.extend(np.zeros(1, np.int64))
    trg_offsets.extend(np.zeros(1, np.int64))
    skipped = truncated = 0
    for path in files:
        for chunk in recordio.read_pair_chunks(path):
            s_ids, s_len, t_ids, t_len = chunk.src, chunk.src_lengths, chunk.trg, chunk.trg_lengths
            keep = (s_len > 0) & (t_len > 0)
            bad = []
            for side, ids, lengths, size in (("source", s_ids, s_len, source_vocab_size),
                                             ("target", t_ids, t_len, target_vocab_size)):
                found = _first_bad_id(ids, lengths, keep, size)
                if found:
                    bad.append((*found, side, size))
            if bad:   # the first such record in file order; in a record, its source first (min is stable)
                record, bad_id, side, size = min(bad, key=lambda b: b[0])
                raise ChannelError(
                    f"channel '{channel}': {path.name} record {chunk.first + record}: {side} id {bad_id} is "
                    f"outside the {side} vocabulary (ids 0..{size - 1}); the channel and the vocab channel "
                    "do not match"
                )
            if not keep.all():
                skipped += len(keep) - int(np.count_nonzero(keep))
                s_ids, t_ids = s_ids[np.repeat(keep, s_len)], t_ids[np.repeat(keep, t_len)]
                s_len, t_len = s_len[keep], t_len[keep]
            over_s, over_t = s_len > max_seq_len_source, t_len > max_seq_len_target
            truncated += int(np.count_nonzero(over_s | over_t))
            if over_s.any():
                s_ids, s_len = _truncated(s_ids, s_len, max_seq_len_source), np.minimum(s_len, max_seq_len_source)
            if over_t.any():
                t_ids, t_len = _truncated(t_ids, t_len, max_seq_len_target), np.minimum(t_len, max_seq_len_target)
            src.extend(s_ids)
            trg.extend(t_ids)
            src_offsets.extend(src.size - len(s_ids) + np.cumsum(s_len))
            trg_offsets.extend(trg.size - len(t_ids) + np.cumsum(t_len))
            del chunk, s_ids, t_ids   # not held while the next chunk is decoded
    pairs = src_offsets.size - 1
    if not pairs:
        raise ChannelError(f"channel '{channel}' is empty: its .rec files hold no usable sentence pair")
    log.info(
        "channel %s: %d pairs (%d truncated to %d/%d tokens, %d with an empty side skipped)",
        channel, pairs, truncated, max_seq_len_source, max_seq_len_target, skipped,
    )
    return ParallelData(src.finish(), src_offsets.finish(), trg.finish(), trg_offsets.finish())


@dataclass
class Batch:
    src: torch.Tensor  # B×S int64, ends in </s>, padded with 0
    lengths: torch.Tensor  # B int64, real source tokens incl. </s>
    trg_in: torch.Tensor  # B×T int64, <s> + target
    trg_out: torch.Tensor  # B×T int64, target + </s>
    num_target_tokens: int  # real tokens of trg_out (</s> counted)

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(
            self.src.to(device, non_blocking=nb),
            self.lengths.to(device, non_blocking=nb),
            self.trg_in.to(device, non_blocking=nb),
            self.trg_out.to(device, non_blocking=nb),
            self.num_target_tokens,
        )


def collate(data: ParallelData, indices: np.ndarray) -> Batch:
    """Padded tensors for the given pairs: ``</s>`` closes the source, ``<s>`` opens the decoder input."""
    src_len = data.src_lengths[indices] + 1
    trg_len = data.trg_lengths[indices] + 1
    b = len(indices)
    src = np.full((b, int(src_len.max())), PAD_ID, dtype=np.int64)
    trg_in = np.full((b, int(trg_len.max())), PAD_ID, dtype=np.int64)
    trg_out = np.full_like(trg_in, PAD_ID)
    for row, i in enumerate(indices):
        s = data.source(i)
        t = data.target(i)
        src[row, : len(s)] = s
        src[row, len(s)] = EOS_ID
        trg_in[row, 0] = BOS_ID
        trg_in[row, 1 : len(t) + 1] = t
        trg_out[row, : len(t)] = t
        trg_out[row, len(t)] = EOS_ID
    return Batch(
        torch.from_numpy(src), torch.from_numpy(src_len.astype(np.int64)),
        torch.from_numpy(trg_in), torch.from_numpy(trg_out), int(trg_len.sum()),
    )


SENTENCE_MULTIPLE = 8  # word batches hold a multiple of this many sentences (tensor-core friendly shapes)


def _cut_sentences(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _cut_words(order: np.ndarray, trg_len: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive runs of ``order`` holding about ``budget`` real target tokens each (``</s>`` counted).

    Each batch takes the number of sentences whose tokens come closest to the budget among the two
    multiples of :data:`SENTENCE_MULTIPLE` around what fits, so a batch is never more than 8 sentences
    over it; fewer than 8 that fit (very long sentences, a tiny budget) are taken as they are, and at
    least one sentence always is. Only the epoch's last batch may be short."""
    tokens = (trg_len[order] + 1).astype(np.int64)
    cum = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(tokens, out=cum[1:])
    n, m = len(order), SENTENCE_MULTIPLE
    batches: list[np.ndarray] = []
    i = 0
    while i < n:
        fits = max(1, int(np.searchsorted(cum, cum[i] + budget, side="right")) - 1 - i)
        count = fits
        if fits >= m and i + fits < n:
            lo = fits - fits % m
            hi = lo + m
            count = lo
            if i + hi <= n and cum[i + hi] - cum[i] - budget < budget - (cum[i + lo] - cum[i]):
                count = hi
        batches.append(order[i:i + count])
        i += count
    return batches


def _cut(order: np.ndarray, data: ParallelData, config: DataConfig) -> list[np.ndarray]:
    if config.batch_type == "sentence":
        return _cut_sentences(order, config.batch_size)
    return _cut_words(order, data.trg_lengths, config.batch_size)


def _bucketed_sentence_batches(data: ParallelData, config: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """The built-in algorithm's bucketing for ``batch_type=sentence``: pairs grouped by (source bucket,
    target bucket) of ``bucket_width`` tokens, shuffled inside each bucket and cut into batches of
    ``batch_size`` sentences (each bucket's last batch may be short)."""
    w = config.bucket_width
    keys = ((data.src_lengths + w - 1) // w) * (config.max_seq_len_target + w) + (data.trg_lengths + w - 1) // w
    batches: list[np.ndarray] = []
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for bucket in np.split(order, bounds):
        batches.extend(_cut_sentences(rng.permutation(bucket), config.batch_size))
    return batches


def length_order(data: ParallelData, rng: np.random.Generator) -> np.ndarray:
    """Every pair, sorted by the longer side's length, then the target's, ties in random order.

    Cutting this order into consecutive batches pads both sides little (measured on the WMT sample with
    word batches of 2048: 8 % of target and 7 % of source positions, against 16 % of target positions
    for 2-D buckets of width 10 with their partial tail batches), and gives one short batch an epoch
    instead of one per bucket."""
    src, trg = data.src_lengths, data.trg_lengths
    perm = rng.permutation(len(data))
    key = np.maximum(src, trg)[perm].astype(np.int64) * (int(trg.max(initial=0)) + 1) + trg[perm]
    return perm[np.argsort(key, kind="stable")]


def make_batches(data: ParallelData, config: DataConfig, epoch: int) -> list[np.ndarray]:
    """One epoch's batches (index arrays), shuffled reproducibly from ``seed`` and ``epoch``.

    ``batch_type=sentence`` batches hold ``batch_size`` sentences, bucketed as the built-in algorithm does
    (:func:`_bucketed_sentence_batches`); ``word`` batches about ``batch_size`` real target tokens,
    consecutive runs of :func:`length_order` (see :func:`_cut_words`). The batches are then shuffled.
    Without bucketing the epoch is a plain shuffle cut into batches (what a naive loop does)."""
    rng = np.random.default_rng([config.seed, epoch])
    if not config.bucketing_enabled:
        return _cut(rng.permutation(len(data)), data, config)
    if config.batch_type == "sentence":
        batches = _bucketed_sentence_batches(data, config, rng)
    else:
        batches = _cut(length_order(data, rng), data, config)
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def evaluation_batches(data: ParallelData, batch_size: int) -> list[np.ndarray]:
    """Fixed batches of similar length for evaluation: order does not matter, padding does."""
    order = np.argsort(data.src_lengths * 10_000 + data.trg_lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shard(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's share of an epoch under DDP: every rank gets the same number of batches (the tail
    that does not divide evenly is dropped) so that no rank waits forever in an all-reduce."""
    usable = (len(batches) // world_size) * world_size
    return batches[rank:usable:world_size]


def padding_fraction(data: ParallelData, batches: list[np.ndarray], side: str = "target") -> float:
    """Share of a side's padded positions (``</s>`` included as real) that are padding: compute spent on
    nothing, which the length order keeps small."""
    lengths = (data.trg_lengths if side == "target" else data.src_lengths) + 1
    real = padded = 0
    for b in batches:
        lens = lengths[b]
        real += int(lens.sum())
        padded += int(lens.max()) * len(b)
    return 1.0 - real / padded if padded else 0.0


def describe_batches(data: ParallelData, batches: list[np.ndarray]) -> str:
    """What an epoch's batches hold, for the training log."""
    trg = data.trg_lengths + 1
    real = [int(trg[b].sum()) for b in batches]
    sizes = [len(b) for b in batches]
    return (f"{len(batches)} batches of {np.mean(sizes):.1f} sentences and {np.mean(real):.0f} real target "
            f"tokens on average; padding {padding_fraction(data, batches, 'source'):.1%} of source and "
            f"{padding_fraction(data, batches, 'target'):.1%} of target positions")


def length_ratio(data: ParallelData) -> tuple[float, float]:
    """Mean and standard deviation of (target + 1) / (source + 1) over the pairs (``</s>`` counted on both
    sides, after truncation): what decoding's per-sentence length limit is made from, as in Sockeye."""
    ratio = (data.trg_lengths + 1) / (data.src_lengths + 1)
    return float(ratio.mean()), float(ratio.std())
