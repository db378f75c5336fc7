"""The `subset` step: the first N sentence pairs (the AWS example's `head -n 10000`) or a seeded
random sample of N. (Length and length-ratio filters are the clean step's: pipeline_tasks/clean.py.)

Pairs stay aligned; blank pairs are skipped and counted; files of different
line counts fail with an error naming both files and both counts (even in head mode, where the
rest of both files is still read to check). Random mode makes two streaming passes (count, then
pick), so memory holds a flag per pair (one byte), not the sentences, and output keeps corpus order.

Several corpora (:func:`mix`): each source's pairs enter the training mix with a weight (an
upsampling factor) or a share of the mix, sampled reproducibly by seed; the report counts what came
from each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline_tasks.atomic import check_output_files, staged_files
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import TextStats, decode_lines, iter_pair_blocks

log = logging.getLogger(__name__)

MODES = ("head", "random")


@dataclass
class SubsetConfig:
    """How many pairs, how to pick them, and which pairs are not worth keeping."""

    size: int | None = None          # None: keep every (non-blank) pair
    mode: str = "head"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"subset mode must be one of {MODES}, got {self.mode!r}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"subset size must be >= 1, got {self.size}")


@dataclass
class SubsetStats:
    """Every examined line accounted for: lines_examined = candidates + blank."""

    lines_read: int = 0
    lines_examined: int = 0
    pairs_written: int = 0
    blank_skipped: int = 0
    candidates: int = 0
    source_text: dict = field(default_factory=dict)
    target_text: dict = field(default_factory=dict)


def _keep(s: str, t: str, stats: SubsetStats) -> bool:
    if not s.strip() or not t.strip():
        stats.blank_skipped += 1
        return False
    return True


def _candidates(source: str, target: str, stats: SubsetStats,
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
            if _keep(s, t, stats):
                stats.candidates += 1
                yield s, t
        progress.update(len(bs))
    progress.done()


def count_candidates(source: str, target: str) -> int:
    """How many pairs pass the filters (a first pass over the files)."""
    return sum(1 for _ in _candidates(source, target, SubsetStats(), TextStats(source), TextStats(target)))


def sample_mask(n: int, k: int, seed: int | Sequence[int]) -> np.ndarray:
    """k of n positions, chosen reproducibly by seed, as a boolean mask (1 byte a pair, whatever n is)."""
    mask = np.zeros(n, dtype=bool)
    if k >= n:
        mask[:] = True
    elif k > 0:
        mask[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return mask


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
    chosen: np.ndarray | None = None  # a flag per candidate pair: a byte each, not a Python int
    if cfg.mode == "random" and cfg.size is not None:
        n = count_candidates(source, target)
        chosen = sample_mask(n, min(cfg.size, n), cfg.seed)

    def enough() -> bool:
        return chosen is None and cfg.size is not None and stats.pairs_written >= cfg.size

    with staged_files(outputs, inputs, encoding="utf-8") as (fs, ft):
        for idx, (s, t) in enumerate(_candidates(source, target, stats, src_text, trg_text, enough)):
            if enough() or (chosen is not None and not chosen[idx]):
                continue
            # A lone '\r' would end a line for text-mode readers downstream; as whitespace it is the same.
            fs.write((s.replace("\r", " ") if "\r" in s else s) + "\n")
            ft.write((t.replace("\r", " ") if "\r" in t else t) + "\n")
            stats.pairs_written += 1
        if stats.pairs_written == 0:
            raise ValueError(f"subset: no sentence pairs left from {source} / {target} "
                             f"({stats.lines_read} lines read, {stats.blank_skipped} blank)")
    src_text.warn_if_replaced()
    trg_text.warn_if_replaced()
    stats.source_text, stats.target_text = src_text.as_dict(), trg_text.as_dict()
    if cfg.size is not None and stats.pairs_written < cfg.size:
        log.warning("subset: asked for %d pairs, only %d available", cfg.size, stats.pairs_written)
    log.info("subset: %d of %d pairs written (%d blank skipped)", stats.pairs_written, stats.lines_read,
             stats.blank_skipped)
    return asdict(stats)


# --- several corpora ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MixSource:
    """One corpus of the mix: its name (for the report), its files, and how much of the mix it makes."""

    name: str
    source: str
    target: str
    weight: float = 1.0              # upsampling factor: 2 = each pair twice (0.5: half of them, sampled)
    share: float | None = None       # or: this fraction of the mix

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"corpus {self.name}: weight must be > 0, got {self.weight}")
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError(f"corpus {self.name}: share must be in (0, 1], got {self.share}")


def uses_shares(sources: Sequence[MixSource]) -> bool:
    """Whether the mix is split by shares (every source gives one) or by weights (none does)."""
    given = [s.share is not None for s in sources]
    if any(given) and not all(given):
        raise ValueError("corpus: give a share for every source of the mix, or for none (weights)")
    return all(given) and bool(given)


def _largest_remainder(total: int, parts: Sequence[float]) -> list[int]:
    """Whole numbers proportional to `parts` that add up to `total`."""
    raw = [total * p / sum(parts) for p in parts]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[:total - sum(out)]:
        out[i] += 1
    return out


def mix_counts(available: Sequence[int], sources: Sequence[MixSource], size: int | None) -> list[int]:
    """How many pairs each source puts into the mix.

    Shares (given for every source): the mix has `size` pairs (default: as many as the sources allow
    without repeating a pair) split by share. Weights: each source's pairs times its weight, scaled down
    to `size` when that is smaller. A count above what a source has repeats its pairs (upsampling)."""
    shares = [s.share for s in sources]
    if uses_shares(sources):
        total = sum(shares)  # type: ignore[arg-type]
        if abs(total - 1) > 1e-6:
            raise ValueError(f"corpus: the shares add up to {total:g}, not 1")
        n = size if size is not None else int(min(a / x for a, x in zip(available, shares)))  # type: ignore[operator]
        return _largest_remainder(n, shares)  # type: ignore[arg-type]
    wanted = [a * s.weight for a, s in zip(available, sources)]
    if size is not None and size < sum(wanted):
        return _largest_remainder(size, wanted)
    return [round(w) for w in wanted]


def mix(sources: Sequence[MixSource], out_source: str | os.PathLike[str], out_target: str | os.PathLike[str],
        cfg: SubsetConfig) -> dict:
    """The training mix of several corpora in `out_source`/`out_target` (both or neither): each source's
    count (:func:`mix_counts`) of its pairs — every pair ⌊count / pairs⌋ times, plus the rest chosen by
    `cfg.mode` (head: the first ones; random: a sample by seed, the same pairs for the same seed), in
    corpus order, source after source (training shuffles). Returns the counts, per source too."""
    if not sources:
        raise ValueError("corpus: no source to mix")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus: the sources' names must differ, got {names}")
    inputs = [p for s in sources for p in (s.source, s.target)]
    for p in inputs:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
    outputs = [out_source, out_target]
    check_output_files(outputs, inputs)
    available = [count_candidates(s.source, s.target) for s in sources]
    counts = mix_counts(available, sources, cfg.size)
    report: dict = {"pairs_written": 0, "sources": []}
    with staged_files(outputs, inputs, encoding="utf-8") as (fs, ft):
        for i, (src, n, k) in enumerate(zip(sources, available, counts)):
            if n == 0:
                raise ValueError(f"corpus {src.name}: no sentence pairs in {src.source} / {src.target}")
            repeats, rest = divmod(k, n)
            extra = np.zeros(n, dtype=bool)
            if rest:
                extra = np.arange(n) < rest if cfg.mode == "head" else sample_mask(n, rest, [cfg.seed, i])
            stats = SubsetStats()
            s_text, t_text = TextStats(src.source), TextStats(src.target)
            written = 0
            for idx, (s, t) in enumerate(_candidates(src.source, src.target, stats, s_text, t_text)):
                times = repeats + int(extra[idx])
                if times:
                    s, t = s.replace("\r", " "), t.replace("\r", " ")
                    fs.write((s + "\n") * times)
                    ft.write((t + "\n") * times)
                    written += times
            report["sources"].append({
                "name": src.name, "source": src.source, "target": src.target, "weight": src.weight,
                "share": src.share, "pairs_available": n, "pairs_written": written,
                "share_of_mix": None, "blank_skipped": stats.blank_skipped,
                "source_text": s_text.as_dict(), "target_text": t_text.as_dict()})
            report["pairs_written"] += written
            log.info("mix: %s: %d of its %d pairs%s", src.name, written, n,
                     f" (each {repeats}x, then {rest} more)" if repeats > 1 or (repeats and rest) else "")
        if report["pairs_written"] == 0:
            raise ValueError("corpus: the mix is empty")
    for r in report["sources"]:
        r["share_of_mix"] = round(r["pairs_written"] / report["pairs_written"], 6)
    log.info("mix: %d pairs from %s", report["pairs_written"],
             ", ".join(f"{r['name']} {r['pairs_written']} ({r['share_of_mix']:.1%})" for r in report["sources"]))
    return report
