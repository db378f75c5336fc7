"""The `subset` step: the first N sentence pairs (the AWS example's `head -n 10000`) or a seeded
random sample of N, with optional length and length-ratio filters.

Pairs stay aligned; blank pairs and filtered pairs are skipped and counted; files of different
line counts fail with an error naming both files and both counts (even in head mode, where the
rest of both files is still read to check). Random mode makes two streaming passes (count, then
pick), so memory holds N line numbers, not N sentences, and output keeps corpus order.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from pipeline_tasks.atomic import check_output_files, staged_files
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import TextStats, decode_lines, iter_pair_blocks

log = logging.getLogger(__name__)

MODES = ("head", "random")


@dataclass
class SubsetConfig:
    """How many pairs, how to pick them, and which pairs are not worth keeping."""

    size: int | None = None          # None: keep every pair that passes the filters
    mode: str = "head"
    seed: int = 0
    max_len: int | None = None       # whitespace tokens per side
    max_ratio: float | None = None   # longer side / shorter side, in tokens

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"subset mode must be one of {MODES}, got {self.mode!r}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"subset size must be >= 1, got {self.size}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {self.max_ratio}")


@dataclass
class SubsetStats:
    """Every examined line accounted for: lines_examined = candidates + blank + too long + over ratio."""

    lines_read: int = 0
    lines_examined: int = 0
    pairs_written: int = 0
    blank_skipped: int = 0
    too_long_skipped: int = 0
    ratio_skipped: int = 0
    candidates: int = 0
    source_text: dict = field(default_factory=dict)
    target_text: dict = field(default_factory=dict)


def _keep(s: str, t: str, cfg: SubsetConfig, stats: SubsetStats) -> bool:
    ns, nt = len(s.split()), len(t.split())
    if ns == 0 or nt == 0:
        stats.blank_skipped += 1
        return False
    if cfg.max_len is not None and (ns > cfg.max_len or nt > cfg.max_len):
        stats.too_long_skipped += 1
        return False
    if cfg.max_ratio is not None and max(ns, nt) > cfg.max_ratio * min(ns, nt):
        stats.ratio_skipped += 1
        return False
    return True


def _candidates(source: str, target: str, cfg: SubsetConfig, stats: SubsetStats,
                src_text: TextStats, trg_text: TextStats,
                enough: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, str]]:
    """Pairs that pass the filters, in corpus order.

    Both files are always read to the end, so misalignment anywhere is caught; once `enough()`
    holds, the remaining lines are only counted, not decoded.
    """
    progress = Progress(log, "subset", "lines")
    for line_no, bs, bt in iter_pair_blocks(source, target, source_stats=src_text, target_stats=trg_text):
        if enough():
            stats.lines_read += len(bs)
            progress.update(len(bs))
            continue
        src_lines = decode_lines(bs, line_no, src_text)
        trg_lines = decode_lines(bt, line_no, trg_text)
        stats.lines_read += len(bs)
        stats.lines_examined += len(bs)
        for s, t in zip(src_lines, trg_lines):
            if _keep(s, t, cfg, stats):
                stats.candidates += 1
                yield s, t
        progress.update(len(bs))
    progress.done()


def subset(source: str, target: str, out_source: str | os.PathLike[str], out_target: str | os.PathLike[str],
           cfg: SubsetConfig) -> dict:
    """Write the chosen pairs to `out_source`/`out_target` (both or neither); returns the counts.

    Both destinations are checked before the corpus is read, so an unusable second
    path fails at once instead of after a pass over millions of lines, and never after the first file
    has been published."""
    for p in (source, target):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
    outputs, inputs = [out_source, out_target], [source, target]
    check_output_files(outputs, inputs)   # now, not after random mode's counting pass
    stats = SubsetStats()
    src_text, trg_text = TextStats(source), TextStats(target)
    chosen: set[int] | None = None
    if cfg.mode == "random" and cfg.size is not None:
        count_stats = SubsetStats()
        n = sum(1 for _ in _candidates(source, target, cfg, count_stats, TextStats(source), TextStats(target)))
        k = min(cfg.size, n)
        chosen = set(random.Random(cfg.seed).sample(range(n), k))
    def enough() -> bool:
        return chosen is None and cfg.size is not None and stats.pairs_written >= cfg.size

    with staged_files(outputs, inputs, encoding="utf-8") as (fs, ft):
        for idx, (s, t) in enumerate(_candidates(source, target, cfg, stats, src_text, trg_text, enough)):
            if enough() or (chosen is not None and idx not in chosen):
                continue
            # A lone '\r' would end a line for text-mode readers downstream; as whitespace it is the same.
            fs.write((s.replace("\r", " ") if "\r" in s else s) + "\n")
            ft.write((t.replace("\r", " ") if "\r" in t else t) + "\n")
            stats.pairs_written += 1
        if stats.pairs_written == 0:
            raise ValueError(f"subset: no sentence pairs left from {source} / {target} "
                             f"({stats.lines_read} lines read, {stats.blank_skipped} blank, "
                             f"{stats.too_long_skipped} too long, {stats.ratio_skipped} over the length ratio)")
    src_text.warn_if_replaced()
    trg_text.warn_if_replaced()
    stats.source_text, stats.target_text = src_text.as_dict(), trg_text.as_dict()
    if cfg.size is not None and stats.pairs_written < cfg.size:
        log.warning("subset: asked for %d pairs, only %d available", cfg.size, stats.pairs_written)
    log.info("subset: %d of %d pairs written (%d blank, %d too long, %d over ratio skipped)",
             stats.pairs_written, stats.lines_read, stats.blank_skipped, stats.too_long_skipped, stats.ratio_skipped)
    return asdict(stats)
