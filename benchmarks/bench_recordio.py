"""recordio throughput and memory: our converter against the create_vocab_proto.py-style baseline.

    .venv/bin/python -m benchmarks.bench_recordio [--pairs 200000] [--repeat 3] [--rss-pairs 200000 2000000]

Throughput: end to end (count, prune, write vocab, convert train + validation) on PAIRS training
pairs (the bundled sample repeated) plus the sample's 3,000 validation pairs; prints both rates and
the ratio. Memory: peak RSS of the whole process tree (main + workers) of `python -m pipeline_tasks
recordio` at each size in --rss-pairs; with a repeated sample the vocabulary is constant, so any
growth would come from the conversion itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import aws_baseline
from benchmarks.common import SAMPLE, PeakRSS, repeated_corpus
from model.recordio import read_pairs
from pipeline_tasks.channels import make_channels


def _run_ours_subprocess(src: Path, trg: Path, out: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "pipeline_tasks", "-q", "recordio", "--train-source", str(src),
           "--train-target", str(trg), "--val-source", str(SAMPLE / "val.en"), "--val-target",
           str(SAMPLE / "val.de"), "--output", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    with PeakRSS(proc.pid) as rss:
        rc = proc.wait()
    if rc:
        raise SystemExit(f"recordio failed with exit code {rc}")
    return time.perf_counter() - t0, rss.peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--rss-pairs", type=int, nargs="*", default=[200_000, 2_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each converter; the best time counts")
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-recordio-"))
    src, trg = repeated_corpus(work / f"corpus-{a.pairs}", a.pairs)
    val_s, val_t = str(SAMPLE / "val.en"), str(SAMPLE / "val.de")

    # Best of N runs each, alternating, so that a busy moment on a shared machine hurts neither side.
    t_base = t_ours = float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        aws_baseline.make_channels(str(src), str(trg), val_s, val_t, str(work / "baseline"))
        t_base = min(t_base, time.perf_counter() - t0)
        t0 = time.perf_counter()
        make_channels(str(src), str(trg), val_s, val_t, work / "ours")
        t_ours = min(t_ours, time.perf_counter() - t0)

    # Same vocabularies, same records (the speed must not come from doing something else).
    # (Bytes may differ: the protobuf runtime serialises map entries in no fixed order.)
    for name in ("vocab.src.json", "vocab.trg.json"):
        assert json.loads((work / "baseline/vocab" / name).read_text()) == \
            json.loads((work / "ours/vocab" / name).read_text()), name
    assert list(read_pairs(work / "baseline/train/train.rec")) == list(read_pairs(work / "ours/train/train.rec"))

    total = a.pairs + 3000
    print(f"recordio end to end, {a.pairs:,} train + 3,000 validation pairs (best of {a.repeat})")
    print(f"  baseline (create_vocab_proto.py style): {t_base:7.2f} s  {total / t_base:10,.0f} pairs/s")
    print(f"  ours:                                   {t_ours:7.2f} s  {total / t_ours:10,.0f} pairs/s")
    print(f"  speed-up: {t_base / t_ours:.2f}x   (vocabularies and records identical)")

    for n in a.rss_pairs:
        s, t = repeated_corpus(work / f"corpus-{n}", n)
        secs, peak = _run_ours_subprocess(s, t, work / f"rss-{n}")
        print(f"  peak RSS (process tree) at {n:>9,} pairs: {peak / 2**20:7.1f} MiB  ({secs:.1f} s, "
              f"{(n + 3000) / secs:,.0f} pairs/s incl. start-up)")


if __name__ == "__main__":
    main()
