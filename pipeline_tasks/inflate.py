"""Decompression with limits: a gzip bomb (1 MB that inflates to 1 GiB, or 1 TB) is refused at the limit,
never inflated in full.

Two limits. The expansion ratio (decompressed bytes per compressed byte of the file): text compresses
10-20x, so 200x means the input is not text (a bomb, or zeros). The total decompressed size over one
step, for archives that are honest about their ratio but too big to be real. Both count bytes as they
come out of the decompressor, so the check costs nothing and the error comes after at most one chunk
past the limit; neither trusts sizes an archive declares.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_TOTAL = 64 << 30
# Outputs up to this size are never refused for their ratio: a tiny, repetitive file can compress
# 300x and is harmless.
RATIO_FLOOR = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
_MAGICS: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (GZIP_MAGIC, lambda f: gzip.GzipFile(fileobj=f, mode="rb")),  # type: ignore[arg-type, return-value]
    (b"BZh", lambda f: bz2.BZ2File(f)),  # type: ignore[arg-type, return-value]
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),  # type: ignore[arg-type, return-value]  # noqa: SIM115
)


class DecompressionLimitError(ValueError):
    """A compressed input expands past a limit (a decompression bomb, or a limit set too low)."""

    def __init__(self, message: str, path: str, written: int) -> None:
        super().__init__(message)
        self.path, self.written = path, written


class CorruptCompressedError(ValueError):
    """A compressed input that cannot be decompressed (truncated, or not what its name says)."""


@dataclass
class Budget:
    """The total decompressed bytes one step may produce, shared by all of its files."""

    limit: int | None = DEFAULT_MAX_TOTAL
    used: int = 0
    how_to_raise: str = ""

    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.used

    def refuse(self, name: str, written: int, what: str) -> DecompressionLimitError:
        return DecompressionLimitError(
            f"{name}: {what} passes the limit of {self.limit} decompressed bytes in total (stopped after "
            f"{written} bytes of this file); no real corpus needs more{self.how_to_raise}", name, written)


def ratio_limit(compressed_size: int, max_ratio: float | None) -> int | None:
    """The most bytes a file of `compressed_size` may expand to under `max_ratio` (None: no limit)."""
    if not max_ratio:
        return None
    return max(int(max_ratio * compressed_size), RATIO_FLOOR)


class LimitedReader(io.RawIOBase):
    """A decompressing stream that counts what comes out and raises once a limit is passed.

    `name` is what errors call the file; `how_to_raise` ends the ratio error (the flag or setting that
    raises the limit). Closing it closes `inner` and everything in `also_close`.
    """

    def __init__(self, inner: BinaryIO, name: str, compressed_size: int, max_ratio: float | None,
                 budget: Budget | None = None, how_to_raise: str = "", also_close: tuple = ()) -> None:
        super().__init__()
        self.inner, self.name, self.compressed_size = inner, name, compressed_size
        self.max_ratio, self.budget, self.how_to_raise = max_ratio, budget, how_to_raise
        self.limit = ratio_limit(compressed_size, max_ratio)
        self.written = 0
        self._also_close = also_close

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            n = self.inner.readinto(b)  # type: ignore[attr-defined]
        except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            raise CorruptCompressedError(f"{self.name}: corrupt or truncated compressed data after {self.written} "
                                         f"decompressed bytes ({e})") from e
        self.written += n
        if self.limit is not None and self.written > self.limit:
            raise DecompressionLimitError(
                f"{self.name}: expands more than {self.max_ratio:g}x ({self.compressed_size} compressed bytes, "
                f"stopped after {self.written} decompressed bytes): a decompression bomb, or not text (text "
                f"compresses 10-20x){self.how_to_raise}", self.name, self.written)
        if self.budget is not None:
            self.budget.used += n
            remaining = self.budget.remaining()
            if remaining is not None and remaining < 0:
                raise self.budget.refuse(self.name, self.written, "decompressing it")
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self.inner.close()
                for f in self._also_close:
                    f.close()
            finally:
                super().close()


def compression_of(f: io.BufferedReader) -> Callable[[BinaryIO], BinaryIO] | None:
    """The decompressor for an open file's format (gzip, bzip2, xz, by magic bytes), or None."""
    head = f.peek(6)[:6]
    for magic, opener in _MAGICS:
        if head.startswith(magic):
            return opener
    return None


def open_limited(path: str | os.PathLike[str], name: str | None = None, max_ratio: float | None = DEFAULT_MAX_RATIO,
                 budget: Budget | None = None, how_to_raise: str = "",
                 formats: str = "any") -> tuple[BinaryIO, bool]:
    """Open `path` for reading, decompressed (with the limits) when it is compressed; (stream, compressed).

    `formats`: "any" (gzip, bzip2, xz) or "gzip". An uncompressed file is returned as it is.
    """
    p = os.fspath(path)
    f = open(p, "rb")  # noqa: SIM115 -- returned to the caller
    try:
        opener = compression_of(f)
        if opener is None or (formats == "gzip" and not f.peek(2).startswith(GZIP_MAGIC)):
            return f, False  # type: ignore[return-value]
        size = os.fstat(f.fileno()).st_size
        inner = opener(f)
        return LimitedReader(inner, name or p, size, max_ratio, budget, how_to_raise, also_close=(f,)), True  # type: ignore[return-value]
    except BaseException:
        f.close()
        raise
