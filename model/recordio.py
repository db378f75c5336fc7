"""RecordIO framing (MXNet/dmlc) and the seq2seq Record payload (docs/ARCHITECTURE.md §3, fixed contract).

Framing, per record: uint32 magic 0xCED7230A, uint32 length word (bits 0-28 length, bits 29-31
continuation flag), payload, zero padding to a multiple of 4. Little-endian.

The encoder writes the protobuf wire format by hand: building one `Record` message per sentence
pair in Python is what makes AWS's converter slow, and the bytes of a packed int32 list are just the
concatenated varints of its ids, which can be precomputed per vocabulary entry. Decoding goes through
the protobuf runtime (`record_pb2`), so any conforming writer's records are read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

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
    buf = b""
    pos = 0          # position of buf[0] in the file
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
            yield offset, payload
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
                yield record_start, MAGIC_BYTES.join(parts)
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


def read_pairs(path: str | os.PathLike[str]) -> Iterator[tuple[list[int], list[int]]]:
    """Every (source ids, target ids) of a seq2seq `.rec` file, with errors naming file and offset."""
    p = os.fspath(path)
    for offset, payload in read_payloads(p):
        try:
            yield decode_record(payload)
        except Exception as e:  # protobuf's DecodeError and our own checks alike
            raise RecordIOError(p, offset, f"record is not a valid seq2seq Record: {e}") from None
