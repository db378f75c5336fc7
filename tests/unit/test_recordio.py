"""RecordIO framing and the Record payload, byte by byte, plus decoding with the protobuf runtime."""

from __future__ import annotations

import io
import struct

import pytest

from model import record_pb2, recordio
from model.recordio import MAGIC, RecordIOError


def _frames(data: bytes):
    return list(recordio.iter_frames(io.BytesIO(data), "mem.rec", block_size=7))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 8, 13])
def test_frame_header_padding_and_length_word(n):
    payload = bytes(range(1, n + 1))
    framed = recordio.frame(payload)
    magic, word = struct.unpack_from("<II", framed)
    assert magic == 0xCED7230A
    assert word == n                       # flag bits 29-31 are 0: a whole record
    assert framed[8:8 + n] == payload
    assert len(framed) % 4 == 0
    assert framed[8 + n:] == b"\0" * ((4 - n % 4) % 4)   # padding is zeros, not counted in the length
    assert _frames(framed) == [(0, payload)]


def test_magic_is_little_endian_on_disk():
    assert recordio.frame(b"x")[:4] == bytes([0x0A, 0x23, 0xD7, 0xCE])


def test_record_bytes_decode_with_protobuf_runtime():
    payload = recordio.encode_record([4, 5, 127, 128, 300, 16384, 2**21 + 7], [9, 3])
    rec = record_pb2.Record.FromString(payload)
    assert list(rec.features["source"].int32_tensor.values) == [4, 5, 127, 128, 300, 16384, 2**21 + 7]
    assert list(rec.features["target"].int32_tensor.values) == [9, 3]
    assert set(rec.features) == {"source", "target"} and not rec.label


def test_record_bytes_equal_protobuf_serialisation_of_each_entry():
    """Our hand-written bytes are the protobuf wire format: compare with the runtime's own encoding."""
    ids = list(range(0, 3000, 7))
    ours = recordio.encode_record(ids, [5])
    rec = record_pb2.Record()
    rec.features["source"].int32_tensor.values.extend(ids)
    rec.features["target"].int32_tensor.values.extend([5])
    # Map entries may be serialised in either order by the runtime: compare as parsed messages
    # and check that our bytes re-serialise deterministically to the same thing.
    assert record_pb2.Record.FromString(ours) == rec
    assert rec.SerializeToString(deterministic=True) == ours


def test_empty_side_is_a_present_but_empty_tensor():
    rec = record_pb2.Record.FromString(recordio.encode_record([], [7]))
    assert rec.features["source"].WhichOneof("value") == "int32_tensor"
    assert list(rec.features["source"].int32_tensor.values) == []


def test_decode_record_rejects_wrong_value_type():
    rec = record_pb2.Record()
    rec.features["source"].float32_tensor.values.append(1.0)
    rec.features["target"].int32_tensor.values.append(4)
    with pytest.raises(ValueError, match="float32_tensor"):
        recordio.decode_record(rec.SerializeToString())


def test_bad_magic_names_offset(tmp_path):
    good = recordio.frame(b"abcd")
    bad = struct.pack("<II", 0xDEADBEEF, 4) + b"wxyz"
    p = tmp_path / "bad.rec"
    p.write_bytes(good + bad)
    with pytest.raises(RecordIOError) as e:
        list(recordio.read_payloads(p))
    assert e.value.offset == len(good)
    assert str(p) in str(e.value) and "byte offset 12" in str(e.value) and "bad magic" in str(e.value)


@pytest.mark.parametrize("cut", [1, 5, 9, 11])
def test_truncated_file_names_offset(tmp_path, cut):
    data = recordio.frame(b"first!") + recordio.frame(b"second record")
    p = tmp_path / "t.rec"
    p.write_bytes(data[:-cut])
    with pytest.raises(RecordIOError, match="truncated") as e:
        list(recordio.read_payloads(p))
    assert e.value.offset == len(recordio.frame(b"first!"))


def test_multi_part_records_are_joined_with_the_magic():
    """dmlc splits a record at each aligned magic number and drops it; the reader puts it back."""
    magic = struct.pack("<I", MAGIC)
    whole = b"AAAA" + magic + b"BBBBBBBB" + magic + b"CC"
    parts = [(1, b"AAAA"), (2, b"BBBBBBBB"), (3, b"CC")]
    data = b"".join(struct.pack("<II", MAGIC, (flag << 29) | len(p)) + p + b"\0" * (-len(p) % 4)
                    for flag, p in parts)
    data += recordio.frame(b"next")
    assert _frames(data) == [(0, whole), (len(data) - 12, b"next")]


def test_multi_part_without_end_is_an_error():
    data = struct.pack("<II", MAGIC, (1 << 29) | 4) + b"AAAA"
    with pytest.raises(RecordIOError, match="missing its last part"):
        _frames(data)


def test_continuation_without_start_is_an_error():
    data = struct.pack("<II", MAGIC, (3 << 29) | 4) + b"AAAA"
    with pytest.raises(RecordIOError, match="without a first part"):
        _frames(data)


def test_garbage_payload_is_reported_with_offset(tmp_path):
    p = tmp_path / "g.rec"
    p.write_bytes(recordio.frame(recordio.encode_record([4], [5])) + recordio.frame(b"\xff\xff\xff\xff"))
    with pytest.raises(RecordIOError, match="not a valid seq2seq Record") as e:
        list(recordio.read_pairs(p))
    assert e.value.offset == len(recordio.frame(recordio.encode_record([4], [5])))


def test_proto_descriptor_matches_the_contract():
    """Field numbers and types of docs/ARCHITECTURE.md §3, read from the shipped generated module."""
    d = record_pb2.Record.DESCRIPTOR
    assert d.full_name == "aialgs.data.Record"
    assert {f.name: f.number for f in d.fields} == {
        "features": 1, "label": 2, "uid": 3, "metadata": 4, "configuration": 5}
    v = record_pb2.Value.DESCRIPTOR
    assert {f.name: f.number for f in v.fields} == {
        "float32_tensor": 2, "float64_tensor": 3, "int32_tensor": 7, "bytes": 9}
    t = record_pb2.Int32Tensor.DESCRIPTOR
    assert {f.name: f.number for f in t.fields} == {"values": 1, "keys": 2, "shape": 3}
    assert all(f.is_packed for f in t.fields)
    b = record_pb2.Bytes.DESCRIPTOR
    assert {f.name: f.number for f in b.fields} == {"value": 1, "content_type": 2}


def test_varint_matches_protobuf():
    for v in (0, 1, 127, 128, 255, 16383, 16384, 2**21, 2**28, 2**31 - 1):
        t = record_pb2.Int32Tensor(values=[v])
        # packed field: tag, length, varint
        assert t.SerializeToString()[2:] == recordio.encode_varint(v)
