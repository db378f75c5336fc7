"""The endpoint under slow clients and load: /ping latency (p50/p99/max, and how many pings missed
SageMaker's 2 s limit) with 0/4/16/64 slow clients and with k long decodes in flight, and the throughput
of short requests; optionally against the server of an earlier commit as the baseline.

    .venv/bin/python -m benchmarks.bench_serve [--model DIR] [--seconds 8] [--baseline-ref REF]

- server: ``container/serve`` as a process on 127.0.0.1 with this machine's defaults (workers: cores/4,
  at least 1, so 1 on 2 CPUs; 4 decode threads; header timeout 10 s), as SageMaker would start it.
- model: --model, or one trained here: bench_transform's demo-size LSTM (128 hidden, 8,000-word
  vocabularies) for --updates updates; it decodes the sample's test sentences with its beam (5).
- slow client: connects, sends ``POST /invocations HTTP/1.1`` and then one header line a second; when the
  server drops it (our header timeout), it reconnects at once, as a slowloris would.
- /ping: a new connection per ping, one every 100 ms, 2 s timeout (SageMaker's limit): a ping that times
  out counts as 2 s and as missed.
- long decode: 300 sentences of the sample's test split per request, k clients posting back to back
  (the Translator decodes one request at a time, so k > 1 queues); short request: one sentence, failed
  when not answered within 5 s.
- baseline (--baseline-ref REF): the same scenarios against ``container/serve`` and ``serving.py`` as
  they were at git REF (e.g. gunicorn gthread + Flask before the event-loop server), run from a copy.

All clients run on asyncio in this process; the machine's load average is printed, as it is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import SAMPLE

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PING_TIMEOUT_S = 2.0      # SageMaker takes a slower /ping for a dead container
PING_EVERY_S = 0.1
LONG_SENTENCES = 300
SHORT_TIMEOUT_S = 5.0     # a one-sentence request not answered by then has failed
log = logging.getLogger("bench_serve")


# --- the server ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def baseline_container(ref: str, dest: Path) -> Path:
    """``container/serve`` and ``serving.py`` as they were at `ref` (model/ comes from PYTHONPATH)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("serve", "serving.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:container/{name}"], check=True,
                              capture_output=True).stdout
        (dest / name).write_bytes(text)
    return dest / "serve"


class Server:
    """``serve`` on the model under a SageMaker-like root, for the duration of a ``with`` block."""

    def __init__(self, serve: Path, model_dir: Path, root: Path, env: dict[str, str] | None = None) -> None:
        self.serve, self.model_dir, self.root, self.extra = serve, model_dir, root, env or {}
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        (self.root / "model").parent.mkdir(parents=True, exist_ok=True)
        if not (self.root / "model").exists():
            (self.root / "model").symlink_to(self.model_dir.resolve(), target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQ2SEQ_", "SAGEMAKER_"))}
        env.update({"SAGEMAKER_BASE_DIR": str(self.root), "SAGEMAKER_BIND_TO_PORT": str(self.port),
                    "SEQ2SEQ_BIND_HOST": HOST, "SEQ2SEQ_TEXT_FORMAT": "tokens", "PYTHONPATH": str(ROOT),
                    **self.extra})
        self.log = open(self.root / f"serve-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(self.serve)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/ping", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("serve did not answer /ping within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


# --- the clients -----------------------------------------------------------------------------------------

def http_request(method: str, path: str, body: bytes = b"", content_type: str | None = None) -> bytes:
    headers = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return (headers + "\r\n").encode() + body


async def exchange(port: int, raw: bytes, timeout_s: float) -> tuple[float, int | None]:
    """(seconds, status) of one request on a new connection; status None when it failed or timed out."""
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(raw)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is None:
                await reader.read()
            else:
                await reader.readexactly(length)
            status = int(head.split(b" ", 2)[1])
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        status = None
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - start, status


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    connections: int = 0
    dropped: int = 0


async def slow_client(port: int, stop: asyncio.Event, counts: Counts) -> None:
    """A header line a second, reconnecting whenever the server drops the connection."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        counts.connections += 1
        try:
            writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            i = 0
            while not stop.is_set():
                try:
                    if not await asyncio.wait_for(reader.read(4096), 1.0):
                        counts.dropped += 1  # the server closed it
                        break
                    continue  # its answer (a 408); the close follows
                except TimeoutError:
                    pass
                writer.write(f"X-Slow-{i}: x\r\n".encode())
                await writer.drain()
                i += 1
        except OSError:
            counts.dropped += 1
        finally:
            writer.close()


async def looping_client(port: int, raw: bytes, stop: asyncio.Event, counts: Counts, timeout_s: float,
                         inside: Callable[[], bool]) -> None:
    """Posts `raw` back to back; counts the answers that arrive inside the measured window, and the
    requests started inside it that failed or timed out (also after it: a hung request is a failure).
    Latencies are kept for every answer, in the window or not (a long decode may outlast it)."""
    while not stop.is_set():
        started_inside = inside()
        seconds, status = await exchange(port, raw, timeout_s)
        if status == 200:
            counts.done += inside()
            counts.latencies.append(seconds)
        elif started_inside or inside():
            counts.failed += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Result:
    pings: list[float]
    missed: int
    short: Counts
    long: Counts
    slow: Counts
    seconds: float


async def scenario(port: int, seconds: float, slow: int = 0, long: int = 0, short: int = 0,
                   long_body: bytes = b"", short_body: bytes = b"") -> Result:
    stop = asyncio.Event()
    counts_slow, counts_long, counts_short = Counts(), Counts(), Counts()
    window = {"open": False}
    tasks = [asyncio.create_task(slow_client(port, stop, counts_slow)) for _ in range(slow)]
    raw_long = http_request("POST", "/invocations", long_body, "application/jsonlines")
    raw_short = http_request("POST", "/invocations", short_body, "application/jsonlines")
    inside = lambda: window["open"]  # noqa: E731
    tasks += [asyncio.create_task(looping_client(port, raw_long, stop, counts_long, 600, inside)) for _ in range(long)]
    tasks += [asyncio.create_task(looping_client(port, raw_short, stop, counts_short, SHORT_TIMEOUT_S, inside))
              for _ in range(short)]
    await asyncio.sleep(1.5 if (slow or long) else 0.2)  # slow clients part-way through, decodes under way
    ping = http_request("GET", "/ping")
    pings: list[float] = []
    missed = 0
    window["open"] = True
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        latency, status = await exchange(port, ping, PING_TIMEOUT_S)
        pings.append(min(latency, PING_TIMEOUT_S))
        missed += status != 200
        await asyncio.sleep(PING_EVERY_S)
    elapsed = time.perf_counter() - started
    window["open"] = False
    stop.set()
    await asyncio.wait(tasks, timeout=900)  # in-flight decodes finish: the next scenario starts clean
    return Result(pings, missed, counts_short, counts_long, counts_slow, elapsed)


def ping_cells(r: Result) -> str:
    p = [x * 1000 for x in r.pings]
    return (f"{percentile(p, 50):>9.1f} {percentile(p, 99):>9.1f} {max(p):>9.1f} "
            f"{r.missed:>4}/{len(p):<4}")


def run_all(port: int, seconds: float, long_body: bytes, short_body: bytes) -> None:
    head = f"{'ping p50 ms':>11} {'p99 ms':>9} {'max ms':>9} {'missed':>9}"
    print(f"  {'slow clients':<14}{head} {'short req/s':>12} {'short failed':>13} {'slow conns':>11}")
    for n in (0, 4, 16, 64):
        r = asyncio.run(scenario(port, seconds, slow=n, short=1, short_body=short_body))
        print(f"  {n:<14}{ping_cells(r)} {r.short.done / r.seconds:>12.1f} {r.short.failed:>13} "
              f"{r.slow.connections:>5} ({r.slow.dropped} dropped)")
    print(f"  {'long decodes':<14}{head} {'in window':>12} {'mean s each':>13}")
    for k in (1, 4, 8):
        r = asyncio.run(scenario(port, seconds, long=k, long_body=long_body))
        mean = sum(r.long.latencies) / len(r.long.latencies) if r.long.latencies else float("nan")
        print(f"  {k:<14}{ping_cells(r)} {r.long.done:>12} {mean:>13.1f}"
              + (f"  ({r.long.failed} failed)" if r.long.failed else ""))
    print(f"  {'short clients':<14}{head} {'req/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for c, slow in ((1, 0), (4, 0), (16, 0), (16, 64)):
        r = asyncio.run(scenario(port, seconds, slow=slow, short=c, short_body=short_body))
        lat = [x * 1000 for x in r.short.latencies]
        label = f"{c}" + (f" + {slow} slow" if slow else "")
        print(f"  {label:<14}{ping_cells(r)} {r.short.done / r.seconds:>12.1f} {percentile(lat, 50):>8.1f} "
              f"{percentile(lat, 99):>8.1f}" + (f"  ({r.short.failed} failed)" if r.short.failed else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a model directory (default: train one here)")
    p.add_argument("--updates", type=int, default=300, help="updates when training the model (default: 300)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario (default: 8)")
    p.add_argument("--baseline-ref", help="also measure container/serve as it was at this git commit")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    test = [s for s in (SAMPLE / "test.en").read_text(encoding="utf-8").splitlines() if s.strip()]
    long_body = b"".join(json.dumps({"source": s}).encode() + b"\n" for s in test[:LONG_SENTENCES])
    short_body = json.dumps({"source": test[0]}).encode() + b"\n"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        if args.model:
            model_dir = args.model
        else:
            from benchmarks.bench_transform import train_model

            model_dir = train_model(work / "train", args.updates)
        servers = [("ours", ROOT / "container" / "serve")]
        if args.baseline_ref:
            servers.append((f"baseline {args.baseline_ref}", baseline_container(args.baseline_ref, work / "baseline")))
        print(f"model {model_dir}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
              f"{args.seconds:g} s per scenario, a ping every {PING_EVERY_S * 1000:.0f} ms, "
              f"{PING_TIMEOUT_S:g} s ping timeout; long request = {LONG_SENTENCES} sentences")
        for i, (name, serve) in enumerate(servers):
            with Server(serve, model_dir, work / f"ml-{i}") as server:
                print(f"{name}: {serve} on port {server.port}")
                run_all(server.port, args.seconds, long_body, short_body)
            shutil.rmtree(work / f"ml-{i}", ignore_errors=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
