"""The whole corpus: every data step the DAG runs, at the size of WMT17 (≈6M pairs), and what training
makes of the result.

    .venv/bin/python -m benchmarks.bench_scale [--pairs 1000000 6000000] [--workdir W] [--keep]

For each size, a corpus is made from the bundled sample's training split, repeated and lightly varied
(every repeated pair has one word of each side misspelt: a swapped, doubled or dropped letter, so no
pair repeats, the clean step's duplicate filters have nothing to eat, and the vocabulary grows with the
corpus as a real one does: a long tail of rare types). Then each step runs as the DAG runs it, as its
command-line subcommand in a process of its own:

    subset (all pairs) → clean (the defaults: max_len 100, max_ratio 3, …) → tokenize (whitespace; and SentencePiece
    BPE 32k, joint, learned on a sample of the training text) → recordio (of each) → upload (to a local
    root, and to S3 on a moto server on 127.0.0.1)

and the training container's channel loading (model.data_io.load_channel on the BPE channels), each with
its wall time, throughput and the peak RSS of its whole process tree (workers included). The sizes run
one after the other, so that memory can be compared: a step whose peak grows with the corpus holds
something per pair.

It prints a table per size and one comparing the sizes. Run by hand (1M and 6M pairs take about 15
minutes on 2 cores and ~12 GB of disk in the work folder); not part of `make test` or `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import SAMPLE, PeakRSS

ROOT = Path(__file__).resolve().parent.parent
STEPS_PREP = ("subset", "clean", "tokenize bpe", "recordio bpe", "upload local", "upload s3")


# --- the corpus ------------------------------------------------------------------------------------------

def _misspell(tokens: list[str], rng: random.Random) -> None:
    """One word of the line gets a typo (in place): the kind of noise a web-crawled corpus is full of."""
    words = [i for i, t in enumerate(tokens) if len(t) >= 4 and t.isalpha()]
    if not words:
        tokens.append(tokens[-1] if tokens else "x")  # a line without a word long enough: repeat its last token
        return
    i = rng.choice(words)
    w = tokens[i]
    j = rng.randrange(1, len(w) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j] + w[j + 1:]
    tokens[i] = w


def make_corpus(out: Path, pairs: int, seed: int = 17) -> tuple[Path, Path]:
    """train.en/train.de of `pairs` lines: the sample as it is, then repeated with a typo on each side of
    every repeated pair (reproducible by seed). Written line by line: memory holds the sample only."""
    out.mkdir(parents=True, exist_ok=True)
    src_path, trg_path = out / "train.en", out / "train.de"
    marker = out / f".complete-{pairs}-{seed}"
    if marker.exists():
        return src_path, trg_path
    src = (SAMPLE / "train.en").read_text(encoding="utf-8").splitlines()
    trg = (SAMPLE / "train.de").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    with open(src_path, "w", encoding="utf-8") as fs, open(trg_path, "w", encoding="utf-8") as ft:
        for n in range(pairs):
            s, t = src[n % len(src)], trg[n % len(trg)]
            if n >= len(src):
                ss, tt = s.split(), t.split()
                _misspell(ss, rng)
                _misspell(tt, rng)
                s, t = " ".join(ss), " ".join(tt)
            fs.write(s + "\n")
            ft.write(t + "\n")
    marker.touch()
    return src_path, trg_path


# --- running a step --------------------------------------------------------------------------------------

def run_step(name: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """One subcommand in a process of its own: wall time, peak RSS of its tree, its JSON result."""
    cmd = [sys.executable, "-m", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    with PeakRSS(proc.pid, interval=0.05) as rss:
        out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    try:
        result = json.loads(out) if out.strip() else {}
    except json.JSONDecodeError:
        result = {"stdout": out[-500:]}
    print(f"  {name:<16} {seconds:8.1f} s  peak RSS {rss.peak / 2**20:7.0f} MiB", flush=True)
    return {"seconds": seconds, "rss": rss.peak, "result": result}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 on 127.0.0.1 in a process of its own (it keeps objects in memory: not counted as ours)."""

    def __enter__(self) -> MotoServer:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id="bench",
                     aws_secret_access_key="bench", region_name="us-east-1").create_bucket(Bucket="bench")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


LOAD_SNIPPET = """
import json, sys, time
from model import data_io
t0 = time.perf_counter()
src, trg = data_io.load_vocabularies(sys.argv[1] + "/vocab")
data = data_io.load_channel(sys.argv[1] + "/train", "train", len(src), len(trg), 100, 100)
seconds = time.perf_counter() - t0
held = data.src.nbytes + data.trg.nbytes + data.src_offsets.nbytes + data.trg_offsets.nbytes
print(json.dumps({"pairs": len(data), "seconds": seconds, "bytes_held": held}))
"""


def run_size(work: Path, pairs: int, bpe_size: int, bpe_sample: int, keep: bool) -> dict:
    print(f"\n== {pairs:,} pairs ==", flush=True)
    t0 = time.perf_counter()
    src, trg = make_corpus(work / "corpus", pairs)
    print(f"  corpus made in {time.perf_counter() - t0:.0f} s: {src.stat().st_size / 2**20:.0f} + "
          f"{trg.stat().st_size / 2**20:.0f} MiB", flush=True)
    val = {"en": str(SAMPLE / "val.en"), "de": str(SAMPLE / "val.de")}
    steps: dict[str, dict] = {}
    p = "pipeline_tasks"
    d = work / "out"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    steps["subset"] = run_step("subset", [p, "subset", "--source", str(src), "--target", str(trg),
                                          "--output-source", str(d / "sub.en"), "--output-target", str(d / "sub.de")])
    steps["clean"] = run_step("clean", [p, "clean", "--source", str(d / "sub.en"), "--target", str(d / "sub.de"),
                                        "--output-source", str(d / "clean.en"), "--output-target",
                                        str(d / "clean.de"), "--source-lang", "en", "--target-lang", "de"])
    for mode in ("whitespace", "bpe"):
        extra = ["--bpe-vocab-size", str(bpe_size), "--joint-bpe", "--bpe-sample", str(bpe_sample)] \
            if mode == "bpe" else []
        steps[f"tokenize {mode}"] = run_step(
            f"tokenize {mode}", [p, "tokenize", "--train-source", str(d / "clean.en"), "--train-target",
                                 str(d / "clean.de"), "--val-source", val["en"], "--val-target", val["de"],
                                 "--mode", "whitespace", "--detokenizer", "none", "--output", str(d / f"tok-{mode}"),
                                 *extra])
        steps[f"recordio {mode}"] = run_step(
            f"recordio {mode}", [p, "recordio", "--train-source", str(d / f"tok-{mode}" / "train.en"),
                                 "--train-target", str(d / f"tok-{mode}" / "train.de"), "--val-source",
                                 str(d / f"tok-{mode}" / "val.en"), "--val-target", str(d / f"tok-{mode}" / "val.de"),
                                 "--tokenizer", str(d / f"tok-{mode}"), "--output", str(d / f"ch-{mode}")])
        if mode == "whitespace" and not keep:
            shutil.rmtree(d / f"tok-{mode}")
    steps["upload local"] = run_step("upload local", [p, "upload", "--channels", str(d / "ch-bpe"),
                                                      "--destination", str(d / "root")])
    with MotoServer() as moto:
        steps["upload s3"] = run_step("upload s3", [p, "upload", "--channels", str(d / "ch-bpe"),
                                                    "--destination", "s3://bench/wmt17"], moto.env)
    steps["channel loading"] = _load(d / "ch-bpe")
    out = {"pairs": pairs, "steps": steps,
           "clean_pairs": steps["clean"]["result"].get("report", steps["clean"]["result"]).get("train", {}),
           "records": steps["recordio bpe"]["result"]["train"]["records"],
           "types_whitespace": (steps["recordio whitespace"]["result"]["vocab"].get("source_types"),
                                steps["recordio whitespace"]["result"]["vocab"].get("target_types")),
           "bpe_training_seconds": steps["tokenize bpe"]["result"].get("bpe_training_seconds"),
           "channel_bytes": sum(f.stat().st_size for f in (d / "ch-bpe").rglob("*") if f.is_file())}
    if not keep:
        shutil.rmtree(d, ignore_errors=True)
    return out


def _load(channels: Path) -> dict:
    cmd = [sys.executable, "-c", LOAD_SNIPPET, str(channels)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakRSS(proc.pid, interval=0.05) as rss:
        out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"channel loading failed: {err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  {'channel loading':<16} {result['seconds']:8.1f} s  peak RSS {rss.peak / 2**20:7.0f} MiB "
          f"({result['pairs'] / result['seconds']:,.0f} records/s, {result['bytes_held'] / 2**20:,.0f} MiB held; "
          f"process {time.perf_counter() - t0:.1f} s)", flush=True)
    return {"seconds": result["seconds"], "rss": rss.peak, "result": result}


def report(runs: list[dict]) -> None:
    print("\n| step | " + " | ".join(f"{r['pairs'] / 1e6:g}M pairs: time, pairs/s, peak RSS" for r in runs) + " |")
    print("| --- | " + " | ".join("---" for _ in runs) + " |")
    names = list(runs[0]["steps"])
    for name in names:
        cells = []
        for r in runs:
            s = r["steps"][name]
            cells.append(f"{s['seconds']:.0f} s, {r['pairs'] / s['seconds']:,.0f}/s, {s['rss'] / 2**20:,.0f} MiB")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for r in runs:
        prep = sum(r["steps"][n]["seconds"] for n in STEPS_PREP)
        top = max(r["steps"].values(), key=lambda s: s["rss"])
        print(f"{r['pairs']:,} pairs: data preparation (subset, clean, tokenize bpe, recordio bpe, both uploads) "
              f"{prep / 60:.1f} min; largest peak RSS {top['rss'] / 2**30:.2f} GiB; {r['records']:,} records, "
              f"{r['channel_bytes'] / 2**20:,.0f} MiB of channels; word types (whitespace) {r['types_whitespace']}; "
              f"SentencePiece training {r['bpe_training_seconds']} s")
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        print(f"\npeak RSS, {b['pairs'] / 1e6:g}M vs {a['pairs'] / 1e6:g}M pairs (flat = about 1.0):")
        for name in names:
            print(f"  {name:<16} {b['steps'][name]['rss'] / a['steps'][name]['rss']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 6_000_000])
    ap.add_argument("--bpe-vocab-size", type=int, default=32000)
    ap.add_argument("--bpe-sample", type=int, default=1_000_000, help="sentences SentencePiece learns from")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the outputs of each step")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"work folder {work}; {os.cpu_count()} cores", flush=True)
    runs = [run_size(work / f"n{n}", n, a.bpe_vocab_size, a.bpe_sample, a.keep) for n in a.pairs]
    (work / "bench-scale.json").write_text(json.dumps(runs, indent=2, default=str))
    report(runs)


if __name__ == "__main__":
    main()
