"""Training data from the SageMaker channels: reading, checking, truncating, bucketing, batching.

The channels are the built-in algorithm's (DESIGN §3): ``train/`` and ``validation/`` hold any number of
RecordIO-protobuf ``.rec`` files (ours or AWS's ``create_vocab_proto.py``'s), ``vocab/`` the two JSON
vocabularies. Pairs are held as flat numpy arrays (ids + offsets), not Python lists, so millions of pairs
fit in a few hundred MB; batches are index arrays into them, collated to padded tensors on demand.

Bucketing groups sentences of similar (source, target) length so that a batch is mostly real tokens:
that, not the model, is where most of the built-in algorithm's speed on real data comes from.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import recordio, vocab
from model.hyperparameters import Hyperparameters
from model.vocab import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)

TRAIN, VALIDATION, VOCAB = "train", "validation", "vocab"
VOCAB_SOURCE_FILE, VOCAB_TARGET_FILE = "vocab.src.json", "vocab.trg.json"


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
        src = [self.source(i) for i in indices]
        trg = [self.target(i) for i in indices]
        return _from_lists(src, trg)


def _offsets(lengths: list[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _from_lists(src: list, trg: list) -> ParallelData:
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
        raise ChannelError(f"channel '{VOCAB}' is missing: no directory {root}")
    paths = [root / VOCAB_SOURCE_FILE, root / VOCAB_TARGET_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ChannelError(f"channel '{VOCAB}' is incomplete: {', '.join(missing)} not found in {root}")
    return vocab.load(paths[0]), vocab.load(paths[1])


def load_channel(
    channel_dir: str | os.PathLike[str],
    channel: str,
    source_vocab_size: int,
    target_vocab_size: int,
    max_seq_len_source: int,
    max_seq_len_target: int,
) -> ParallelData:
    """All pairs of a channel, truncated to the maximum lengths; ids are checked against the vocabularies
    because an id outside the embedding would otherwise surface as an opaque index error mid-training."""
    src: list[np.ndarray] = []
    trg: list[np.ndarray] = []
    skipped = truncated = 0
    for path in channel_files(channel_dir, channel):
        for n, (s, t) in enumerate(recordio.read_pairs(path)):
            if not s or not t:
                skipped += 1
                continue
            s_arr = np.asarray(s, dtype=np.int64)
            t_arr = np.asarray(t, dtype=np.int64)
            for side, arr, size in (("source", s_arr, source_vocab_size), ("target", t_arr, target_vocab_size)):
                bad = (arr < 0) | (arr >= size)
                if bad.any():
                    raise ChannelError(
                        f"channel '{channel}': {path.name} record {n}: {side} id {int(arr[bad][0])} is outside "
                        f"the {side} vocabulary (ids 0..{size - 1}); the channel and the vocab channel do not match"
                    )
            if len(s_arr) > max_seq_len_source or len(t_arr) > max_seq_len_target:
                truncated += 1
            src.append(s_arr[:max_seq_len_source].astype(np.int32))
            trg.append(t_arr[:max_seq_len_target].astype(np.int32))
    if not src:
        raise ChannelError(f"channel '{channel}' is empty: its .rec files hold no usable sentence pair")
    log.info(
        "channel %s: %d pairs (%d truncated to %d/%d tokens, %d with an empty side skipped)",
        channel, len(src), truncated, max_seq_len_source, max_seq_len_target, skipped,
    )
    return _from_lists(src, trg)


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


def _chunk(indices: np.ndarray, trg_len: np.ndarray, config: DataConfig) -> list[np.ndarray]:
    """Split an ordered index list into batches: ``batch_size`` sentences, or for ``batch_type=word``
    as many sentences as keep the padded target size (rows × longest) within ``batch_size`` tokens."""
    if config.batch_type == "sentence":
        return [indices[i:i + config.batch_size] for i in range(0, len(indices), config.batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    for pos, i in enumerate(indices):
        longest_with = max(longest, int(trg_len[i]) + 1)
        if pos > start and longest_with * (pos - start + 1) > config.batch_size:
            batches.append(indices[start:pos])
            start, longest_with = pos, int(trg_len[i]) + 1
        longest = longest_with
    if start < len(indices):
        batches.append(indices[start:])
    return batches


def make_batches(data: ParallelData, config: DataConfig, epoch: int) -> list[np.ndarray]:
    """One epoch's batches (index arrays), shuffled reproducibly from ``seed`` and ``epoch``.

    With bucketing, pairs are grouped by (source bucket, target bucket) of ``bucket_width`` tokens,
    shuffled inside each bucket, cut into batches, and the batches shuffled; without it the epoch is a
    plain shuffle cut into batches (what a naive loop does)."""
    rng = np.random.default_rng([config.seed, epoch])
    trg_len = data.trg_lengths
    if not config.bucketing_enabled:
        return _chunk(rng.permutation(len(data)), trg_len, config)
    w = config.bucket_width
    keys = ((data.src_lengths + w - 1) // w) * (config.max_seq_len_target + w) + (trg_len + w - 1) // w
    batches: list[np.ndarray] = []
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for bucket in np.split(order, bounds):
        batches.extend(_chunk(rng.permutation(bucket), trg_len, config))
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


def iterate(data: ParallelData, batches: list[np.ndarray], start: int = 0) -> Iterator[Batch]:
    for indices in batches[start:]:
        yield collate(data, indices)


def padding_fraction(data: ParallelData, batches: list[np.ndarray]) -> float:
    """Share of target positions that are padding: what bucketing saves."""
    trg = data.trg_lengths + 1
    real = padded = 0
    for b in batches:
        lens = trg[b]
        real += int(lens.sum())
        padded += int(lens.max()) * len(b)
    return 1.0 - real / padded if padded else 0.0


def num_batches_estimate(n: int, config: DataConfig, mean_target_len: float) -> int:
    if config.batch_type == "sentence":
        return math.ceil(n / config.batch_size)
    return max(1, math.ceil(n * (mean_target_len + 1) / config.batch_size))
