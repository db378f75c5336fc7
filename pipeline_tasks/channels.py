"""The `recordio` step: vocabularies plus RecordIO-protobuf train/validation channels (docs/ARCHITECTURE.md §3).

Produces what AWS's `create_vocab_proto.py` produces from the same whitespace-tokenized files (same
vocabulary ids, same records) but keeps records in input order, streams with flat memory, fails on
misaligned input instead of silently truncating, and uses every core.

How it is fast (see benchmarks/bench_recordio.py): each file is tokenized exactly once. Pass 1
(`scan_file`, one file per worker) splits blocks of lines, gives every distinct token a provisional
id in first-seen order, and spills the ids (int32) and per-line token counts to a scratch file; the
counts for the vocabulary fall out of `numpy.bincount`. Pass 2 (`encode_block`, blocks in
parallel) maps provisional ids to final ids with one array lookup, writes all varints at once with
numpy, and only the few header bytes per record are assembled in Python.

Output layout (the three SageMaker channels plus a report outside them):
    DIR/train/train.rec  DIR/validation/val.rec  DIR/vocab/vocab.src.json  DIR/vocab/vocab.trg.json
    DIR/recordio-report.json
With ``shards`` = N > 1 the training split is N files, ``train-00001-of-0000N.rec`` …, for a training job
whose instances each read their own files (ShardedByS3Key).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import count
from operator import itemgetter
from pathlib import Path

import numpy as np

from model import recordio, vocab
from model.constants import (
    CHANNELS,
    TOKENIZER_FILE,
    TRAIN_CHANNEL,
    TRAIN_RECORDIO_FILE,
    VALIDATION_CHANNEL,
    VALIDATION_RECORDIO_FILE,
    VOCAB_CHANNEL,
    VOCAB_SOURCE_FILE,
    VOCAB_TARGET_FILE,
)
from model.tokenizer import copy_tokenizer, tokenizer_files
from pipeline_tasks.atomic import staged_dir
from pipeline_tasks.parallel import WorkerPool, default_workers
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import BLOCK_LINES, MisalignedError, TextStats, decode_lines, iter_raw_blocks, open_binary

log = logging.getLogger(__name__)

REPORT_FILE = "recordio-report.json"

# Below this many input bytes, worker processes cost more than they save.
_PARALLEL_MIN_BYTES = 8 << 20


@dataclass
class VocabConfig:
    """How the two vocabularies are made (or which existing ones are reused)."""

    num_words_source: int = vocab.DEFAULT_NUM_WORDS
    num_words_target: int = vocab.DEFAULT_NUM_WORDS
    min_count_source: int = vocab.DEFAULT_MIN_COUNT
    min_count_target: int = vocab.DEFAULT_MIN_COUNT
    joint: bool = False
    source_json: str | None = None
    target_json: str | None = None


@dataclass
class ConversionStats:
    """What converting one split did; every input line is accounted for (lines = records + blank)."""

    split: str
    lines: int = 0
    records: int = 0
    blank_pairs_skipped: int = 0
    source_unk_tokens: int = 0
    target_unk_tokens: int = 0
    source_text: dict = field(default_factory=dict)
    target_text: dict = field(default_factory=dict)


@dataclass
class Scan:
    """Pass 1 over one file: its distinct tokens, their counts, and where the id stream was spilled."""

    path: str
    ids_file: str
    lens_file: str
    tokens: list[str]            # provisional id -> token
    counts: np.ndarray           # provisional id -> occurrences
    blocks: list[tuple[int, int]]  # per block: (lines, tokens)
    text: TextStats

    @property
    def lines(self) -> int:
        return sum(n for n, _ in self.blocks)


# --- pass 1 ------------------------------------------------------------------------------------

# Characters that str.split() treats as whitespace but bytes.split() does not (all of them: a unit
# test checks this list against every code point). Replacing them with a space before a bytes split
# gives exactly the tokens of str.split() on the decoded line, at bytes speed.
_EXTRA_WHITESPACE = "\x1c\x1d\x1e\x1f\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"
_EXTRA_WHITESPACE_RE = re.compile(b"|".join(re.escape(c.encode("utf-8")) for c in _EXTRA_WHITESPACE))
_SENTINEL = b"\x00"   # marks line ends inside a block; a block holding a real NUL goes line by line


def _utf8_block(raw: list[bytes], text: TextStats) -> bytes:
    """The block as valid UTF-8 (invalid bytes replaced and counted), ending with a newline."""
    block = b"".join(raw)
    try:
        block.decode("utf-8")
        text.lines += len(raw)
    except UnicodeDecodeError:
        block = "\n".join(decode_lines(raw, text.lines + 1, text)).encode("utf-8")
    if not block.endswith(b"\n"):
        block += b"\n"
    if _EXTRA_WHITESPACE_RE.search(block):
        block = _EXTRA_WHITESPACE_RE.sub(b" ", block)
    return block


def scan_file(item: tuple[str, str]) -> Scan:
    """Tokenize a file once: provisional ids to `<scratch>.ids`, tokens per line to `<scratch>.lens`."""
    path, scratch = item
    text = TextStats(path)
    ids_of: defaultdict[bytes, int] = defaultdict(count().__next__)
    sentinel_id = ids_of[_SENTINEL]
    blocks: list[tuple[int, int]] = []
    counts = np.zeros(0, np.int64)
    with open_binary(path, text) as f, open(scratch + ".ids", "wb") as fi, open(scratch + ".lens", "wb") as fl:
        for raw in iter_raw_blocks(f, BLOCK_LINES):
            block = _utf8_block(raw, text)
            if _SENTINEL not in block:
                toks = block.replace(b"\n", b" \x00 ").split()
                got = itemgetter(*toks)(ids_of) if len(toks) > 1 else (ids_of[toks[0]],)
                ids = np.fromiter(got, dtype=np.int32, count=len(toks))
                ends = np.flatnonzero(ids == sentinel_id)
                lens = np.diff(ends, prepend=-1) - 1
                ids = ids[ids != sentinel_id]
            else:
                per_line = [line.split() for line in block[:-1].split(b"\n")]
                lens = np.array([len(t) for t in per_line], dtype=np.int64)
                ids = np.array([ids_of[t] for ts in per_line for t in ts], dtype=np.int32)
            ids.tofile(fi)
            lens.astype(np.int32).tofile(fl)
            blocks.append((len(lens), len(ids)))
            if len(ids):
                bc = np.bincount(ids, minlength=len(counts))
                bc[: len(counts)] += counts
                counts = bc
    tokens = [""] * len(ids_of)
    for tok, idx in ids_of.items():
        tokens[idx] = tok.decode("utf-8")
    counts = np.pad(counts, (0, len(tokens) - len(counts)))
    return Scan(path, scratch + ".ids", scratch + ".lens", tokens, counts, blocks, text)


def counts_of(scan: Scan) -> dict[str, int]:
    """token -> count for a scanned file (the sentinel and unseen entries have count 0 and drop out)."""
    return {tok: int(c) for tok, c in zip(scan.tokens, scan.counts.tolist()) if c}


def remap_for(scan: Scan, voc: vocab.Vocab) -> np.ndarray:
    """provisional id -> final id (unknown tokens -> <unk>); tokens spelled like specials keep their ids."""
    get = voc.get
    return np.fromiter((get(t, vocab.UNK_ID) for t in scan.tokens), dtype=np.int32, count=len(scan.tokens))


# --- pass 2 ------------------------------------------------------------------------------------

def varint_table(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of non-negative int32 ids as rows of an (n, width) uint8 table, plus bytes used per row."""
    u = ids.astype(np.uint32)
    nb = np.ones(len(u), np.uint8)
    for shift in (7, 14, 21, 28):
        nb += u >= (1 << shift)
    width = int(nb.max()) if len(nb) else 1
    k = np.arange(width, dtype=np.uint32)
    table = ((u[:, None] >> (7 * k)) & 0x7F).astype(np.uint8)
    table |= ((k[None, :] + 1 < nb[:, None]) * 0x80).astype(np.uint8)
    return table, nb


@lru_cache(maxsize=8)
def _load_lookup(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["table"], z["nbytes"], z["unk"]


def _read_block(path: str, offset: int, n: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.int32, count=n, offset=4 * offset)


def _side_bytes(ids_file: str, lens_file: str, lookup: str, line_off: int, n_lines: int,
                tok_off: int, n_toks: int) -> tuple[bytes, list[int], np.ndarray, int]:
    """One side of a block: all id varints as bytes, per-line byte offsets, tokens per line, unk count."""
    table, nbytes, unk = _load_lookup(lookup)
    prov = _read_block(ids_file, tok_off, n_toks)
    lens = _read_block(lens_file, line_off, n_lines)
    nb = nbytes[prov]
    buf = table[prov][np.arange(table.shape[1])[None, :] < nb[:, None]].tobytes()
    byte_end = np.concatenate(([0], np.cumsum(nb, dtype=np.int64)))
    offsets = byte_end[np.concatenate(([0], np.cumsum(lens, dtype=np.int64)))]
    return buf, offsets.tolist(), lens, int(np.count_nonzero(unk[prov]))


def encode_block(item: tuple) -> tuple[list[bytes], dict]:
    """Pass 2 for one aligned block: the framed records of each shard (line i of the split goes to shard
    i mod the number of shards), and what was counted."""
    src, trg, line_off, n_lines, shards = item
    s_buf, so, s_lens, s_unk = _side_bytes(*src[:3], line_off, n_lines, *src[3:])
    t_buf, to, t_lens, t_unk = _side_bytes(*trg[:3], line_off, n_lines, *trg[3:])
    keep = np.flatnonzero((s_lens > 0) & (t_lens > 0)).tolist()
    sh, th, fh, pad = recordio.SOURCE_HEADERS, recordio.TARGET_HEADERS, recordio.FRAME_HEADERS, recordio.PADDING
    parts: list[list[bytes]] = [[] for _ in range(shards)]
    for i in keep:
        a, b, c, d = so[i], so[i + 1], to[i], to[i + 1]
        hs, ht = sh[b - a], th[d - c]
        n = len(hs) + b - a + len(ht) + d - c
        parts[(line_off + i) % shards].extend((fh[n], hs, s_buf[a:b], ht, t_buf[c:d], pad[n & 3]))
    counts = {"lines": n_lines, "records": len(keep), "blank": n_lines - len(keep), "src_unk": s_unk, "trg_unk": t_unk}
    return [b"".join(p) for p in parts], counts


def shard_names(name: str, shards: int) -> list[str]:
    """The file names of a split written as `shards` files: ``train.rec`` alone, or ``train-00001-of-00004.rec``
    …, whose key order is the shard order (ShardedByS3Key hands host i of N the keys i, i+N, …)."""
    if shards == 1:
        return [name]
    stem, ext = os.path.splitext(name)
    return [f"{stem}-{i + 1:05d}-of-{shards:05d}{ext}" for i in range(shards)]


def convert(split: str, src: Scan, trg: Scan, outputs: list[Path], src_vocab: vocab.Vocab, trg_vocab: vocab.Vocab,
            scratch: Path, pool: WorkerPool) -> ConversionStats:
    """Write one split's `.rec` file(s) from its two scans, records in input order (in each shard: with
    several `outputs`, line i goes to output i mod their number)."""
    stats = ConversionStats(split)
    lookups = []
    for side, scan, voc in (("src", src, src_vocab), ("trg", trg, trg_vocab)):
        final = remap_for(scan, voc)
        table, nbytes = varint_table(final)
        p = scratch / f"{split}.{side}.lookup.npz"
        np.savez(p, table=table, nbytes=nbytes, unk=final == vocab.UNK_ID)
        lookups.append(str(p))

    def items():
        line_off = s_off = t_off = 0
        for (n_lines, s_n), (_, t_n) in zip(src.blocks, trg.blocks):
            yield ((src.ids_file, src.lens_file, lookups[0], s_off, s_n),
                   (trg.ids_file, trg.lens_file, lookups[1], t_off, t_n), line_off, n_lines, len(outputs))
            line_off, s_off, t_off = line_off + n_lines, s_off + s_n, t_off + t_n

    progress = Progress(log, f"recordio {split}", "pairs", total=src.lines)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p, "wb")) for p in outputs]
        for data, c in pool.map(encode_block, items()):
            for f, part in zip(files, data):
                f.write(part)
            stats.lines += c["lines"]
            stats.records += c["records"]
            stats.blank_pairs_skipped += c["blank"]
            stats.source_unk_tokens += c["src_unk"]
            stats.target_unk_tokens += c["trg_unk"]
            progress.update(c["lines"])
    progress.done()
    stats.source_text, stats.target_text = src.text.as_dict(), trg.text.as_dict()
    if stats.blank_pairs_skipped:
        log.warning("%s: skipped %d pair(s) with a blank side", split, stats.blank_pairs_skipped)
    if stats.records == 0:
        raise ValueError(f"{split}: no sentence pairs in {src.path} / {trg.path} "
                         f"({stats.lines} lines, {stats.blank_pairs_skipped} with a blank side)")
    return stats


def build_vocabs(src: Scan, trg: Scan, cfg: VocabConfig) -> tuple[vocab.Vocab, vocab.Vocab]:
    """The configured vocabularies: loaded where given, else pruned from the training counts."""
    given_src = vocab.load(cfg.source_json) if cfg.source_json else None
    given_trg = vocab.load(cfg.target_json) if cfg.target_json else None
    if cfg.joint:
        if given_src is not None or given_trg is not None:
            shared = given_src if given_src is not None else given_trg
            return shared, shared  # type: ignore[return-value]
        joint = counts_of(src)
        for tok, c in counts_of(trg).items():
            joint[tok] = joint.get(tok, 0) + c
        shared = vocab.prune(joint, cfg.num_words_source, cfg.min_count_source)
        log.info("joint vocabulary: %d types counted, %d entries", len(joint), len(shared))
        return shared, shared
    out = []
    for given, scan, num, mc, name in ((given_src, src, cfg.num_words_source, cfg.min_count_source, "source"),
                                       (given_trg, trg, cfg.num_words_target, cfg.min_count_target, "target")):
        if given is None:
            counts = counts_of(scan)
            given = vocab.prune(counts, num, mc)
            log.info("%s vocabulary: %d types counted, %d entries", name, len(counts), len(given))
        out.append(given)
    return out[0], out[1]


def make_channels(train_source: str, train_target: str, val_source: str, val_target: str,
                  output: str | os.PathLike[str], vocab_cfg: VocabConfig | None = None,
                  workers: int | None = None, tokenizer_dir: str | os.PathLike[str] | None = None,
                  vocab_origin: str | None = None, shards: int = 1) -> dict:
    """Build vocabularies and both RecordIO channels under `output`; returns the report.

    `tokenizer_dir` (the tokenize step's output) puts the tokenizer into the vocab channel beside the
    vocabularies: training copies it into the model, so that serving and batch transform can take raw
    text. The built-in algorithm reads only the two vocabulary files and is not bothered by it.
    Everything is staged and published together, so a failure leaves `output` as it was, and success
    replaces it whole (training reads every .rec of a channel: no file of an earlier output may stay).
    `vocab_origin` says in the report where given vocabularies came from (a parent model's URI), since
    their local paths are temporary. `shards` > 1 writes the training split as that many files (line i in
    file i mod `shards`), so that a job of several instances can hand each its own files (ShardedByS3Key).
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a whole number >= 1, got {shards!r}")
    if tokenizer_dir is not None and not tokenizer_files(tokenizer_dir):
        raise FileNotFoundError(f"{tokenizer_dir}: no {TOKENIZER_FILE} (the tokenize step's output folder)")
    vocab_cfg = vocab_cfg or VocabConfig()
    inputs = {"train.src": train_source, "train.trg": train_target, "val.src": val_source, "val.trg": val_target}
    for p in inputs.values():
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
    total_bytes = sum(os.path.getsize(p) for p in inputs.values())
    workers = workers or default_workers()
    if total_bytes < _PARALLEL_MIN_BYTES:
        workers = 1
    protected = [*inputs.values(), tokenizer_dir, vocab_cfg.source_json, vocab_cfg.target_json]
    with staged_dir(output, protected) as stage, WorkerPool(workers) as pool:
        scratch = stage / ".scratch"
        scratch.mkdir()
        progress = Progress(log, "recordio scan", "files", total=len(inputs))
        scans: dict[str, Scan] = {}
        for name, scan in zip(inputs, pool.map(scan_file, [(p, str(scratch / n)) for n, p in inputs.items()])):
            scans[name] = scan
            scan.text.warn_if_replaced()
            progress.update(1)
        progress.done()
        for split in ("train", "val"):
            s, t = scans[f"{split}.src"], scans[f"{split}.trg"]
            if s.lines != t.lines:
                raise MisalignedError(s.path, s.lines, t.path, t.lines)
        src_vocab, trg_vocab = build_vocabs(scans["train.src"], scans["train.trg"], vocab_cfg)
        for ch in CHANNELS:
            (stage / ch).mkdir()
        vocab.save(src_vocab, stage / VOCAB_CHANNEL / VOCAB_SOURCE_FILE)
        vocab.save(trg_vocab, stage / VOCAB_CHANNEL / VOCAB_TARGET_FILE)
        tokenizer = copy_tokenizer(tokenizer_dir, stage / VOCAB_CHANNEL) if tokenizer_dir is not None else []
        train = convert("train", scans["train.src"], scans["train.trg"],
                        [stage / TRAIN_CHANNEL / n for n in shard_names(TRAIN_RECORDIO_FILE, shards)],
                        src_vocab, trg_vocab, scratch, pool)
        if train.records < shards:
            raise ValueError(f"train: {train.records} records cannot fill {shards} shards")
        val = convert("validation", scans["val.src"], scans["val.trg"],
                      [stage / VALIDATION_CHANNEL / VALIDATION_RECORDIO_FILE], src_vocab, trg_vocab, scratch, pool)
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()
        report = {"vocab": {"source_size": len(src_vocab), "target_size": len(trg_vocab),
                            "source_types": int(np.count_nonzero(scans["train.src"].counts)),
                            "target_types": int(np.count_nonzero(scans["train.trg"].counts)), **asdict(vocab_cfg),
                            **({"reused_from": vocab_origin} if vocab_origin else {})},
                  "tokenizer_files": tokenizer, "train": {**asdict(train), "shards": shards},
                  "validation": asdict(val)}
        (stage / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("channels written to %s: %d train and %d validation records", output, train.records, val.records)
    return report
