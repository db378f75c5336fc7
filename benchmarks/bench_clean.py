"""The clean step's throughput and memory: the batched step against the one it replaced.

    .venv/bin/python -m benchmarks.bench_clean [--pairs 300000] [--repeat 3] [--workers N] [--digests 1000000]
                                               [--rss-pairs 2000000 ...]

Throughput: PAIRS training pairs made by benchmarks.bench_scale.make_corpus (the bundled sample, then
repeated with a typo a side: real text and the sample's own noise), cleaned with the defaults by each
implementation in a process of its own (``python -m benchmarks.bench_clean --one old|new``, so that the
peak RSS of its whole tree, workers included, is measured), alternating, best of --repeat runs each.
pairs/s is end to end: interpreter, imports, model loading and workers' start included, as the DAG's
task pays them. Both runs must write byte-identical files and the same report (the speed must not come
from doing something else). The baseline is benchmarks/clean_baseline.py, the step as it was.

Memory: --rss-pairs N... runs the new step alone at larger sizes (the old one would take ~4 minutes a
million pairs), to show what grows with the corpus; and the bytes per distinct pair of duplicate
detection: the old Python sets of 8-byte digests (tracemalloc) against pipeline_tasks.digestset.DigestSet,
for --digests random digests each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_scale import make_corpus
from benchmarks.common import PeakRSS
from pipeline_tasks.clean import LENGTH_FILTERS
from pipeline_tasks.parallel import default_workers


def _one(impl: str, src: str, trg: str, out: str, workers: int) -> None:
    """The child: one clean with the defaults; prints its report (with the time of the call itself)."""
    from pipeline_tasks.clean import LENGTH_FILTERS, CleanConfig

    if impl == "old":
        from benchmarks.clean_baseline import clean
    else:
        from pipeline_tasks.clean import clean
    # The old step had no length filters (subset had them): the new one runs without, so both do the same work.
    cfg = CleanConfig.from_dict(dict.fromkeys(LENGTH_FILTERS, False))
    t0 = time.perf_counter()
    report = clean(src, trg, f"{out}.en", f"{out}.de", "en", "de", cfg, workers=workers)
    print(json.dumps({"report": report, "call_s": time.perf_counter() - t0}))


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(impl: str, src: Path, trg: Path, out: Path, workers: int) -> tuple[float, int, dict]:
    """One run in a process of its own: wall seconds, peak RSS of its tree, and its output (with the CPU
    seconds of the whole tree: on a shared machine they say what the run cost when the wall time cannot)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_clean", "--one", impl, "--source", str(src), "--target",
           str(trg), "--out", str(out), "--workers", str(workers)]
    cpu0, t0 = _cpu_of_children(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as rss:
        stdout, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"clean ({impl}) failed with exit code {proc.returncode}")
    return seconds, rss.peak, {**json.loads(stdout), "cpu_s": _cpu_of_children() - cpu0}


def _set_bytes_per_entry(n: int) -> tuple[float, float]:
    """Bytes per entry of a Python set of 8-byte digests (tracemalloc) and of a DigestSet (its table)."""
    import tracemalloc

    import numpy as np

    from pipeline_tasks.digestset import DigestSet

    keys = np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    old = {k.to_bytes(8, "little") for k in keys.tolist()}
    py = (tracemalloc.get_traced_memory()[0] - before) / len(old)
    tracemalloc.stop()
    new = DigestSet()
    for block in np.array_split(keys, max(n // 20_000, 1)):
        new.add(block)
    return py, new.nbytes / len(new)


def _compare(work: Path, pairs: int, repeat: int, workers: int) -> None:
    """Old against new on the same corpus, alternating (a busy moment on a shared machine then hurts
    neither side more), best of `repeat` each; their outputs must be the same."""
    src, trg = make_corpus(work / f"corpus-{pairs}", pairs)
    best: dict[str, tuple[float, int, dict]] = {}
    for _ in range(repeat):
        for impl in ("old", "new"):
            run = _run(impl, src, trg, work / impl, workers)
            if impl not in best or run[0] < best[impl][0]:
                best[impl] = run
    for lang in ("en", "de"):
        assert (work / f"old.{lang}").read_bytes() == (work / f"new.{lang}").read_bytes(), f".{lang} files differ"
    new_report = best["new"][2]["report"]
    assert all(new_report["dropped"].pop(name) == 0 for name in LENGTH_FILTERS)  # off, and unknown to the old step
    assert best["old"][2]["report"] == new_report, "the reports differ"

    report = best["new"][2]["report"]
    print(f"clean, {pairs:,} pairs (benchmarks.bench_scale.make_corpus), {workers} worker(s), "
          f"best of {repeat} alternating runs each, end to end")
    for impl, label in (("old", "old (pair by pair, py3langid per side)"), ("new", "new (batched)")):
        seconds, peak, child = best[impl]
        print(f"  {label:<40} {seconds:7.2f} s  {pairs / seconds:8,.0f} pairs/s  peak RSS {peak / 2**20:5.0f} MiB  "
              f"CPU {child['cpu_s']:6.1f} s  (clean() itself {child['call_s']:.2f} s)")
    cpu_ratio = best["old"][2]["cpu_s"] / best["new"][2]["cpu_s"]
    print(f"  speed-up: {best['old'][0] / best['new'][0]:.2f}x wall, {cpu_ratio:.2f}x CPU   (outputs byte-identical, "
          f"reports equal: {report['pairs_out']:,} kept, {report['pairs_in'] - report['pairs_out']:,} dropped)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each implementation; the best time counts (0: no comparison)")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--digests", type=int, default=1_000_000, help="entries for the memory-per-digest figures")
    ap.add_argument("--rss-pairs", type=int, nargs="*", default=[],
                    help="also run the new step alone at these sizes (peak RSS as the corpus grows)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--one", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        _one(a.one, a.source, a.target, a.out, a.workers)
        return

    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-clean-"))
    if a.repeat:
        _compare(work, a.pairs, a.repeat, a.workers)
    for n in a.rss_pairs:
        s, t = make_corpus(work / f"corpus-{n}", n)
        seconds, peak, child = _run("new", s, t, work / f"rss-{n}", a.workers)
        print(f"  new alone at {n:>10,} pairs: {seconds:7.1f} s  {n / seconds:8,.0f} pairs/s  "
              f"peak RSS {peak / 2**20:5.0f} MiB  CPU {child['cpu_s']:6.1f} s")
    if a.digests:
        py, ours = _set_bytes_per_entry(a.digests)
        print(f"  duplicate memory per distinct pair and digest kind, {a.digests:,} digests: Python set of 8-byte "
              f"digests {py:.0f} B, DigestSet {ours:.0f} B (both kinds: x2)")


if __name__ == "__main__":
    main()
