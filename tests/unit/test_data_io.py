"""Channels → pairs → batches: what the trainer is fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model import data_io, recordio, vocab
from model.data_io import ChannelError, DataConfig

pytest.importorskip("torch")


def write_rec(path, pairs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for s, t in pairs:
            f.write(recordio.frame(recordio.encode_record(s, t)))
    return path


def random_pairs(n, seed=0, max_len=30, vocab_size=50):
    rng = np.random.default_rng(seed)
    return [(rng.integers(4, vocab_size, rng.integers(1, max_len)).tolist(),
             rng.integers(4, vocab_size, rng.integers(1, max_len)).tolist()) for _ in range(n)]


def load(tmp_path, pairs, **kw):
    write_rec(tmp_path / "train" / "a.rec", pairs)
    args = {"source_vocab_size": 50, "target_vocab_size": 50, "max_seq_len_source": 100, "max_seq_len_target": 100}
    args.update(kw)
    return data_io.load_channel(tmp_path / "train", "train", **args)


def test_missing_and_empty_channels_are_named(tmp_path):
    with pytest.raises(ChannelError, match="channel 'train' is missing"):
        data_io.channel_files(tmp_path / "train", "train")
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "notes.txt").write_text("x")
    with pytest.raises(ChannelError, match=r"channel 'validation' is empty: no \.rec"):
        data_io.channel_files(tmp_path / "validation", "validation")
    write_rec(tmp_path / "train" / "empty.rec", [])
    with pytest.raises(ChannelError, match=r"channel 'train' is empty: its \.rec files hold no usable"):
        data_io.load_channel(tmp_path / "train", "train", 10, 10, 5, 5)


def test_reads_every_rec_file_in_order_including_subfolders(tmp_path):
    write_rec(tmp_path / "train" / "b.rec", [([7], [8])])
    write_rec(tmp_path / "train" / "a.rec", [([5, 6], [9])])
    write_rec(tmp_path / "train" / "part" / "c.rec", [([10], [11, 12])])
    data = data_io.load_channel(tmp_path / "train", "train", 20, 20, 10, 10)
    assert [data.source(i).tolist() for i in range(len(data))] == [[5, 6], [7], [10]]
    assert [data.target(i).tolist() for i in range(len(data))] == [[9], [8], [11, 12]]


def test_ids_outside_the_vocabulary_name_file_record_and_side(tmp_path):
    with pytest.raises(ChannelError, match=r"a\.rec record 1: target id 50 is outside the target vocabulary"):
        load(tmp_path, [([4], [5]), ([4], [50])])


def test_corrupt_rec_names_file_and_offset(tmp_path):
    path = write_rec(tmp_path / "train" / "a.rec", [([4, 5], [6])])
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(recordio.RecordIOError, match=r"a\.rec"):
        data_io.load_channel(tmp_path / "train", "train", 10, 10, 5, 5)


def test_truncation_and_blank_sides(tmp_path):
    data = load(tmp_path, [(list(range(4, 40)), list(range(4, 30))), ([], [5]), ([6], [7])],
                max_seq_len_source=10, max_seq_len_target=5)
    assert len(data) == 2
    assert data.source(0).tolist() == list(range(4, 14))
    assert data.target(0).tolist() == list(range(4, 9))


def test_collate_adds_eos_to_source_and_bos_eos_to_target(tmp_path):
    data = load(tmp_path, [([4, 5, 6], [7, 8]), ([9], [10, 11, 12])])
    b = data_io.collate(data, np.array([0, 1]))
    assert b.src.tolist() == [[4, 5, 6, 3], [9, 3, 0, 0]]
    assert b.lengths.tolist() == [4, 2]
    assert b.trg_in.tolist() == [[2, 7, 8, 0], [2, 10, 11, 12]]
    assert b.trg_out.tolist() == [[7, 8, 3, 0], [10, 11, 12, 3]]
    assert b.num_target_tokens == 7


@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("batch_type,batch_size", [("sentence", 16), ("word", 200)])
def test_epoch_covers_every_pair_once_and_is_seeded(tmp_path, bucketing, batch_type, batch_size):
    data = load(tmp_path, random_pairs(500))
    cfg = DataConfig(100, 100, batch_size, batch_type, bucketing, 10, seed=3)
    epoch0 = data_io.make_batches(data, cfg, 0)
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(500))
    again = data_io.make_batches(data, cfg, 0)
    assert all((a == b).all() for a, b in zip(epoch0, again))
    epoch1 = data_io.make_batches(data, cfg, 1)
    assert [b.tolist() for b in epoch1] != [b.tolist() for b in epoch0]
    other_seed = data_io.make_batches(data, DataConfig(100, 100, batch_size, batch_type, bucketing, 10, seed=4), 0)
    assert [b.tolist() for b in other_seed] != [b.tolist() for b in epoch0]
    if batch_type == "sentence":
        assert max(len(b) for b in epoch0) <= batch_size
    else:  # about the budget of real target tokens, never more than 8 sentences over it
        trg = data.trg_lengths + 1
        longest = int(trg.max())
        assert all(trg[b].sum() <= batch_size + 8 * longest for b in epoch0)


def sample_lengths(max_len=60):
    """The bundled WMT sample's training pairs as id sequences of their real (whitespace) lengths."""
    root = Path(__file__).resolve().parents[2] / "pipeline_tasks" / "sample_data" / "wmt-toy-ende"
    en = (root / "train.en").read_text(encoding="utf-8").splitlines()
    de = (root / "train.de").read_text(encoding="utf-8").splitlines()
    return data_io.from_lists([[4] * min(len(a.split()), max_len) for a in en],
                               [[4] * min(len(b.split()), max_len) for b in de])


def test_word_batches_are_filled_to_the_real_token_budget_on_wmt_text():
    data = sample_lengths()
    cfg = DataConfig(60, 60, 2048, "word", seed=13)
    batches = data_io.make_batches(data, cfg, 0)
    trg = data.trg_lengths + 1
    real = np.array([trg[b].sum() for b in batches])
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(data)))
    # Every batch but the epoch's last holds a multiple of 8 sentences; on average the budget is met.
    assert sum(len(b) % 8 != 0 for b in batches) <= 1
    assert abs(real.mean() - 2048) < 0.03 * 2048
    assert real.max() <= 2048 + 8 * 61
    # Both sides pad little: under 10 % each (2-D width-10 buckets, cut bucket by bucket with a short batch
    # in each, left 16 % of target positions padding on this text).
    assert data_io.padding_fraction(data, batches, "target") < 0.10
    assert data_io.padding_fraction(data, batches, "source") < 0.10
    assert "real target tokens" in data_io.describe_batches(data, batches)


def test_bucketing_cuts_padding(tmp_path):
    data = load(tmp_path, random_pairs(2000, max_len=60, seed=1))
    plain = data_io.make_batches(data, DataConfig(100, 100, 32, bucketing_enabled=False), 0)
    bucketed = data_io.make_batches(data, DataConfig(100, 100, 32, bucket_width=10), 0)
    for side in ("source", "target"):
        assert data_io.padding_fraction(data, bucketed, side) < 0.5 * data_io.padding_fraction(data, plain, side)
    # within a bucket every target length falls in the same width-10 band
    for b in bucketed:
        t = data.trg_lengths[b]
        assert ((t + 9) // 10).min() == ((t + 9) // 10).max()
    # word batches are runs of the length order instead: their longer sides span a token or so
    words = data_io.make_batches(data, DataConfig(100, 100, 600, "word"), 0)
    longer = np.maximum(data.src_lengths, data.trg_lengths)
    assert np.mean([int(longer[b].max() - longer[b].min()) for b in words]) <= 1.0
    assert data_io.padding_fraction(data, words, "target") < 0.5 * data_io.padding_fraction(data, plain, "target")


def test_shard_gives_every_rank_the_same_number_of_distinct_batches():
    batches = [np.array([i]) for i in range(11)]
    shards = [data_io.shard(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    seen = [int(b[0]) for s in shards for b in s]
    assert len(set(seen)) == 9


def test_vocab_channel_files_are_required(tmp_path):
    (tmp_path / "vocab").mkdir()
    vocab.save({"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}, tmp_path / "vocab" / "vocab.src.json")
    with pytest.raises(ChannelError, match=r"channel 'vocab' is incomplete: vocab\.trg\.json"):
        data_io.load_vocabularies(tmp_path / "vocab")
    with pytest.raises(ChannelError, match="channel 'vocab' is missing"):
        data_io.load_vocabularies(tmp_path / "nothing")
