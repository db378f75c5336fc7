"""The clean step's filters on a block of pairs at once, and a worker's part of the step.

pipeline_tasks/clean.py is the step (its rules, settings, report and the writing); this is how the rules
run fast enough for WMT17's ~6M pairs: each filter takes a whole block (its lines joined, as one string
for the regexes and as an array of code points for numpy, with per-character tables built once from
unicodedata), language identification runs py3langid's model on the block (pipeline_tasks/langid.py),
and a worker returns a code and two digests per pair, not the text. Apart from clean.py so that what
imports only the step's settings (the DAG file, at every parse) loads no numpy.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline_tasks.clean import _TAG, _URL, FILTERS, LENGTH_FILTERS, SCRIPTS, CleanConfig
from pipeline_tasks.digestset import DigestSet
from pipeline_tasks.langid import batch_identifier
from pipeline_tasks.textio import TextStats, decode_lines

# Per code point, what the filters ask of a character (bits), from this Python's unicodedata.
_PUNCTUATION, _DECIMAL, _SPACE, _BAD_CHAR = 1, 2, 4, 8


@functools.cache
def _char_tables() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    r"""For every code point: its bits (a "P*" category, ``isdecimal`` as re's ``\d``, ``isspace`` as re's
    ``\s`` and ``str.strip``, a bad character) and its script id (0: not a letter by ``str.isalpha``; else
    the first word of its Unicode name, numbered); and the ids. Built once per process, ~0.5 s."""
    bits = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
    scripts = np.zeros(sys.maxunicode + 1, dtype=np.uint16)
    ids: dict[str, int] = {}
    category, name = unicodedata.category, unicodedata.name
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch.isalpha():
            scripts[cp] = ids.setdefault(name(ch, "").split(" ", 1)[0], len(ids) + 1)
        b = (_PUNCTUATION if category(ch)[0] == "P" else 0) | (_DECIMAL if ch.isdecimal() else 0) | \
            (_SPACE if ch.isspace() else 0)
        if b:
            bits[cp] = b
    # Unicode's control characters but tab, and U+FFFD (text that was not valid UTF-8); not '\n': no line
    # holds one, it separates the lines of a block.
    for lo, hi in ((0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0xFFFD, 0xFFFD)):
        bits[lo:hi + 1] |= _BAD_CHAR
    return bits, scripts, ids


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def normalized_lines(texts: Sequence[str], how: Sequence[str]) -> list[str]:
    """``[normalized(t, how) for t in texts]``, for a block at once.

    Per line, str.translate on text that is not ASCII and a regex per step cost ~25 µs; here the block is
    case-folded as one string, then punctuation, digits and whitespace are done on its code points with
    numpy (the same character classes, from unicodedata). '\\n' separates the lines: none holds one, and
    no step makes or removes one."""
    if not texts:
        return []
    block = "\n".join(texts) + "\n"
    if "case" in how:
        block = block.casefold()
    if not {"punctuation", "digits", "whitespace"} & set(how):
        return block.split("\n")[:-1]
    bits_of = _char_tables()[0]
    cps = _code_points(block)
    bits = bits_of[cps]
    if "punctuation" in how:
        keep = (bits & _PUNCTUATION) == 0
        cps, bits = cps[keep], bits[keep]
    if "digits" in how:
        cps = np.where((bits & _DECIMAL) != 0, np.uint32(ord("0")), cps)
    if "whitespace" in how:
        newline = cps == ord("\n")
        space = ((bits & _SPACE) != 0) & ~newline
        after = np.empty_like(space)  # preceded by whitespace, or first in its line
        after[0] = True
        np.logical_or(space[:-1], newline[:-1], out=after[1:])
        keep = ~(space & after)       # a run of whitespace: its first character, unless it starts the line
        cps, space = cps[keep], space[keep]
        cps = np.where(space, np.uint32(ord(" ")), cps)
        last = np.empty_like(space)   # followed by the end of its line
        last[-1] = True
        np.equal(cps[1:], ord("\n"), out=last[:-1])
        cps = cps[~(space & last)]
    return cps.tobytes().decode("utf-32-le", "surrogatepass").split("\n")[:-1]


class Lines:
    """One side of a block, joined once for all the filters: as text ('\\n' after each line) and as code
    points, with where each line starts; what a filter finds in the block is mapped back to lines."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        self.starts = np.zeros(len(texts), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=self.starts[1:])
        self.text = "\n".join(texts) + "\n"
        self.code_points = _code_points(self.text)
        self._bits: np.ndarray | None = None

    @property
    def bits(self) -> np.ndarray:
        if self._bits is None:
            self._bits = _char_tables()[0][self.code_points]
        return self._bits

    def lines_at(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Which lines hold any of these positions (of the joined text)."""
        hit = np.zeros(len(self.texts), dtype=bool)
        hit[np.searchsorted(self.starts, np.asarray(positions, dtype=np.int64), side="right") - 1] = True
        return hit

    def count(self, mask: np.ndarray) -> np.ndarray:
        """Per line, how many of its characters `mask` marks (every line's '\\n' makes none empty)."""
        return np.add.reduceat(mask, self.starts, dtype=np.int64)

    def token_counts(self) -> np.ndarray:
        """Per line, ``len(line.split())``: the characters that start a run of non-space (str.isspace, as
        str.split uses; the '\n' after each line is one)."""
        word = (self.bits & _SPACE) == 0
        starts = word.copy()
        starts[1:] &= ~word[:-1]
        return self.count(starts)

    def bad_characters(self) -> np.ndarray:
        return self.lines_at(np.flatnonzero(self.bits & _BAD_CHAR))

    def markup(self) -> np.ndarray:
        return self.lines_at([m.start() for m in _TAG.finditer(self.text)])

    def url_only(self, among: np.ndarray) -> np.ndarray:
        """`_url_only` of the lines of `among` that could hold a URL or an e-mail address at all: an
        '@', a '://' or 'www.' in any case (re.IGNORECASE matches 'w' with 'W' only); found for the
        block with numpy, so the slow URL regex (~10 µs a line) runs on those lines alone."""
        c = self.code_points
        at = np.flatnonzero(c == ord("@"))
        colon = np.flatnonzero(c[:-2] == ord(":"))
        colon = colon[(c[colon + 1] == ord("/")) & (c[colon + 2] == ord("/"))]
        dot = np.flatnonzero(c[3:] == ord(".")) + 3
        w = ord("w")
        dot = dot[((c[dot - 1] | 32) == w) & ((c[dot - 2] | 32) == w) & ((c[dot - 3] | 32) == w)]
        maybe = self.lines_at(np.concatenate([at, colon, dot]))
        result = np.zeros(len(self.texts), dtype=bool)
        for i in np.flatnonzero(maybe & among).tolist():
            result[i] = _url_only(self.texts[i])
        return result

    def script_shares(self, script: str) -> np.ndarray:
        """script_share of each line, as float64 (the same division)."""
        _, scripts, ids = _char_tables()
        of = scripts[self.code_points]
        letters = self.count(of != 0)
        ours = self.count(of == ids[script]) if script in ids else np.zeros(len(self.texts), dtype=np.int64)
        shares = np.ones(len(self.texts))
        some = letters > 0
        shares[some] = ours[some] / letters[some]
        return shares


def _url_only(text: str) -> bool:
    return bool(_URL.search(text)) and not _URL.sub(" ", text).strip(" .,;:|-/()[]")


def other_languages(texts: Sequence[str], lang: str, cfg: CleanConfig) -> list[str]:
    """For each text, the language it is surely in when that is not `lang`, else ''."""
    result = [""] * len(texts)
    todo = [i for i, t in enumerate(texts) if len(t) >= cfg.language_min_chars]
    if todo:
        langs, probs = batch_identifier().classify([texts[i] for i in todo])  # loaded once per process
        sure = probs.astype(np.float64) >= cfg.language_threshold  # py3langid's float, not rounded to float32
        for i, found, ok in zip(todo, langs, sure.tolist(), strict=True):
            if ok and found != lang:
                result[i] = found
    return result


_CODES = {name: code for code, name in enumerate(FILTERS, start=1)}  # verdict codes; 0: kept
_PART = 4096  # pairs a worker filters at once (see judge_block)


def block_verdicts(sources: Sequence[str], targets: Sequence[str], source_lang: str, target_lang: str,
                   cfg: CleanConfig, norm_sources: Sequence[str] | None = None,
                   norm_targets: Sequence[str] | None = None) -> np.ndarray:
    """For each pair, the code (1 + index in FILTERS) of the first per-pair filter that drops it, or 0.

    Filter by filter over the whole block, a pair dropped by an earlier filter no longer counting: the
    same first verdict as asking the filters in order pair by pair, with a few numpy calls or one regex
    scan per filter and side instead of calls per pair, and language identification (pipeline_tasks/
    langid.py) once per side on the texts that still need it. `norm_*`: the texts already normalised
    (the near-duplicate digests need them too)."""
    n = len(sources)
    codes = np.zeros(n, dtype=np.uint8)
    if not n:
        return codes
    on, alive = cfg.filters, np.ones(n, dtype=bool)
    src, trg = Lines(sources), Lines(targets)

    def drop(name: str, hit: np.ndarray) -> None:
        hit &= alive
        codes[hit] = _CODES[name]
        alive[hit] = False

    if set(LENGTH_FILTERS) & set(on):
        ns, nt = src.token_counts(), trg.token_counts()
        if "too_short" in on:
            drop("too_short", (ns < cfg.min_len) | (nt < cfg.min_len))
        if "too_long" in on and cfg.max_len is not None:
            drop("too_long", (ns > cfg.max_len) | (nt > cfg.max_len))
        if "ratio" in on and cfg.max_ratio is not None:
            drop("ratio", np.maximum(ns, nt) > cfg.max_ratio * np.minimum(ns, nt))
    if "bad_characters" in on:
        drop("bad_characters", src.bad_characters() | trg.bad_characters())
    if "markup" in on:
        drop("markup", src.markup() | trg.markup())
    if "url_only" in on:
        drop("url_only", src.url_only(alive) | trg.url_only(alive))
    if "copy" in on:
        if norm_sources is None or norm_targets is None:
            norm_sources, norm_targets = normalized_lines(sources, cfg.normalize), normalized_lines(targets,
                                                                                                      cfg.normalize)
        drop("copy", np.fromiter(map(str.__eq__, norm_sources, norm_targets), dtype=bool, count=n))
    if "script" in on:
        for side, lang in ((src, source_lang), (trg, target_lang)):
            if SCRIPTS.get(lang):
                drop("script", side.script_shares(SCRIPTS[lang]) < cfg.min_script_share)
    del src, trg  # their arrays (~35 MB for a block of 20,000 pairs) are not needed any more
    if "language" in on:
        for texts, lang in ((sources, source_lang), (targets, target_lang)):
            todo = np.flatnonzero(alive).tolist()
            found = other_languages([texts[i] for i in todo], lang, cfg)
            hit = np.zeros(n, dtype=bool)
            hit[[i for i, f in zip(todo, found, strict=True) if f]] = True
            drop("language", hit)
    return codes


def _digests(sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """8-byte blake2b of each pair "source\\ntarget", as uint64: '\\n', which no line holds, not the tab the
    step used before (a line may hold a tab, and ("a\\tb", "c") was then a duplicate of ("a", "b\\tc"))."""
    blake = hashlib.blake2b
    return np.frombuffer(b"".join([blake(f"{s}\n{t}".encode(), digest_size=8).digest()
                                   for s, t in zip(sources, targets, strict=True)]), dtype=np.uint64)


def _changed_lines(raw: list[bytes], lines: list[str]) -> dict[int, str]:
    """The lines whose output (text + '\\n' in UTF-8) differs from their raw bytes: invalid UTF-8, a '\\r'
    before the '\\n', a last line without '\\n'. Every other line can be written as it was read."""
    if b"".join(raw) == ("\n".join(lines) + "\n").encode("utf-8"):
        return {}
    return {i: text for i, (line, text) in enumerate(zip(raw, lines, strict=True))
            if line != (text + "\n").encode("utf-8")}


@dataclass(frozen=True)
class Job:
    first_line: int
    sources: list[bytes]
    targets: list[bytes]
    source_lang: str
    target_lang: str
    cfg: CleanConfig
    exact: bool      # digests needed for the duplicate filter
    near: bool       # ... and for the near-duplicate filter


@dataclass
class Judged:
    """What a worker sends back for a block: no text, except the lines whose output is not their input."""

    codes: np.ndarray                 # uint8 per pair: 0 kept, else 1 + the FILTERS index that dropped it
    exact: np.ndarray | None          # uint64 digests of the pairs
    near: np.ndarray | None           # ... of the normalised pairs
    changed_sources: dict[int, str]   # index in block -> decoded text, where it differs from the raw line
    changed_targets: dict[int, str]


def judge_block(job: Job) -> Judged:
    """A worker's part: decode a block, apply the per-pair filters, digest each pair (exact, normalised).

    The filters take the block in parts of _PART pairs: their numpy temporaries (a few bytes per character
    each) then stay ~30 MB a worker whatever the block, and smaller parts are no faster."""
    cfg = job.cfg
    sources = decode_lines(job.sources, job.first_line, TextStats(""))
    targets = decode_lines(job.targets, job.first_line, TextStats(""))
    normalize = job.near or (cfg.enabled and "copy" in cfg.filters)
    codes, exact, near = [], [], []
    for start in range(0, len(sources), _PART):
        src, trg = sources[start:start + _PART], targets[start:start + _PART]
        norm_s = normalized_lines(src, cfg.normalize) if normalize else None
        norm_t = normalized_lines(trg, cfg.normalize) if normalize else None
        codes.append(block_verdicts(src, trg, job.source_lang, job.target_lang, cfg, norm_s, norm_t)
                     if cfg.enabled else np.zeros(len(src), dtype=np.uint8))
        if job.exact:
            exact.append(_digests(src, trg))
        if job.near and norm_s is not None and norm_t is not None:
            near.append(_digests(norm_s, norm_t))
    return Judged(np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint8),
                   np.concatenate(exact) if job.exact and exact else None,
                   np.concatenate(near) if job.near and near else None,
                   _changed_lines(job.sources, sources), _changed_lines(job.targets, targets))


def resolve_duplicates(codes: np.ndarray, exact: np.ndarray | None, near: np.ndarray | None, seen_exact: DigestSet,
                        seen_near: DigestSet, keep_all: bool) -> np.ndarray:
    """The block's codes with duplicates added, and the digests of the pairs written remembered.

    The rule, pair by pair in file order: a pair no filter dropped is a duplicate if its digest is one
    of a pair written before (this block's included), else a near duplicate likewise; only pairs that
    are written (all of them with keep_all) are remembered. Pairs whose digests occur once in the block
    depend only on earlier blocks: settled for the whole block at once. The few that share a digest
    with another pair of the block are taken one by one, in order."""
    codes = codes.copy()
    relevant = np.ones(len(codes), dtype=bool) if keep_all else codes == 0
    dup_code, near_code = _CODES["duplicate"], _CODES["near_duplicate"]
    in_exact = seen_exact.contains(exact) if exact is not None else np.zeros(len(codes), dtype=bool)
    in_near = seen_near.contains(near) if near is not None else np.zeros(len(codes), dtype=bool)
    shared = np.zeros(len(codes), dtype=bool)
    rel = np.flatnonzero(relevant)
    for keys in (exact, near):
        if keys is not None and len(rel):
            _, inverse, counts = np.unique(keys[rel], return_inverse=True, return_counts=True)
            shared[rel[counts[inverse] > 1]] = True
    single = (codes == 0) & ~shared
    codes[single & in_exact] = dup_code
    codes[single & ~in_exact & in_near] = near_code
    local_exact: set[int] = set()
    local_near: set[int] = set()
    for i in np.flatnonzero(shared).tolist():
        if codes[i] == 0:
            if exact is not None and (in_exact[i] or int(exact[i]) in local_exact):
                codes[i] = dup_code
            elif near is not None and (in_near[i] or int(near[i]) in local_near):
                codes[i] = near_code
        if keep_all or codes[i] == 0:
            if exact is not None:
                local_exact.add(int(exact[i]))
            if near is not None:
                local_near.add(int(near[i]))
    written = relevant if keep_all else codes == 0
    if exact is not None:
        seen_exact.add(exact[written])
    if near is not None:
        seen_near.add(near[written])
    return codes
