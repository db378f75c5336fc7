"""The clean step: drop training pairs that would teach the model noise, and say what was dropped and why.

WMT's crawled data holds duplicates, untranslated copies, lines in the wrong language, markup and
boilerplate. Each filter below is one rule on a pair; a pair is counted under the first rule that drops
it, with a few examples in the report. Defaults are conservative: on the bundled sample and on the
newstest sets (clean text) they drop well under 5 % (README, "Cleaning").

- ``too_short`` / ``too_long``: a side of fewer than ``min_len`` or more than ``max_len`` whitespace tokens;
- ``ratio``: the longer side has more than ``max_ratio`` times the tokens of the shorter (a misaligned or
  truncated pair, the cheapest sign of one);
- ``bad_characters``: a control character (other than tab) or U+FFFD (text that was not valid UTF-8);
- ``markup``: an HTML/XML tag (Moses' escaped entities such as ``&apos;`` are text, not markup);
- ``url_only``: a side that is nothing but URLs or e-mail addresses;
- ``copy``: the target is the source (normalised as for near duplicates): an untranslated pair;
- ``script``: under ``min_script_share`` of a side's letters are in its language's script;
- ``language``: py3langid (its model ships in the wheel) is at least ``language_threshold`` sure that a
  side of ``language_min_chars`` or more is in another language (shorter lines are too short to tell);
- ``duplicate`` / ``near_duplicate``: the pair was seen before, exactly or normalised (``normalize``:
  any of case, whitespace, punctuation, digits).

The per-pair rules run on every core in blocks of 20,000 pairs, and each rule takes a block at once
rather than a pair at a time (pipeline_tasks/clean_filters.py; WMT17's ~6M pairs must be cleaned in
minutes, not the half hour the pair-by-pair version took): the text rules scan a block's lines joined,
as one string (regexes) or as an array of code points (numpy, with per-character tables built from
unicodedata), and language identification is py3langid's model run on the whole block
(pipeline_tasks/langid.py). Workers send back a code and two digests per pair, no text; this process
writes the raw lines it read (the few whose decoded text differs from their bytes, such as invalid UTF-8
or a '\\r\\n' line end, come back as text). Duplicates are found here from 8-byte blake2b digests of
the pair (source '\\n' target), kept in numpy hash sets (pipeline_tasks/digestset.py): 16-32 bytes per
distinct pair and digest kind, neither the text nor a Python object each. Training data only:
validation and test sets pass through untouched.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline_tasks.atomic import check_output_files, staged_files
from pipeline_tasks.parallel import WorkerPool, default_workers
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import BLOCK_LINES, iter_pair_blocks

if TYPE_CHECKING:
    import numpy as np

    from pipeline_tasks.clean_filters import Job, Judged

log = logging.getLogger(__name__)

FILTERS = ("too_short", "too_long", "ratio", "bad_characters", "markup", "url_only", "copy", "script", "language",
           "duplicate", "near_duplicate")
LENGTH_FILTERS = ("too_short", "too_long", "ratio")
NORMALIZATIONS = ("case", "whitespace", "punctuation", "digits")
# The script of each language's letters, as the first word of their Unicode names; others are not checked.
SCRIPTS = {**dict.fromkeys(("en", "de", "fr", "es", "it", "pt", "nl", "cs", "pl", "ro", "fi", "et", "lv", "lt",
                            "tr", "hu", "sv", "da", "no", "sk", "sl", "hr", "ga", "mt", "id", "vi"), "LATIN"),
           **dict.fromkeys(("ru", "uk", "bg", "mk", "be", "kk"), "CYRILLIC"), "el": "GREEK", "he": "HEBREW",
           "ar": "ARABIC", "fa": "ARABIC", "hi": "DEVANAGARI", "zh": "CJK", "ko": "HANGUL"}
# An HTML/XML tag: </?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?> in a line; searched in a block, kept within a line.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*([^\S\n][^<>\n]*)?/?>")
_URL = re.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+", re.IGNORECASE)
PARALLEL_MIN_BYTES = 2 << 20  # below this, one process (starting workers takes seconds)
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\d")


@dataclass(frozen=True)
class CleanConfig:
    """Which filters run and how strict they are; ``enabled=False`` passes the data through, counted."""

    enabled: bool = True
    filters: tuple[str, ...] = FILTERS
    normalize: tuple[str, ...] = NORMALIZATIONS
    min_len: int = 1                  # whitespace tokens a side needs (1: any non-blank line)
    max_len: int | None = 100         # at most this many a side (the AWS example's 100); None: no limit
    max_ratio: float | None = 3.0     # longer side / shorter side, in tokens; None: no limit
    min_script_share: float = 0.5
    language_threshold: float = 0.9
    language_min_chars: int = 20
    examples: int = 3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"cleaning: unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTERS)}")
        unknown = sorted(set(self.normalize) - set(NORMALIZATIONS))
        if unknown:
            raise ValueError(f"cleaning: unknown normalisation(s) {', '.join(unknown)}; known: "
                             f"{', '.join(NORMALIZATIONS)}")
        if not 0 <= self.min_script_share <= 1 or not 0 < self.language_threshold <= 1:
            raise ValueError("cleaning: min_script_share must be in [0, 1] and language_threshold in (0, 1]")
        if self.language_min_chars < 1 or self.examples < 0:
            raise ValueError("cleaning: language_min_chars must be >= 1 and examples >= 0")
        if self.min_len < 1 or (self.max_len is not None and self.max_len < self.min_len):
            raise ValueError(f"cleaning: min_len must be >= 1 and max_len >= min_len, got {self.min_len} and "
                             f"{self.max_len}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise ValueError(f"cleaning: max_ratio must be >= 1, got {self.max_ratio}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CleanConfig:
        """The DAG's ``cleaning`` param: filters to switch off (``{"language": false}``) and settings."""
        d = dict(d or {})
        off = {name for name in FILTERS if d.pop(name, True) is False}
        known = {f for f in cls.__dataclass_fields__ if f != "filters"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"cleaning: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known | set(FILTERS)))}")
        if "normalize" in d:
            d["normalize"] = tuple(d["normalize"])
        return cls(filters=tuple(f for f in FILTERS if f not in off), **d)


@functools.cache
def _punctuation() -> dict[int, None]:
    """str.translate's table deleting every punctuation character (built once per process, ~0.3 s)."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


def normalized(text: str, how: Sequence[str]) -> str:
    """The text as near-duplicate detection compares it (the definition; a block uses normalized_lines)."""
    if "case" in how:
        text = text.casefold()
    if "punctuation" in how:
        text = text.translate(_punctuation())
    if "digits" in how:
        text = _DIGITS.sub("0", text)
    if "whitespace" in how:
        text = _SPACES.sub(" ", text).strip()
    return text


def script_share(text: str, script: str) -> float:
    """The share of the letters of `text` whose Unicode name starts with `script` (1.0 without letters)."""
    from pipeline_tasks.clean_filters import Lines

    return float(Lines([text]).script_shares(script)[0])


def other_language(text: str, lang: str, cfg: CleanConfig) -> str | None:
    """The language `text` is in when that is surely not `lang`, else None."""
    from pipeline_tasks.clean_filters import other_languages

    return other_languages([text], lang, cfg)[0] or None


def pair_verdict(source: str, target: str, source_lang: str, target_lang: str, cfg: CleanConfig) -> str | None:
    """The first per-pair filter that drops (source, target), or None to keep it (duplicates aside)."""
    from pipeline_tasks.clean_filters import block_verdicts

    code = int(block_verdicts([source], [target], source_lang, target_lang, cfg)[0])
    return FILTERS[code - 1] if code else None


@dataclass
class CleanReport:
    pairs_in: int = 0
    pairs_out: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def count(self, codes: np.ndarray, text: Callable[[int], tuple[str, str]], room: int) -> None:
        """Add a block's verdicts; examples (up to `room` per filter) in file order, and the filters in
        the order they first dropped a pair, as counting pair by pair did."""
        import numpy as np

        self.pairs_in += len(codes)
        per_code = np.bincount(codes, minlength=len(FILTERS) + 1)
        firsts = sorted((int(np.argmax(codes == c)), c) for c in np.flatnonzero(per_code[1:]) + 1)
        for _, code in firsts:
            name = FILTERS[code - 1]
            self.dropped[name] += int(per_code[code])
            shown = self.examples.setdefault(name, [])
            for i in np.flatnonzero(codes == code)[:max(room - len(shown), 0)].tolist():
                s, t = text(i)
                shown.append([s[:200], t[:200]])


def clean(source: str, target: str, out_source: str | os.PathLike[str], out_target: str | os.PathLike[str],
          source_lang: str, target_lang: str, cfg: CleanConfig | None = None, workers: int | None = None,
          keep_all: bool = False) -> dict:
    """Write the pairs every filter keeps to `out_source`/`out_target` (both or neither); returns the report.
    `keep_all`: write every pair and only count what the filters would drop (validation and test sets)."""
    import numpy as np

    from pipeline_tasks.clean_filters import Job, judge_block, resolve_duplicates
    from pipeline_tasks.digestset import DigestSet

    cfg = cfg or CleanConfig()
    for p in (source, target):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
    outputs = [out_source, out_target]
    check_output_files(outputs, [source, target])
    report = CleanReport(config={**asdict(cfg), "filters": list(cfg.filters), "normalize": list(cfg.normalize)})
    seen_exact, seen_near = DigestSet(), DigestSet()
    dedup, near_dedup = "duplicate" in cfg.filters and cfg.enabled, "near_duplicate" in cfg.filters and cfg.enabled
    progress = Progress(log, "clean", "pairs")
    in_flight: deque[tuple[list[bytes], list[bytes]]] = deque()  # the raw lines of the blocks out at the workers

    def jobs() -> Iterator[Job]:
        for n, bs, bt in iter_pair_blocks(source, target, BLOCK_LINES):
            in_flight.append((bs, bt))
            yield Job(n, bs, bt, source_lang, target_lang, cfg, dedup, near_dedup)

    small = os.path.getsize(source) + os.path.getsize(target) < PARALLEL_MIN_BYTES  # workers cost more
    with staged_files(outputs, [source, target], mode="wb") as (fs, ft), \
            WorkerPool(1 if small and workers is None else workers or default_workers()) as pool:
        for judged in pool.map(judge_block, jobs()):
            bs, bt = in_flight.popleft()
            codes = judged.codes
            if dedup or near_dedup:
                codes = resolve_duplicates(codes, judged.exact, judged.near, seen_exact, seen_near, keep_all)
            out_s, out_t = _output_lines(bs, judged.changed_sources), _output_lines(bt, judged.changed_targets)
            report.count(codes, functools.partial(_pair_text, bs, bt, judged), cfg.examples)
            if keep_all or not codes.any():
                fs.write(b"".join(out_s))
                ft.write(b"".join(out_t))
                report.pairs_out += len(codes)
            else:
                kept = np.flatnonzero(codes == 0).tolist()
                fs.write(b"".join([out_s[i] for i in kept]))
                ft.write(b"".join([out_t[i] for i in kept]))
                report.pairs_out += len(kept)
            progress.update(len(codes))
        if report.pairs_out == 0:
            raise ValueError(f"clean: every one of the {report.pairs_in} pairs of {source} / {target} was dropped "
                             f"({', '.join(f'{k} {v}' for k, v in report.dropped.items() if v)})")
    progress.done()
    dropped = sum(report.dropped.values())
    log.info("clean: %s of %s: %d of %d pairs %s (%.2f%%: %s)", os.path.basename(source), os.path.basename(target),
             dropped, report.pairs_in, "flagged, all kept" if keep_all else "dropped",
             100 * dropped / max(report.pairs_in, 1),
             ", ".join(f"{k} {v}" for k, v in report.dropped.items() if v) or "nothing")
    result = asdict(report)
    return {**result, "kept_all": keep_all, "dropped_share": round(dropped / max(report.pairs_in, 1), 6)}


def _output_lines(raw: list[bytes], changed: dict[int, str]) -> list[bytes]:
    """The bytes to write for each line: as read, but for the lines whose decoded text differs."""
    if not changed:
        return raw
    out = list(raw)
    for i, text in changed.items():
        out[i] = (text + "\n").encode("utf-8")
    return out


def _pair_text(sources: list[bytes], targets: list[bytes], judged: Judged, i: int) -> tuple[str, str]:
    """The decoded pair `i` of a block (for the report's examples): a line not listed as changed is its
    text + '\\n' in UTF-8."""
    return (judged.changed_sources[i] if i in judged.changed_sources else sources[i][:-1].decode("utf-8"),
            judged.changed_targets[i] if i in judged.changed_targets else targets[i][:-1].decode("utf-8"))
