"""The straightforward converter that the `recordio` step is measured against.

It does what AWS's `create_vocab_proto.py` does, written plainly: count tokens with a Counter over a
token generator (special symbols filtered per token), prune by (count, token) descending, then build
and serialise one protobuf `Record` per pair in Python and frame it. Single process, no tricks.
The tests also use it as an independent reference for "same vocabulary ids, same records".
"""

from __future__ import annotations

import struct
from collections import Counter
from itertools import chain, islice

from model import record_pb2

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def _tokens(line: str):
    yield from line.rstrip().split()


def count(path: str) -> Counter:
    special = set(SPECIALS)
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        return Counter(tok for line in f for tok in _tokens(line) if tok not in special)


def prune(raw: Counter, num_words: int = 50000, min_count: int = 1) -> dict[str, int]:
    kept = sorted(((c, w) for w, c in raw.items() if c >= min_count), reverse=True)
    words = islice((w for _, w in kept), num_words)
    return {w: i for i, w in enumerate(chain(SPECIALS, words))}


def write_recordio(f, data: bytes) -> None:
    f.write(struct.pack("I", 0xCED7230A))
    f.write(struct.pack("I", len(data)))
    f.write(data)
    f.write(b"\x00" * ((((len(data) + 3) >> 2) << 2) - len(data)))


def convert(source: str, target: str, output: str, vsrc: dict[str, int], vtrg: dict[str, int]) -> int:
    n = 0
    with open(source, encoding="utf-8", errors="replace", newline="\n") as fs, \
            open(target, encoding="utf-8", errors="replace", newline="\n") as ft, open(output, "wb") as out:
        for ls, lt in zip(fs, ft):
            if ls.strip() == "" or lt.strip() == "":
                continue
            rec = record_pb2.Record()
            rec.features["source"].int32_tensor.values.extend([vsrc.get(t, 1) for t in _tokens(ls)])
            rec.features["target"].int32_tensor.values.extend([vtrg.get(t, 1) for t in _tokens(lt)])
            write_recordio(out, rec.SerializeToString())
            n += 1
    return n


def make_channels(train_source: str, train_target: str, val_source: str, val_target: str, out_dir: str) -> None:
    import json
    import os

    vsrc, vtrg = prune(count(train_source)), prune(count(train_target))
    for sub in ("train", "validation", "vocab"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    for name, v in (("vocab.src.json", vsrc), ("vocab.trg.json", vtrg)):
        with open(os.path.join(out_dir, "vocab", name), "w", encoding="utf-8") as f:
            json.dump(v, f, indent=4, ensure_ascii=False)
    convert(train_source, train_target, os.path.join(out_dir, "train", "train.rec"), vsrc, vtrg)
    convert(val_source, val_target, os.path.join(out_dir, "validation", "val.rec"), vsrc, vtrg)
