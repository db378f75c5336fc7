"""Loading channels with the vectorised reader (recordio.read_pair_chunks, data_io.load_channel): the same
pairs and the same errors as one protobuf message per record (the loader it replaced, kept as the
benchmark's baseline), on real text and on every layout a conforming writer may produce."""

from __future__ import annotations

import itertools
import logging
import re
import struct

import numpy as np
import pytest

from benchmarks.bench_channel_loading import protobuf_load_channel
from model import data_io, record_pb2, recordio
from model.data_io import ChannelError
from model.recordio import MAGIC, MAGIC_BYTES, RecordIOError, encode_record, encode_varint, frame
from tests.conftest import SAMPLE

torch = pytest.importorskip("torch")

# The default, a few records a chunk, a size that is no multiple of 4, smaller than most records.
CHUNK_SIZES = [None, 4096, 997, 64, 12]
BIG = 2**31   # a vocabulary size under which every int32 id >= 0 is valid


# --- helpers -----------------------------------------------------------------------------------

def chunk_pairs(path, chunk_bytes=None):
    return list(chunk_pair_iter(path, chunk_bytes))


def chunk_pair_iter(path, chunk_bytes):
    """read_pair_chunks' pairs as lists, checking the chunks' own bookkeeping on the way."""
    n = 0
    for c in recordio.read_pair_chunks(path, chunk_bytes):
        assert c.first == n
        assert len(c.src_lengths) == len(c.trg_lengths)
        assert c.src_lengths.sum() == len(c.src) and c.trg_lengths.sum() == len(c.trg)
        s = np.concatenate([[0], np.cumsum(c.src_lengths)])
        t = np.concatenate([[0], np.cumsum(c.trg_lengths)])
        for i in range(len(c.src_lengths)):
            yield c.src[s[i]:s[i + 1]].tolist(), c.trg[t[i]:t[i + 1]].tolist()
            n += 1


def reader_outcome(pairs):
    """The pairs an iterator gives before it stops, and its RecordIOError's message if it raised one."""
    got = []
    try:
        for p in pairs:
            got.append((list(p[0]), list(p[1])))
    except RecordIOError as e:
        return got, str(e)
    return got, None


def assert_reads_like_protobuf(path):
    expected = reader_outcome(recordio.read_pairs(path))
    for cb in CHUNK_SIZES:
        assert reader_outcome(chunk_pair_iter(path, cb)) == expected, cb
    return expected


def load_outcome(load, channel_dir, vocab=(BIG, BIG), max_len=(1000, 1000)):
    """A loader's pairs, or its error's type and message."""
    try:
        data = load(channel_dir, "train", *vocab, *max_len)
    except (RecordIOError, ChannelError) as e:
        return type(e).__name__, str(e)
    return [(data.source(i).tolist(), data.target(i).tolist()) for i in range(len(data))]


def assert_loads_like_protobuf(channel_dir, vocab=(BIG, BIG), max_len=(1000, 1000)):
    new = load_outcome(data_io.load_channel, channel_dir, vocab, max_len)
    assert new == load_outcome(protobuf_load_channel, channel_dir, vocab, max_len)
    return new


def write_rec(path, payloads=(), raw=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(frame(p) for p in payloads) + raw)
    return path


def varints(ids) -> bytes:
    return b"".join(encode_varint(i) for i in ids)


def packed(ids) -> bytes:
    """Int32Tensor bytes with `ids` as the packed values field (nothing for no ids, as protobuf writes)."""
    data = varints(ids)
    return b"\x0a" + encode_varint(len(data)) + data if ids else b""


def entry(key: str, tensor: bytes, pad_lengths: bool = False, pad_key: bool = False) -> bytes:
    """One `features` map entry whose Value is an Int32Tensor of the given bytes; `pad_lengths` writes the
    entry's and the value's lengths, `pad_key` the key's, as 2-byte varints (valid protobuf, not what
    writers emit)."""
    def length(n: int, pad: bool) -> bytes:
        return bytes([n | 0x80, 0]) if pad and n < 128 else encode_varint(n)
    value = b"\x3a" + length(len(tensor), pad_lengths) + tensor
    body = b"\x0a" + length(len(key), pad_key) + key.encode() + b"\x12" + length(len(value), pad_lengths) + value
    return b"\x0a" + length(len(body), pad_lengths) + body


def runtime_record(src, trg, label: bool = False, **fields) -> bytes:
    """A Record serialised by the protobuf runtime, as AWS's create_vocab_proto.py writes them."""
    rec = record_pb2.Record(**fields)
    rec.features["source"].int32_tensor.values.extend(src)
    rec.features["target"].int32_tensor.values.extend(trg)
    if label:
        rec.label["score"].float32_tensor.values.append(0.5)
    return rec.SerializeToString()


def frame_flags(data: bytes) -> list[int]:
    flags, i = [], 0
    while i < len(data):
        word = struct.unpack_from("<I", data, i + 4)[0]
        flags.append(word >> 29)
        n = word & ((1 << 29) - 1)
        i += 8 + n + (-n % 4)
    return flags


def dmlc_frames(payload: bytes) -> bytes:
    """The frames dmlc's RecordIOWriter writes: the payload is split at each 4-byte aligned magic number,
    which is dropped; flags 1, 2, ..., 3 (0 when there is none)."""
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES]
    if not cuts:
        return frame(payload)
    parts, prev = [], 0
    for c in cuts:
        parts.append(payload[prev:c])
        prev = c + 4
    parts.append(payload[prev:])
    flags = [1] + [2] * (len(parts) - 2) + [3]
    return b"".join(struct.pack("<II", MAGIC, f << 29 | len(p)) + p + b"\0" * (-len(p) % 4)
                    for f, p in zip(flags, parts))


MAGIC_IDS = [10, 35, 26455]   # varints 0a 23 d7 ce 01: the magic number's bytes, then 0x01


def record_holding_magic(times: int) -> bytes:
    """A valid Record whose payload holds the magic number at `times` 4-byte aligned offsets."""
    for lead in range(4):
        for gap in range(4):
            ids = [4] * lead + (MAGIC_IDS + [5] * gap) * times
            payload = encode_record(ids, [6, 7])
            found = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES]
            if len(found) == times:
                return payload
    raise AssertionError("no alignment found")


# --- real text ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_channels(tmp_path_factory):
    from pipeline_tasks.channels import make_channels

    out = tmp_path_factory.mktemp("sample") / "channels"
    make_channels(str(SAMPLE / "train.en"), str(SAMPLE / "train.de"), str(SAMPLE / "val.en"),
                  str(SAMPLE / "val.de"), out)
    return out


def test_sample_channels_read_as_protobuf_reads_them(sample_channels):
    for split in ("train", "validation"):
        (path,) = (sample_channels / split).glob("*.rec")
        pairs, error = assert_reads_like_protobuf(path)
        assert error is None and len(pairs) > 2000
        ids = np.array([i for s, t in pairs for i in s + t])
        # one, two and three byte varints all occur, many times
        assert min((ids < 128).sum(), ((ids >= 128) & (ids < 16384)).sum(), (ids >= 16384).sum()) > 1000


def test_sample_channel_loads_as_before_into_uint16(sample_channels, caplog):
    src_vocab, trg_vocab = data_io.load_vocabularies(sample_channels / "vocab")
    sizes = (len(src_vocab), len(trg_vocab))
    with caplog.at_level(logging.INFO, logger="model.data_io"):
        data = data_io.load_channel(sample_channels / "train", "train", *sizes, 20, 15)
    old = protobuf_load_channel(sample_channels / "train", "train", *sizes, 20, 15)
    assert data.src.dtype == data.trg.dtype == np.uint16
    assert data.src_offsets.dtype == data.trg_offsets.dtype == np.int64
    for name in ("src", "src_offsets", "trg", "trg_offsets"):
        np.testing.assert_array_equal(getattr(data, name), getattr(old, name))
    (path,) = (sample_channels / "train").glob("*.rec")
    pairs = list(recordio.read_pairs(path))
    truncated = sum(len(s) > 20 or len(t) > 15 for s, t in pairs)
    assert 0 < truncated < len(pairs) == len(data)
    assert f"{len(pairs)} pairs ({truncated} truncated to 20/15 tokens, 0 with an empty side skipped)" in caplog.text
    assert data.src.nbytes == 2 * data.src_offsets[-1]   # nothing held beyond the ids


def test_channels_written_by_the_protobuf_runtime_take_the_fast_path(tmp_path, monkeypatch):
    """AWS's converter writes through the protobuf runtime, whose map order ("source" or "target" first)
    changes from one process to the next: both are read without it."""
    from benchmarks import aws_baseline

    aws_baseline.make_channels(*(str(SAMPLE / n) for n in ("train.en", "train.de", "val.en", "val.de")), str(tmp_path))
    (path,) = (tmp_path / "train").glob("*.rec")
    expected = list(recordio.read_pairs(path))
    calls = []
    real = recordio.decode_record
    monkeypatch.setattr(recordio, "decode_record", lambda p: calls.append(p) or real(p))
    assert chunk_pairs(path) == [(list(s), list(t)) for s, t in expected]
    assert calls == []


# --- every layout --------------------------------------------------------------------------------

EDGE_IDS = [0, 3, 4, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**31 - 1]


def test_every_varint_width_empty_sides_and_truncation(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [(EDGE_IDS, EDGE_IDS[::-1]), ([], [5]), ([6], []), ([], []), ([127, 128], [16384])]
    for _ in range(300):   # ids of every width, sides of 0 to 70 ids
        width = rng.integers(1, 6, size=(2, 70))
        ids = (rng.integers(0, 2**31, size=(2, 70)) >> (31 - np.minimum(7 * width, 31))).tolist()
        pairs.append((ids[0][:rng.integers(0, 70)], ids[1][:rng.integers(0, 70)]))
    path = write_rec(tmp_path / "train" / "a.rec", [encode_record(s, t) for s, t in pairs])
    assert assert_reads_like_protobuf(path) == (pairs, None)
    loaded = assert_loads_like_protobuf(tmp_path / "train", max_len=(20, 30))
    kept = [(s[:20], t[:30]) for s, t in pairs if s and t]
    assert loaded == kept and len(kept) < len(pairs)
    data = data_io.load_channel(tmp_path / "train", "train", BIG, BIG, 20, 30)
    assert data.src.dtype == data.trg.dtype == np.int32


def test_other_layouts_are_read_through_protobuf(tmp_path, monkeypatch):
    s, t = [4, 300, 70000], [5, 16384]
    fast = [   # (payload, its source)
        (encode_record(s, t), s),
        (entry("target", packed(t)) + entry("source", packed(s)), s),      # the runtime's order
        (runtime_record(s, t), s),
        (entry("source", packed(s), pad_lengths=True) + entry("target", packed(t), pad_lengths=True), s),
        (entry("source", b"\x0a\x00") + entry("target", packed(t)), []),   # an empty packed field, written
    ]
    slow = [   # (payload, the source protobuf reads from it)
        (runtime_record(s, t, uid="pair-7"), s),
        (runtime_record(s, t, metadata="m"), s),
        (runtime_record(s, t, label=True), s),
        (entry("source", packed(s), pad_key=True) + entry("target", packed(t)), s),   # key length in 2 bytes
        (entry("source", b"".join(b"\x08" + encode_varint(i) for i in s)) + entry("target", packed(t)), s),  # unpacked
        (entry("source", packed(s) + b"\x1a\x01\x03") + entry("target", packed(t)), s),   # with a shape
        (entry("source", b"\x12\x01\x00" + packed(s)) + entry("target", packed(t)), s),   # keys before values
        (entry("source", packed([9])) + encode_record(s, t), s),             # source twice: the last one counts
        (encode_record(s, t) + entry("other", packed([1])), s),              # a third feature
        (entry("source", packed(s)) + entry("target", packed(t)) + entry("source", packed([8])), [8]),
        (entry("source", packed(s) + packed([11])) + entry("target", packed(t)), [*s, 11]),   # values in two runs
        (entry("source", b"\x0a\x06" + varints([2**32 - 1]) + b"\x04") + entry("target", packed(t)), [-1, 4]),
        (entry("source", b"\x0a\x0b" + b"\x80" * 9 + b"\x00\x04") + entry("target", packed(t)), [0, 4]),  # 10 bytes
    ]
    payloads = [p for pair in zip([p for p, _ in slow], itertools.cycle([p for p, _ in fast])) for p in pair]
    payloads += [p for p, _ in fast]
    path = write_rec(tmp_path / "train" / "a.rec", payloads)
    expected, error = assert_reads_like_protobuf(path)
    assert error is None
    sources = dict(fast + slow)
    assert expected == [(sources[p], t) for p in payloads]   # protobuf's view of each
    calls = []
    real = recordio.decode_record
    monkeypatch.setattr(recordio, "decode_record", lambda p: calls.append(p) or real(p))
    assert chunk_pairs(path) == expected
    assert calls == [p for p, _ in slow]   # exactly the records that are not in a writer's layout, in order
    assert_loads_like_protobuf(tmp_path / "train")
    only_slow = write_rec(tmp_path / "other" / "b.rec", [p for p, _ in slow])   # a chunk with no fast record
    assert assert_reads_like_protobuf(only_slow) == ([(src, t) for _, src in slow], None)


def test_multi_part_records_and_magic_numbers_inside_payloads(tmp_path):
    once, twice = record_holding_magic(1), record_holding_magic(2)
    split = dmlc_frames(twice)
    assert frame_flags(split) == [1, 2, 3] and frame_flags(dmlc_frames(once)) == [1, 3]
    plain = [encode_record([4 + i], [5, 6 + i]) for i in range(5)]
    data = (frame(plain[0]) + split + frame(plain[1]) + frame(once) + frame(twice) + frame(plain[2])
            + dmlc_frames(once) + frame(plain[3]) + frame(plain[4]))
    path = tmp_path / "train" / "a.rec"
    path.parent.mkdir()
    path.write_bytes(data)
    pairs, error = assert_reads_like_protobuf(path)
    assert error is None and len(pairs) == 9
    assert pairs[1] == pairs[4] == recordio.decode_record(twice)
    assert_loads_like_protobuf(tmp_path / "train")


# --- malformed channels --------------------------------------------------------------------------

GOOD = [encode_record([4, 5, 300], [6]), encode_record([7], [8, 20000]), runtime_record([9, 10], [11]),
        encode_record([12] * 40, [13] * 3), encode_record([14], [15])]


def _frames(payloads):
    return [frame(p) for p in payloads]


def _with_header(f: bytes, magic: int = MAGIC, word: int | None = None) -> bytes:
    length = struct.unpack_from("<I", f, 4)[0]
    return struct.pack("<II", magic, length if word is None else word) + f[8:]


MALFORMED = {
    "bad magic": (lambda f: f[0] + f[1] + _with_header(f[2], 0xDEADBEEF) + f[3],
                  r"a\.rec: byte offset \d+: bad magic 0xDEADBEEF"),
    "length past the end": (lambda f: f[0] + _with_header(f[1], word=1000) + f[2],
                            r"a\.rec: byte offset \d+: truncated record: header says 1000 bytes"),
    "length into the next record": (lambda f: f[0] + _with_header(f[1], word=len(f[1]) - 8 + 4) + f[2] + f[3],
                                    r"a\.rec: byte offset 44: record is not a valid seq2seq Record"),
    "bad continuation flag": (lambda f: f[0] + _with_header(f[1], word=5 << 29 | len(f[1]) - 8),
                              "bad continuation flag 5"),
    "continuation without a start": (lambda f: f[0] + _with_header(f[1], word=3 << 29 | len(f[1]) - 8),
                                     r"continuation part \(flag 3\) without a first part"),
    "first part without the last": (lambda f: f[0] + f[1] + _with_header(f[2], word=1 << 29 | len(f[2]) - 8),
                                    "multi-part record is missing its last part"),
    "whole record inside a multi-part": (
        lambda f: f[0] + _with_header(f[1], word=1 << 29 | len(f[1]) - 8) + f[2],
        "whole record inside an unfinished multi-part record"),
    "not a Record": (lambda f: f[0] + frame(b"\xff\xff\xff\xff") + f[1],
                     r"a\.rec: byte offset \d+: record is not a valid seq2seq Record"),
    "no target": (lambda f: f[0] + frame(entry("source", packed([4]))) + f[1],
                  r"record is not a valid seq2seq Record: record has no features\['target'\]"),
    "source twice, no target": (lambda f: f[0] + frame(entry("source", packed([4])) + entry("source", packed([5]))),
                                r"byte offset \d+: record is not a valid seq2seq Record: record has no features"),
    "float tensor": (lambda f: f[0] + frame(record_pb2.Record(features={
        "source": record_pb2.Value(float32_tensor=record_pb2.Float32Tensor(values=[1.0])),
        "target": record_pb2.Value(int32_tensor=record_pb2.Int32Tensor(values=[4]))}).SerializeToString()),
        "features\\['source'\\] is float32_tensor"),
    "id outside the vocabulary": (lambda f: f[0] + f[1] + frame(encode_record([4], [50])) + f[2],
                                  r"channel 'train': a\.rec record 2: target id 50 is outside the target vocabulary "
                                  r"\(ids 0\.\.49\)"),
    "negative id": (lambda f: f[0] + frame(runtime_record([-5], [4])),
                    r"a\.rec record 1: source id -5 is outside the source vocabulary"),
    "an id past int32": (lambda f: f[0] + frame(entry("source", b"\x0a\x05" + varints([2**32 - 7]))
                                                + entry("target", packed([4]))),
                         r"a\.rec record 1: source id -7 is outside"),
    "both sides bad: source reported": (lambda f: f[0] + frame(encode_record([60], [70])),
                                        "record 1: source id 60"),
    "bad id before garbage": (lambda f: f[0] + frame(encode_record([4], [99])) + frame(b"\x01\x02") + f[1],
                              "record 1: target id 99"),
    "garbage before a bad id": (lambda f: f[0] + frame(b"\x01\x02") + frame(encode_record([4], [99])),
                                r"byte offset \d+: record is not a valid seq2seq Record"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_channels_fail_as_before_naming_file_and_place(tmp_path, case):
    make, message = MALFORMED[case]
    good = [encode_record([4, 5, 30], [6]), encode_record([7], [8, 20]), runtime_record([9, 10], [11]),
            encode_record([12] * 40, [13] * 3)]
    path = tmp_path / "train" / "a.rec"
    path.parent.mkdir()
    path.write_bytes(make(_frames(good)))
    assert_reads_like_protobuf(path)
    outcome = assert_loads_like_protobuf(tmp_path / "train", vocab=(50, 50))
    assert isinstance(outcome, tuple), "loaded without an error"
    kind, text = outcome
    assert kind == ("ChannelError" if "outside" in text else "RecordIOError")
    assert re.search(message, text), text


def test_bad_ids_in_a_skipped_pair_are_not_an_error(tmp_path):
    write_rec(tmp_path / "train" / "a.rec", [encode_record([], [99]), encode_record([98], []),
                                             encode_record([4, 5], [6])])
    assert assert_loads_like_protobuf(tmp_path / "train", vocab=(50, 50)) == [([4, 5], [6])]


def test_truncated_files_at_every_length(tmp_path):
    data = b"".join(_frames(GOOD))
    path = tmp_path / "train" / "a.rec"
    path.parent.mkdir()
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        _, error = assert_reads_like_protobuf(path)
        assert (error is None) == (cut in np.cumsum([len(f) for f in _frames(GOOD)]))
        if error:
            assert "a.rec: byte offset" in error and "truncated" in error


def test_mutated_files_load_exactly_as_the_protobuf_loader_does(tmp_path):
    """Random damage anywhere in a file of every kind of record: same pairs or the same error."""
    rng = np.random.default_rng(7)
    base = (b"".join(_frames(GOOD)) + dmlc_frames(record_holding_magic(2)) + frame(record_holding_magic(1))
            + frame(entry("target", packed([4, 200])) + entry("source", packed([16400])))
            + frame(encode_record([], [5]))
            + frame(runtime_record([6, 7], [8], uid="u")) + b"".join(_frames(GOOD[::-1])))
    path = tmp_path / "train" / "a.rec"
    path.parent.mkdir()
    outcomes = set()
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.integers(1, 3)):
            i = int(rng.integers(0, len(data)))
            kind = rng.integers(0, 4)
            if kind == 0:
                data[i] = int(rng.integers(0, 256))
            elif kind == 1:
                data[i] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x3A]))
            elif kind == 2:
                del data[i:i + int(rng.integers(1, 9))]
            else:
                data[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8))
        path.write_bytes(bytes(data))
        assert_reads_like_protobuf(path)
        result = assert_loads_like_protobuf(tmp_path / "train", vocab=(30000, 30000))
        outcomes.add(result[0] if isinstance(result, tuple) else "loaded")
    assert outcomes == {"loaded", "RecordIOError", "ChannelError"}   # the damage covered every outcome


# --- compact storage -------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size,dtype", [(65536, np.uint16), (65537, np.int32)])
def test_ids_are_held_in_the_narrowest_dtype_and_collated_as_int64(tmp_path, vocab_size, dtype):
    top = vocab_size - 1
    pairs = [([top, 4], [top]), ([5, 6, 7], [8, 9]), ([top - 1], [10, 11, 12, top])]
    write_rec(tmp_path / "train" / "a.rec", [encode_record(s, t) for s, t in pairs])
    data = data_io.load_channel(tmp_path / "train", "train", vocab_size, vocab_size, 10, 10)
    assert data.src.dtype == data.trg.dtype == dtype
    assert [(data.source(i).tolist(), data.target(i).tolist()) for i in range(3)] == pairs
    b = data_io.collate(data, np.array([1, 0]))
    assert b.src.dtype == b.trg_in.dtype == b.trg_out.dtype == b.lengths.dtype == torch.int64
    assert b.src.tolist() == [[5, 6, 7, 3], [top, 4, 3, 0]]
    assert b.trg_in.tolist() == [[2, 8, 9], [2, top, 0]]
    assert b.trg_out.tolist() == [[8, 9, 3], [top, 3, 0]]
    sub = data.subset(np.array([2, 0, 2]))
    assert sub.src.dtype == dtype
    assert [(sub.source(i).tolist(), sub.target(i).tolist()) for i in range(3)] == [pairs[2], pairs[0], pairs[2]]
    assert data_io.length_ratio(data) == data_io.length_ratio(data_io.from_lists(*zip(*pairs)))


def test_a_column_grows_past_its_reservation():
    """The reservation is an upper bound from the file sizes; a file that grew meanwhile still loads."""
    column = data_io._Column(3, np.uint16)
    for part in ([1, 2], [3, 4, 5], [], [6]):
        column.extend(np.array(part))
    out = column.finish()
    assert out.tolist() == [1, 2, 3, 4, 5, 6] and out.dtype == np.uint16


def test_evaluation_on_uint16_data_equals_int32(tmp_path):
    """Scoring reads pairs through collate and ``data.target(i)`` (BLEU's references): same numbers."""
    from model.checkpoint_decoder import evaluate_bleu, evaluate_likelihood
    from model.hyperparameters import parse_hyperparameters
    from model.model import build_model

    rng = np.random.default_rng(3)
    pairs = [(rng.integers(4, 40, rng.integers(1, 9)).tolist(), rng.integers(4, 40, rng.integers(1, 9)).tolist())
             for _ in range(24)]
    write_rec(tmp_path / "train" / "a.rec", [encode_record(s, t) for s, t in pairs])
    compact = data_io.load_channel(tmp_path / "train", "train", 40, 40, 10, 10)
    wide = data_io.from_lists(*zip(*pairs))
    assert compact.src.dtype == np.uint16 and wide.src.dtype == np.int32
    hp = parse_hyperparameters({"rnn_num_hidden": "16", "num_embed_source": "8", "num_embed_target": "8",
                                "max_seq_len_source": "10", "max_seq_len_target": "10", "beam_size": "2"})
    torch.manual_seed(0)
    model = build_model(hp, 40, 40)
    tokens = [f"w{i}" for i in range(40)]
    cpu = torch.device("cpu")
    assert evaluate_likelihood(model, compact, 8, cpu, hp.precision) == evaluate_likelihood(model, wide, 8, cpu,
                                                                                             hp.precision)
    indices = np.arange(0, 24, 2)
    assert evaluate_bleu(model, compact, indices, hp, tokens, cpu) == evaluate_bleu(model, wide, indices, hp, tokens,
                                                                                    cpu)
