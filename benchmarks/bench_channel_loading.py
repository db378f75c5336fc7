"""Channel loading at the start of a training job: the vectorised loader against the protobuf-per-record one.

    .venv/bin/python -m benchmarks.bench_channel_loading [--pairs 1000000] [--repeat 3] [--workdir DIR]

Builds a train channel of PAIRS pairs (the bundled sample repeated) with make_channels, then loads it
with the loader the container used before (``protobuf_load_channel``, kept here verbatim: one protobuf
message and a few small arrays per record) and with ``model.data_io.load_channel``, each in a fresh
subprocess, alternating, best of --repeat. Prints records/s of each and the ratio (load time only: not
the interpreter's start nor the imports), the peak RSS of each process (the kernel's high-water mark,
read as soon as the load returns) and its RSS before loading (the imports, torch included), and the
bytes the loaded arrays hold. Both loads must give the same pairs (compared by a digest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SAMPLE, repeated_corpus
from model import recordio
from model.constants import TRAIN_CHANNEL, VOCAB_CHANNEL


def protobuf_load_channel(channel_dir, channel: str, source_vocab_size: int, target_vocab_size: int,
                          max_seq_len_source: int, max_seq_len_target: int):
    """``data_io.load_channel`` as it was before the vectorised reader: the baseline, and the reference
    the tests compare the new loader with (same pairs, same errors)."""
    from model.data_io import ChannelError, channel_files, from_lists

    src: list[np.ndarray] = []
    trg: list[np.ndarray] = []
    for path in channel_files(channel_dir, channel):
        for n, (s, t) in enumerate(recordio.read_pairs(path)):
            if not s or not t:
                continue
            s_arr = np.asarray(s, dtype=np.int64)
            t_arr = np.asarray(t, dtype=np.int64)
            for side, arr, size in (("source", s_arr, source_vocab_size), ("target", t_arr, target_vocab_size)):
                bad = (arr < 0) | (arr >= size)
                if bad.any():
                    raise ChannelError(
                        f"channel '{channel}': {path.name} record {n}: {side} id {int(arr[bad][0])} is outside "
                        f"the {side} vocabulary (ids 0..{size - 1}); the channel and the vocab channel do not match"
                    )
            src.append(s_arr[:max_seq_len_source].astype(np.int32))
            trg.append(t_arr[:max_seq_len_target].astype(np.int32))
    if not src:
        raise ChannelError(f"channel '{channel}' is empty: its .rec files hold no usable sentence pair")
    return from_lists(src, trg)


def _child(loader: str, channel: Path, vocab_sizes: list[int], max_len: int) -> None:
    """Load once in this process and print what the parent needs as JSON."""
    import psutil

    from model import data_io

    load = data_io.load_channel if loader == "new" else protobuf_load_channel
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    data = load(channel, TRAIN_CHANNEL, *vocab_sizes, max_len, max_len)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256()   # of the values, whatever the dtype; in pieces, to stay small
    for a in (data.src, data.src_offsets, data.trg, data.trg_offsets):
        for i in range(0, len(a), 1 << 20):
            digest.update(a[i:i + (1 << 20)].astype(np.int64).tobytes())
    print(json.dumps({
        "seconds": seconds, "pairs": len(data), "rss_before": before, "rss_peak": peak,
        "bytes": sum(a.nbytes for a in (data.src, data.src_offsets, data.trg, data.trg_offsets)),
        "dtype": str(data.src.dtype), "digest": digest.hexdigest(),
    }))


def _run(loader: str, channel: Path, vocab_sizes: list[int], max_len: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_channel_loading", "--child", loader, "--channel", str(channel),
           "--vocab-sizes", *map(str, vocab_sizes), "--max-len", str(max_len)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{loader} loader failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each loader, alternating; the best time counts")
    ap.add_argument("--max-len", type=int, default=100, help="max_seq_len_source and _target")
    ap.add_argument("--workdir", type=Path, help="keeps the channel between runs")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--channel", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vocab-sizes", type=int, nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.channel, a.vocab_sizes, a.max_len)
        return

    from model.data_io import load_vocabularies
    from pipeline_tasks.channels import make_channels

    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-channel-loading-"))
    out = work / f"channels-{a.pairs}"
    if not (out / TRAIN_CHANNEL).is_dir():
        src, trg = repeated_corpus(work / f"corpus-{a.pairs}", a.pairs)
        make_channels(str(src), str(trg), str(SAMPLE / "val.en"), str(SAMPLE / "val.de"), out)
    vocab_sizes = [len(v) for v in load_vocabularies(out / VOCAB_CHANNEL)]
    size = sum(p.stat().st_size for p in (out / TRAIN_CHANNEL).rglob("*.rec"))

    best: dict[str, dict] = {}
    for _ in range(a.repeat):
        for loader in ("old", "new"):
            r = _run(loader, out / TRAIN_CHANNEL, vocab_sizes, a.max_len)
            if loader not in best or r["seconds"] < best[loader]["seconds"]:
                best[loader] = r
    old, new = best["old"], best["new"]
    assert old["digest"] == new["digest"] and old["pairs"] == new["pairs"], "the loaders disagree"

    mib = 2 ** 20
    print(f"channel loading, {new['pairs']:,} pairs ({size / mib:.0f} MiB of .rec, vocabularies "
          f"{vocab_sizes[0]:,}/{vocab_sizes[1]:,}), best of {a.repeat}, each in a fresh process")
    for name, r in (("protobuf per record (old)", old), ("vectorised (new)", new)):
        print(f"  {name:26s} {r['seconds']:7.2f} s {r['pairs'] / r['seconds']:11,.0f} records/s   "
              f"peak RSS {r['rss_peak'] / mib:7.1f} MiB (before loading {r['rss_before'] / mib:6.1f} MiB), "
              f"arrays {r['bytes'] / mib:6.1f} MiB ({r['dtype']} ids)")
    print(f"  speed-up: {old['seconds'] / new['seconds']:.1f}x   (identical pairs)")
    grown = new["rss_peak"] - new["rss_before"]
    print(f"  new loader: peak RSS - RSS before loading = {grown / mib:.1f} MiB for {new['bytes'] / mib:.1f} MiB "
          f"of arrays ({new['bytes'] / new['pairs']:.1f} bytes a pair)")


if __name__ == "__main__":
    main()
