"""The clean step as it was before it was batched (pipeline_tasks/clean.py at b33152f), kept verbatim below
this note as the baseline of benchmarks/bench_clean.py and of the tests that compare outputs byte for byte
(tests/unit/test_clean.py): one pair at a time, py3langid's ``classify`` per side, every decoded pair sent
back to this process, duplicates in Python sets of 8-byte digests. Not used by the product.

The original module docstring:
The clean step: drop training pairs that would teach the model noise, and say what was dropped and why.

WMT's crawled data holds duplicates, untranslated copies, lines in the wrong language, markup and
boilerplate. Each filter below is one rule on a pair; a pair is counted under the first rule that drops
it, with a few examples in the report. Defaults are conservative: on the bundled sample and on the
newstest sets (clean text) they drop well under 5 % (README, "Cleaning").

- ``bad_characters``: a control character (other than tab) or U+FFFD (text that was not valid UTF-8);
- ``markup``: an HTML/XML tag (Moses' escaped entities such as ``&apos;`` are text, not markup);
- ``url_only``: a side that is nothing but URLs or e-mail addresses;
- ``copy``: the target is the source (normalised as for near duplicates): an untranslated pair;
- ``script``: under ``min_script_share`` of a side's letters are in its language's script;
- ``language``: py3langid (its model ships in the wheel) is at least ``language_threshold`` sure that a
  side of ``language_min_chars`` or more is in another language (shorter lines are too short to tell);
- ``duplicate`` / ``near_duplicate``: the pair was seen before, exactly or normalised (``normalize``:
  any of case, whitespace, punctuation, digits).

The per-pair rules run on every core in blocks; duplicates are found in this process from 8-byte
blake2b digests of the pair, so memory grows by a digest per distinct pair, not by the text. Training
data only: validation and test sets pass through untouched.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline_tasks.atomic import check_output_files, staged_files
from pipeline_tasks.parallel import WorkerPool, default_workers
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import TextStats, decode_lines, iter_pair_blocks

log = logging.getLogger(__name__)

FILTERS = ("bad_characters", "markup", "url_only", "copy", "script", "language", "duplicate", "near_duplicate")
NORMALIZATIONS = ("case", "whitespace", "punctuation", "digits")
# The script of each language's letters, as the first word of their Unicode names; others are not checked.
SCRIPTS = {**dict.fromkeys(("en", "de", "fr", "es", "it", "pt", "nl", "cs", "pl", "ro", "fi", "et", "lv", "lt",
                            "tr", "hu", "sv", "da", "no", "sk", "sl", "hr", "ga", "mt", "id", "vi"), "LATIN"),
           **dict.fromkeys(("ru", "uk", "bg", "mk", "be", "kk"), "CYRILLIC"), "el": "GREEK", "he": "HEBREW",
           "ar": "ARABIC", "fa": "ARABIC", "hi": "DEVANAGARI", "zh": "CJK", "ko": "HANGUL"}
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>")
_URL = re.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+", re.IGNORECASE)
PARALLEL_MIN_BYTES = 2 << 20  # below this, one process (starting workers takes seconds)
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\d")
_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufffd]")  # Unicode's control characters but tab, and U+FFFD


@dataclass(frozen=True)
class CleanConfig:
    """Which filters run and how strict they are; ``enabled=False`` passes the data through, counted."""

    enabled: bool = True
    filters: tuple[str, ...] = FILTERS
    normalize: tuple[str, ...] = NORMALIZATIONS
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


@functools.lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    return unicodedata.name(ch, "").split(" ", 1)[0]


def normalized(text: str, how: Sequence[str]) -> str:
    """The text as near-duplicate detection compares it."""
    if "case" in how:
        text = text.casefold()
    if "punctuation" in how:
        text = text.translate(_punctuation())
    if "digits" in how:
        text = _DIGITS.sub("0", text)
    if "whitespace" in how:
        text = _SPACES.sub(" ", text).strip()
    return text


def _bad_characters(text: str) -> bool:
    return _BAD.search(text) is not None


def _url_only(text: str) -> bool:
    return bool(_URL.search(text)) and not _URL.sub(" ", text).strip(" .,;:|-/()[]")


def script_share(text: str, script: str) -> float:
    """The share of the letters of `text` whose Unicode name starts with `script` (1.0 without letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    return sum(_script(ch) == script for ch in letters) / len(letters)


_IDENTIFIER: Any = None


def _identifier() -> Any:
    """py3langid's identifier with probabilities, loaded once per process (about a second)."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def other_language(text: str, lang: str, cfg: CleanConfig) -> str | None:
    """The language `text` is in when that is surely not `lang`, else None."""
    if len(text) < cfg.language_min_chars:
        return None
    found, prob = _identifier().classify(text)
    return found if found != lang and prob >= cfg.language_threshold else None


def pair_verdict(source: str, target: str, source_lang: str, target_lang: str, cfg: CleanConfig) -> str | None:
    """The first per-pair filter that drops (source, target), or None to keep it (duplicates aside)."""
    on = cfg.filters
    if "bad_characters" in on and (_bad_characters(source) or _bad_characters(target)):
        return "bad_characters"
    if "markup" in on and (_TAG.search(source) or _TAG.search(target)):
        return "markup"
    if "url_only" in on and (_url_only(source) or _url_only(target)):
        return "url_only"
    if "copy" in on and normalized(source, cfg.normalize) == normalized(target, cfg.normalize):
        return "copy"
    if "script" in on:
        for text, lang in ((source, source_lang), (target, target_lang)):
            script = SCRIPTS.get(lang)
            if script and script_share(text, script) < cfg.min_script_share:
                return "script"
    if "language" in on and (other_language(source, source_lang, cfg) or other_language(target, target_lang, cfg)):
        return "language"
    return None


def _digest(source: str, target: str) -> bytes:
    return hashlib.blake2b(f"{source}\t{target}".encode(), digest_size=8).digest()


def _judge_block(job: tuple[int, list[bytes], list[bytes], str, str, CleanConfig, str, str]
                 ) -> tuple[list[tuple[str, str]], list[str | None], list[bytes], list[bytes]]:
    """A worker's part: decode a block, apply the per-pair filters, digest each pair (exact, normalised)."""
    line_no, bs, bt, src_lang, trg_lang, cfg, src_name, trg_name = job
    s_stats, t_stats = TextStats(src_name), TextStats(trg_name)
    sources, targets = decode_lines(bs, line_no, s_stats), decode_lines(bt, line_no, t_stats)
    pairs = list(zip(sources, targets, strict=True))
    verdicts = [pair_verdict(s, t, src_lang, trg_lang, cfg) if cfg.enabled else None for s, t in pairs]
    exact = [_digest(s, t) for s, t in pairs]
    near = [_digest(normalized(s, cfg.normalize), normalized(t, cfg.normalize)) for s, t in pairs]
    return pairs, verdicts, exact, near


@dataclass
class CleanReport:
    pairs_in: int = 0
    pairs_out: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def clean(source: str, target: str, out_source: str | os.PathLike[str], out_target: str | os.PathLike[str],
          source_lang: str, target_lang: str, cfg: CleanConfig | None = None, workers: int | None = None,
          keep_all: bool = False) -> dict:
    """Write the pairs every filter keeps to `out_source`/`out_target` (both or neither); returns the report.
    `keep_all`: write every pair and only count what the filters would drop (validation and test sets)."""
    cfg = cfg or CleanConfig()
    for p in (source, target):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
    outputs = [out_source, out_target]
    check_output_files(outputs, [source, target])
    report = CleanReport(config={**asdict(cfg), "filters": list(cfg.filters), "normalize": list(cfg.normalize)})
    exact_seen: set[bytes] = set()
    near_seen: set[bytes] = set()
    dedup, near_dedup = "duplicate" in cfg.filters and cfg.enabled, "near_duplicate" in cfg.filters and cfg.enabled
    progress = Progress(log, "clean", "pairs")
    jobs = ((n, bs, bt, source_lang, target_lang, cfg, str(source), str(target))
            for n, bs, bt in iter_pair_blocks(source, target))
    small = os.path.getsize(source) + os.path.getsize(target) < PARALLEL_MIN_BYTES  # workers cost more
    with staged_files(outputs, [source, target], encoding="utf-8") as (fs, ft), \
            WorkerPool(1 if small and workers is None else workers or default_workers()) as pool:
        for pairs, verdicts, exact, near in pool.map(_judge_block, jobs):
            for (s, t), verdict, e, n in zip(pairs, verdicts, exact, near, strict=True):
                report.pairs_in += 1
                if verdict is None and dedup and e in exact_seen:
                    verdict = "duplicate"
                elif verdict is None and near_dedup and n in near_seen:
                    verdict = "near_duplicate"
                if verdict is not None:
                    report.dropped[verdict] += 1
                    shown = report.examples.setdefault(verdict, [])
                    if len(shown) < cfg.examples:
                        shown.append([s[:200], t[:200]])
                    if not keep_all:
                        continue
                exact_seen.add(e)
                near_seen.add(n)
                fs.write(s + "\n")
                ft.write(t + "\n")
                report.pairs_out += 1
            progress.update(len(pairs))
        if report.pairs_out == 0:
            raise ValueError(f"clean: every one of the {report.pairs_in} pairs of {source} / {target} was dropped "
                             f"({', '.join(f'{k} {v}' for k, v in report.dropped.items() if v)})")
    progress.done()
    dropped = sum(report.dropped.values())
    log.info("clean: %s of %s: %d of %d pairs %s (%.2f%%: %s)", os.path.basename(source), os.path.basename(target),
             dropped, report.pairs_in, "flagged, all kept" if keep_all else "dropped",
             100 * dropped / max(report.pairs_in, 1),
             ", ".join(f"{k} {v}" for k, v in report.dropped.items() if v) or "nothing")
    return {**asdict(report), "kept_all": keep_all, "dropped_share": round(dropped / max(report.pairs_in, 1), 6)}
