"""Reading parallel text: UTF-8 with invalid bytes replaced and counted, lines ending at '\\n'.

Lines are split on '\\n' only (what `wc -l` and `head -n` count), so a stray '\\r' inside a line never
shifts the alignment between the two sides; a trailing '\\r\\n' is treated as one line end. Files
ending in .gz (or starting with the gzip magic) are decompressed on the fly, streaming, and refused
once they expand more than 200x (pipeline_tasks/inflate.py): streaming keeps memory flat, but a
bomb's endless "line" would still be read into memory whole, and a bomb of short lines would make
every step downstream write gigabytes. `WMT_PIPELINE_MAX_EXPANSION_RATIO` raises the limit (0: none).

A UTF-8 byte-order mark at the start of a file (Windows editors write one) is not text: it would
become part of the first token ("\ufeffResumption", an unknown word). open_binary drops it, below
any decompression, so every reader of every step gets the same bytes; it is counted per file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

from pipeline_tasks.inflate import DEFAULT_MAX_RATIO, open_limited
from pipeline_tasks.inflate import DecompressionLimitError as DecompressionLimitError  # raised by the readers

log = logging.getLogger(__name__)

RATIO_ENV = "WMT_PIPELINE_MAX_EXPANSION_RATIO"
_READ_BUFFER = 1 << 20

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
REPLACEMENT_CHAR = "\ufffd"
_REPLACEMENT_BYTES = REPLACEMENT_CHAR.encode("utf-8")
BLOCK_LINES = 20_000
MAX_REPORTED_BAD_LINES = 10


class MisalignedError(ValueError):
    """The two sides of a parallel corpus have different line counts."""

    def __init__(self, source: str, source_lines: int, target: str, target_lines: int) -> None:
        super().__init__(f"parallel files are misaligned: {source} has {source_lines} lines but "
                         f"{target} has {target_lines} lines")
        self.source, self.source_lines, self.target, self.target_lines = source, source_lines, target, target_lines


class EmptyInputError(ValueError):
    """An input that must hold text has none."""


@dataclass
class TextStats:
    """What reading one file found: line count, invalid UTF-8 replaced (with the first line numbers), and
    whether a leading byte-order mark was removed."""

    path: str
    lines: int = 0
    replaced_chars: int = 0
    bad_lines: list[int] = field(default_factory=list)
    bom_stripped: bool = False

    def add_replacements(self, line_no: int, n: int) -> None:
        self.replaced_chars += n
        if len(self.bad_lines) < MAX_REPORTED_BAD_LINES:
            self.bad_lines.append(line_no)

    def merge(self, other: TextStats) -> None:
        self.lines += other.lines
        self.replaced_chars += other.replaced_chars
        self.bom_stripped |= other.bom_stripped
        room = MAX_REPORTED_BAD_LINES - len(self.bad_lines)
        self.bad_lines.extend(other.bad_lines[:max(room, 0)])

    def warn_if_replaced(self) -> None:
        """Log what was changed in the text read: a removed byte-order mark, replaced invalid UTF-8."""
        if self.bom_stripped:
            log.info("%s: UTF-8 byte-order mark at the start removed (it is not text)", self.path)
        if self.replaced_chars:
            log.warning("%s: %d invalid UTF-8 sequence(s) replaced by U+FFFD (first at line(s) %s)",
                        self.path, self.replaced_chars, ", ".join(map(str, self.bad_lines)))

    def as_dict(self) -> dict:
        return {"path": self.path, "lines": self.lines, "replaced_chars": self.replaced_chars,
                "bad_lines": list(self.bad_lines), "bom_stripped": self.bom_stripped}


def max_expansion_ratio() -> float | None:
    """The ratio limit for gzip input: WMT_PIPELINE_MAX_EXPANSION_RATIO, else 200 (0: no limit)."""
    text = os.environ.get(RATIO_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RATIO
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{RATIO_ENV}={text!r}: not a number") from None
    if value < 0:
        raise ValueError(f"{RATIO_ENV}={text!r}: must be >= 0 (0: no limit)")
    return value or None


def open_binary(path: str | os.PathLike[str], stats: TextStats | None = None) -> BinaryIO:
    """Open for binary reading, transparently gunzipping gzip files (detected by magic bytes), with the
    expansion-ratio limit (DecompressionLimitError naming the file once it is passed), and without a
    leading UTF-8 byte-order mark (recorded in `stats`). UTF-16 text is refused: as UTF-8 it would be
    every other byte NUL, silently replaced."""
    p = os.fspath(path)
    stream, compressed = open_limited(p, max_ratio=max_expansion_ratio(), formats="gzip",
                                      how_to_raise=f"; if the file is genuine, raise the limit with the environment "
                                                   f"variable {RATIO_ENV}=N (0: no limit)")
    f: io.BufferedReader = io.BufferedReader(stream, _READ_BUFFER) if compressed else stream  # type: ignore
    try:
        head = f.peek(3)[:3]
        if head == UTF8_BOM:
            f.read(3)
            if stats is not None:
                stats.bom_stripped = True
        elif head[:2] in _UTF16_BOMS:
            raise ValueError(f"{p}: starts with a UTF-16 byte-order mark; the text must be UTF-8 (convert it, "
                             f"e.g. iconv -f UTF-16 -t UTF-8)")
    except BaseException:
        f.close()
        raise
    return f  # type: ignore[return-value]


def _strip_eol(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def decode_lines(raw: list[bytes], first_line_no: int, stats: TextStats) -> list[str]:
    """Decode a block of raw lines (line ends removed); invalid UTF-8 is replaced and counted."""
    stats.lines += len(raw)
    try:
        # Fast path: one decode call for the whole block.
        text = b"".join(raw).decode("utf-8")
    except UnicodeDecodeError:
        out = []
        for k, line in enumerate(raw):
            try:
                out.append(_strip_eol(line.decode("utf-8")))
            except UnicodeDecodeError:
                s = line.decode("utf-8", errors="replace")
                n = s.count(REPLACEMENT_CHAR) - line.count(_REPLACEMENT_BYTES)
                stats.add_replacements(first_line_no + k, n)
                out.append(_strip_eol(s))
        return out
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the block ended with a newline
    if len(lines) != len(raw):
        # A '\n' inside a line cannot happen (we split on it); defensive against odd decoders.
        return [_strip_eol(line.decode("utf-8")) for line in raw]
    if "\r" in text:
        lines = [s[:-1] if s.endswith("\r") else s for s in lines]
    return lines


def iter_raw_blocks(f: BinaryIO, block_lines: int = BLOCK_LINES) -> Iterator[list[bytes]]:
    """Blocks of up to `block_lines` raw lines."""
    while True:
        block = list(islice(f, block_lines))
        if not block:
            return
        yield block


def iter_lines(path: str | os.PathLike[str], stats: TextStats | None = None,
               block_lines: int = BLOCK_LINES) -> Iterator[str]:
    """Decoded lines of a file, streaming."""
    stats = stats if stats is not None else TextStats(os.fspath(path))
    with open_binary(path, stats) as f:
        for block in iter_raw_blocks(f, block_lines):
            yield from decode_lines(block, stats.lines + 1, stats)


def count_lines(f: BinaryIO) -> int:
    """Count the remaining lines of an open binary file without decoding (a last line without '\\n' counts)."""
    n = 0
    last = b"\n"
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        n += chunk.count(b"\n")
        last = chunk[-1:]
    return n + (last != b"\n")


def iter_pair_blocks(source: str | os.PathLike[str], target: str | os.PathLike[str],
                     block_lines: int = BLOCK_LINES, source_stats: TextStats | None = None,
                     target_stats: TextStats | None = None) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """Aligned blocks of raw lines: (number of the block's first line, source lines, target lines).

    Raises MisalignedError naming both files and both full line counts as soon as one side runs out
    before the other. A removed byte-order mark is recorded in the side's stats.
    """
    src_path, tgt_path = os.fspath(source), os.fspath(target)
    with open_binary(src_path, source_stats) as fs, open_binary(tgt_path, target_stats) as ft:
        line_no = 1
        while True:
            bs = list(islice(fs, block_lines))
            bt = list(islice(ft, block_lines))
            if len(bs) != len(bt):
                total_s = line_no - 1 + len(bs) + count_lines(fs)
                total_t = line_no - 1 + len(bt) + count_lines(ft)
                raise MisalignedError(src_path, total_s, tgt_path, total_t)
            if not bs:
                return
            yield line_no, bs, bt
            line_no += len(bs)
