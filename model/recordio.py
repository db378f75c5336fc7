"""RecordIO framing (MXNet/dmlc) and the seq2seq Record payload (docs/ARCHITECTURE.md §3, fixed contract).

Framing, per record: uint32 magic 0xCED7230A, uint32 length word (bits 0-28 length, bits 29-31
continuation flag), payload, zero padding to a multiple of 4. Little-endian.

The encoder writes the protobuf wire format by hand: building one `Record` message per sentence
pair in Python is what makes AWS's converter slow, and the bytes of a packed int32 list are just the
concatenated varints of its ids, which can be precomputed per vocabulary entry. Decoding one record
goes through the protobuf runtime (`record_pb2`), so any conforming writer's records are read; loading a
channel (:func:`read_pair_chunks`) reads the layout every known writer produces with numpy, many records
at a time, and hands every other record to the protobuf runtime.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NamedTuple

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
MAX_RECORD_BYTES = _LENGTH_MASK
_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")



class RecordIOError(ValueError):
    """A malformed RecordIO file; the message names the file and the byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


# --- varints -----------------------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (negative int32 would need 10 bytes)."""
    if value < 0:
        raise ValueError(f"varint of a negative value {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = tuple(encode_varint(i) for i in range(1 << 14))


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < 16384 else encode_varint(value)


class _Memo(dict):
    """int -> bytes, computed on first use. Header bytes depend only on a length, and the lengths
    that occur are few, so per-record work shrinks to dictionary lookups."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, n: int) -> bytes:
        value = self[n] = self._make(n)
        return value


def _frame_header(n: int) -> bytes:
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"record of {n} bytes exceeds the RecordIO limit of {MAX_RECORD_BYTES}")
    return MAGIC_BYTES + _U32.pack(n)


FRAME_HEADERS = _Memo(_frame_header)   # payload length -> magic + length word (flag 0)


def frame(payload: bytes) -> bytes:
    """One whole record (flag 0) with its header and padding."""
    n = len(payload)
    return b"".join((FRAME_HEADERS[n], payload, PADDING[n & 3]))


def iter_frames(f: BinaryIO, path: str = "<stream>", block_size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, payload) for each record, joining multi-part records as dmlc does.

    Reads in blocks so that memory stays bounded whatever the file size, and checks every header:
    a wrong magic, a truncated header, payload or padding, or a broken multi-part sequence raises
    RecordIOError with the offset of the offending header.
    """
    for offset, _, payload in _iter_frames_ends(f, path, block_size):
        yield offset, payload


def _iter_frames_ends(f: BinaryIO, path: str, block_size: int, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(offset, end, payload) of each record from `f`'s current position, which is byte `start` of the
    file: the end (offset after the record's last part and padding) lets a caller resume elsewhere."""
    buf = b""
    pos = start      # position of buf[0] in the file
    i = 0            # read cursor inside buf
    eof = False
    parts: list[bytes] = []
    record_start = 0

    def fill(need: int) -> bool:
        nonlocal buf, pos, i, eof
        while len(buf) - i < need and not eof:
            chunk = f.read(max(block_size, need))
            if not chunk:
                eof = True
                break
            buf = buf[i:] + chunk
            pos += i
            i = 0
        return len(buf) - i >= need

    while True:
        if not fill(8):
            if len(buf) - i:
                raise RecordIOError(path, pos + i, f"truncated record header ({len(buf) - i} of 8 bytes)")
            if parts:
                raise RecordIOError(path, record_start, "multi-part record is missing its last part")
            return
        offset = pos + i
        magic, word = _HEADER.unpack_from(buf, i)
        if magic != MAGIC:
            raise RecordIOError(path, offset, f"bad magic 0x{magic:08X} (expected 0x{MAGIC:08X})")
        flag, length = word >> 29, word & _LENGTH_MASK
        padded = (length + 3) & ~3
        if not fill(8 + padded):
            have = len(buf) - i - 8
            raise RecordIOError(path, offset,
                                f"truncated record: header says {length} bytes (+{padded - length} padding), "
                                f"file has {have}")
        payload = buf[i + 8:i + 8 + length]
        i += 8 + padded
        if flag == 0:
            if parts:
                raise RecordIOError(path, offset, "whole record inside an unfinished multi-part record")
            yield offset, pos + i, payload
        elif flag == 1:
            if parts:
                raise RecordIOError(path, offset, "multi-part record starts inside another")
            record_start = offset
            parts = [payload]
        elif flag in (2, 3):
            if not parts:
                raise RecordIOError(path, offset, f"continuation part (flag {flag}) without a first part")
            parts.append(payload)
            if flag == 3:
                # dmlc drops the magic number where it splits a record; put it back between parts.
                yield record_start, pos + i, MAGIC_BYTES.join(parts)
                parts = []
        else:
            raise RecordIOError(path, offset, f"bad continuation flag {flag}")


def read_payloads(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of every record of a file."""
    p = os.fspath(path)
    with open(p, "rb") as f:
        yield from iter_frames(f, p)


# --- the seq2seq Record ------------------------------------------------------------------------

def _entry_header(prefix: bytes):
    def make(n_ids: int) -> bytes:
        """Bytes of one `features` map entry up to its ids, given the ids' varint byte length."""
        tensor_len = 1 + len(_varint(n_ids)) + n_ids if n_ids else 0     # Int32Tensor { values = 1 packed }
        value_len = 1 + len(_varint(tensor_len)) + tensor_len            # Value { int32_tensor = 7 }
        entry_len = len(prefix) + len(_varint(value_len)) + value_len    # entry { key = 1; value = 2 }
        head = b"\x0a" + _varint(entry_len) + prefix + _varint(value_len) + b"\x3a" + _varint(tensor_len)
        return head + b"\x0a" + _varint(n_ids) if n_ids else head      # empty packed field: omitted
    return make


SOURCE_HEADERS = _Memo(_entry_header(b"\x0a\x06source\x12"))  # ids byte length -> entry header
TARGET_HEADERS = _Memo(_entry_header(b"\x0a\x06target\x12"))



def record_from_varints(source_varints: bytes, target_varints: bytes) -> bytes:
    """Serialised Record with features source/target, given each side's concatenated id varints."""
    return b"".join((SOURCE_HEADERS[len(source_varints)], source_varints,
                     TARGET_HEADERS[len(target_varints)], target_varints))


def encode_record(source_ids: Sequence[int], target_ids: Sequence[int]) -> bytes:
    """Serialised Record for one sentence pair of token ids."""
    return record_from_varints(b"".join(map(_varint, source_ids)), b"".join(map(_varint, target_ids)))


def decode_record(payload: bytes) -> tuple[list[int], list[int]]:
    """(source ids, target ids) of a serialised Record, through the protobuf runtime."""
    from model import record_pb2

    rec = record_pb2.Record.FromString(payload)
    out = []
    for name in ("source", "target"):
        if name not in rec.features:
            raise ValueError(f"record has no features[{name!r}]")
        value = rec.features[name]
        if value.WhichOneof("value") != "int32_tensor":
            raise ValueError(f"features[{name!r}] is {value.WhichOneof('value')}, expected int32_tensor")
        out.append(list(value.int32_tensor.values))
    return out[0], out[1]


def _decode_at(payload: bytes, path: str, offset: int) -> tuple[list[int], list[int]]:
    try:
        return decode_record(payload)
    except Exception as e:  # protobuf's DecodeError and our own checks alike
        raise RecordIOError(path, offset, f"record is not a valid seq2seq Record: {e}") from None


def read_pairs(path: str | os.PathLike[str]) -> Iterator[tuple[list[int], list[int]]]:
    """Every (source ids, target ids) of a seq2seq `.rec` file, with errors naming file and offset.

    One protobuf message per record: the reference reader, and fast enough for tools; the trainer loads
    channels with :func:`read_pair_chunks`, which gives the same pairs."""
    p = os.fspath(path)
    for offset, payload in read_payloads(p):
        yield _decode_at(payload, p, offset)


# --- many records at once ----------------------------------------------------------------------
#
# The trainer reads millions of records; one protobuf message and a few small arrays per record cap that
# at about 30k records/s. Records are found and decoded here a chunk of the file at a time with numpy
# instead: the frame headers by checking that the aligned magic numbers chain from one record to the
# next, the payloads by parsing, at every record at once, the layout our writer and the protobuf runtime
# (AWS's create_vocab_proto.py) produce: two `features` entries, each
# `0a <len> 0a 06 "source" 12 <len> 3a <len> [0a <len> <packed id varints>]` (an empty side has no ids
# field), "source" first from our writer, "target" first from the runtime. Whatever does not fit exactly
# (a multi-part record, other fields, unpacked or negative ids, garbage) goes through iter_frames' checks
# and decode_record one record at a time, so results and errors are those of read_pairs.

CHUNK_BYTES = 1 << 20   # bytes of a file decoded at a time: temporaries take ~12x that; 1-4 MiB run alike
_PAD = 16               # zero bytes after a chunk's data, so that reads at clamped positions stay inside
_KEY_POSITIONS = np.arange(9)
_SOURCE_KEY = np.frombuffer(b"\x0a\x06source\x12", np.uint8)   # map entry: key = 1 "source", value = 2
_TARGET_KEY = np.frombuffer(b"\x0a\x06target\x12", np.uint8)
_INT32_MAX = (1 << 31) - 1


class PairChunk(NamedTuple):
    """Consecutive records of one file as flat arrays: record ``first + i``'s source ids are
    ``src[sum(src_lengths[:i]):][:src_lengths[i]]``. Ids are any integer dtype (int64 where a record went
    through protobuf, whose int32 ids may be negative)."""

    first: int               # number of the chunk's first record in its file (0-based)
    src: np.ndarray
    src_lengths: np.ndarray  # int64, ids per record
    trg: np.ndarray
    trg_lengths: np.ndarray


def read_pair_chunks(path: str | os.PathLike[str], chunk_bytes: int | None = None) -> Iterator[PairChunk]:
    """The pairs of a seq2seq `.rec` file, in file order, as flat arrays a chunk at a time: what
    :func:`read_pairs` gives, and the same RecordIOError for a malformed file, raised only after every
    record before the bad one has been yielded; memory stays bounded by `chunk_bytes` (default
    CHUNK_BYTES) whatever the file's size."""
    p = os.fspath(path)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    first = 0
    buf = np.empty(chunk_bytes + _PAD, np.uint8)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = 0
        while start < size:
            f.seek(start)
            n = f.readinto(memoryview(buf)[:min(chunk_bytes, size - start)])
            buf[n:n + _PAD] = 0
            heads, lengths, end = _whole_records(buf, n)
            if len(heads):
                yield from _decode_chunk(buf[:n + _PAD], heads, lengths, p, start, first)
                first += len(heads)
                start += end
                continue
            # A record the chain does not reach (see _whole_records): one record, fully checked.
            f.seek(start)
            found = next(_iter_frames_ends(f, p, 4096, start), None)
            if found is None:   # the file shrank while being read
                return
            offset, start, payload = found
            s, t = _decode_at(payload, p, offset)
            yield PairChunk(first, np.array(s, np.int64), np.array([len(s)]), np.array(t, np.int64),
                            np.array([len(t)]))
            first += 1


def _whole_records(buf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets and payload lengths of the whole records that open ``buf[:n]``, and where the last ends.

    Every record starts at a 4-byte aligned offset with the magic number, so the candidates are the
    aligned words equal to it; a payload may hold the magic too, so a candidate counts only while each
    header's length leads exactly to the next candidate (then every candidate up to there is on the
    chain of headers from offset 0, and nothing is skipped). The first break -- a header that is not
    flag 0 (multi-part), a payload holding an aligned magic, a bad magic, the chunk's end -- ends the
    run; a record nothing reaches (none at all at offset 0) is left to the caller's checked reader."""
    words = buf[:n & ~3].view("<u4")
    heads = np.flatnonzero(words == MAGIC)
    if not len(heads) or heads[0] != 0:
        return heads[:0], heads[:0], 0
    at = heads + 1
    word = words[np.minimum(at, len(words) - 1)].astype(np.int64)
    lengths = word & _LENGTH_MASK
    following = heads * 4 + 8 + ((lengths + 3) & ~3)
    whole = (at < len(words)) & (word >> 29 == 0)
    linked = whole[:-1] & (following[:-1] == heads[1:] * 4)
    m = int(np.argmin(linked)) if len(linked) and not linked.all() else len(heads) - 1
    if m == len(heads) - 1 and whole[m] and following[m] == n:   # the last one ends exactly at the chunk's end
        m += 1
    return heads[:m] * 4, lengths[:m], int(following[m - 1]) if m else 0


def _varints_at(b: np.ndarray, pos: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, position after it, ok) of the varint of at most 5 bytes at each position. Positions are
    clamped to `limit` so that garbage lengths cannot index outside `b`; such records fail later checks."""
    pos = np.minimum(pos, limit)
    x = b[pos]
    value = (x & 0x7F).astype(np.int64)
    more = x >= 0x80
    after = pos + 1
    for k in range(1, 5):
        if not more.any():
            break
        x = b[pos + k]
        value |= ((x & 0x7F).astype(np.int64) << (7 * k)) * more
        after += more
        more &= x >= 0x80
    return value, after, ~more


def _entry(b: np.ndarray, pos: np.ndarray, ok: np.ndarray, limit: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One canonical `features` entry at each position: (ids start, ids byte length, entry end, whether
    its key is "target" rather than "source"). Clears `ok` where the bytes are anything else; every tag,
    length and end position is checked, so an ok entry lies inside its record and its ids are exactly
    the packed field protobuf would read."""
    ok &= b[np.minimum(pos, limit)] == 0x0A
    entry_len, p, v = _varints_at(b, pos + 1, limit)
    ok &= v
    end = p + entry_len
    key = b[np.minimum(p, limit)[:, None] + _KEY_POSITIONS]
    is_target = (key == _TARGET_KEY).all(axis=1)
    ok &= is_target | (key == _SOURCE_KEY).all(axis=1)
    value_len, p, v = _varints_at(b, p + 9, limit)
    ok &= v & (p + value_len == end)
    ok &= b[np.minimum(p, limit)] == 0x3A                      # Value.int32_tensor
    tensor_len, p, v = _varints_at(b, p + 1, limit)
    ok &= v & (p + tensor_len == end)
    packed = tensor_len > 0                                   # an empty side has no values field
    tag = b[np.minimum(p, limit)] == 0x0A                     # Int32Tensor.values, packed
    nbytes, q, v = _varints_at(b, p + 1, limit)
    last = b[np.minimum(q + nbytes - 1, limit)] < 0x80        # the ids end with a varint's last byte
    ok &= ~packed | (tag & v & (q + nbytes == end) & last)
    return np.where(packed, q, p), np.where(packed, nbytes, 0), end, is_target


def _packed_varints(b: np.ndarray, pos: np.ndarray, length: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode the varints of the byte ranges ``b[pos:pos + length]`` (disjoint, ascending, each ending
    with a varint's last byte): (values, count per range, ranges holding an id that is no int32 >= 0 in
    at most 5 bytes, e.g. a negative one, which protobuf must decode)."""
    ends = pos + length
    gaps = pos - np.concatenate([[0], ends[:-1]])
    inside = np.repeat(np.tile(np.array([False, True]), len(pos)), np.stack([gaps, length], axis=1).ravel())
    stream = b[:len(inside)][inside]                                   # the ranges' bytes, concatenated
    del inside
    ends = np.flatnonzero(stream < 0x80).astype(np.int32)             # a byte < 0x80 ends a varint
    width = ends.copy()                                                # bytes of each varint (6: more than 5)
    width[1:] -= ends[:-1]
    width[:1] += 1
    width = np.minimum(width, 6, out=width).astype(np.int8)
    cum = np.cumsum(length).astype(np.int32)
    counts = np.diff(np.searchsorted(ends, cum), prepend=0)
    widest = int(width.max(initial=0))
    dtype = np.uint32 if widest <= 4 else np.int64                     # 4 bytes hold 28 bits
    values = (stream[ends] & 0x7F).astype(dtype)                       # the last byte is the top 7 bits
    for j in range(1, min(widest, 5)):   # Horner, towards the first byte; masking beats selecting here
        low = stream[ends - j]               # (a negative index wraps around: masked out below)
        low &= 0x7F
        values = np.where(width > j, (values << dtype(7)) | low, values)
    if widest <= 4:
        return values, counts, cum[:0]
    bad = np.flatnonzero((width > 5) | (values > _INT32_MAX))
    return values, counts, np.unique(np.searchsorted(cum, ends[bad], side="right"))


def _decode_chunk(b: np.ndarray, heads: np.ndarray, lengths: np.ndarray, path: str, base: int, first: int
                  ) -> Iterator[PairChunk]:
    """The pairs of whole records at `heads` (offsets in `b`, which starts at file offset `base`)."""
    starts = heads + 8
    limit = len(b) - _PAD
    ok = np.ones(len(heads), np.bool_)
    # Two entries, "source" and "target" in either order: the protobuf runtime (AWS's script) writes
    # map entries in the order of its hash table, target first for these two keys.
    a_pos, a_len, p, a_target = _entry(b, starts, ok, limit)
    b_pos, b_len, p, b_target = _entry(b, p, ok, limit)
    ok &= (p == starts + lengths) & (a_target != b_target)
    while True:
        good = np.flatnonzero(ok)
        pos = np.stack([a_pos[good], b_pos[good]], axis=1).ravel()     # in file order
        size = np.stack([a_len[good], b_len[good]], axis=1).ravel()
        values, counts, bad = _packed_varints(b, pos, size)
        if not len(bad):
            break
        ok[good[bad // 2]] = False                                     # to protobuf, and decode again
    is_target = np.repeat(np.stack([a_target[good], b_target[good]], axis=1).ravel(), counts)
    src, trg = values[~is_target], values[is_target]
    counts = counts.reshape(-1, 2)
    target_first = a_target[good]
    src_lengths = np.zeros(len(heads), np.int64)
    trg_lengths = np.zeros(len(heads), np.int64)
    src_lengths[good] = np.where(target_first, counts[:, 1], counts[:, 0])
    trg_lengths[good] = np.where(target_first, counts[:, 0], counts[:, 1])
    if ok.all():
        yield PairChunk(first, src, src_lengths, trg, trg_lengths)
        return

    others: dict[int, tuple[list[int], list[int]]] = {}
    error = None
    stop = len(heads)
    for q in np.flatnonzero(~ok).tolist():
        try:
            others[q] = _decode_at(bytes(b[starts[q]:starts[q] + lengths[q]]), path, base + int(heads[q]))
        except RecordIOError as e:
            error, stop = e, q
            break
        src_lengths[q], trg_lengths[q] = len(others[q][0]), len(others[q][1])
    src = _splice(src, src_lengths[:stop], ok[:stop], {q: s for q, (s, _) in others.items()})
    trg = _splice(trg, trg_lengths[:stop], ok[:stop], {q: t for q, (_, t) in others.items()})
    if stop:
        yield PairChunk(first, src, src_lengths[:stop], trg, trg_lengths[:stop])
    if error is not None:
        raise error


def _splice(fast: np.ndarray, lengths: np.ndarray, ok: np.ndarray, others: dict[int, list[int]]) -> np.ndarray:
    """Ids of records [0, len(lengths)) in order: the vectorised ones' from `fast`, the rest from `others`."""
    out = np.empty(int(lengths.sum()), np.int64)
    in_fast = np.repeat(ok, lengths)
    out[in_fast] = fast[:np.count_nonzero(in_fast)]
    offsets = np.cumsum(lengths) - lengths
    for q, ids in others.items():
        if q < len(lengths):
            out[offsets[q]:offsets[q] + len(ids)] = ids
    return out
