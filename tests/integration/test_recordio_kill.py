"""kill -9 of the `recordio` CLI: its worker processes die with it, and the next run into the same
destination removes the staging folder the killed run left (80-90 MB per run on the full sample)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from model import recordio
from pipeline_tasks.channels import make_channels
from tests.conftest import ROOT, SAMPLE

COPIES = 8   # 80k pairs, 21 MB: over the 8 MiB at which recordio starts worker processes; ~2 s on 2 cores


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _workers(cli: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in cli.children(recursive=True):
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture
def big_corpus(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for lang in ("en", "de"):
        data = (SAMPLE / f"train.{lang}").read_bytes()
        out[f"train.{lang}"] = tmp_path / f"train.{lang}"
        out[f"train.{lang}"].write_bytes(data * COPIES)
        out[f"val.{lang}"] = SAMPLE / f"val.{lang}"
    return out


def test_kill_9_takes_the_workers_along_and_the_next_run_removes_the_staging(big_corpus, tmp_path):
    out = tmp_path / "channels"
    c = big_corpus
    cli = subprocess.Popen([sys.executable, "-m", "pipeline_tasks", "-q", "recordio", "--train-source", c["train.en"],
                            "--train-target", c["train.de"], "--val-source", c["val.en"], "--val-target", c["val.de"],
                            "--output", out, "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    everything: list[psutil.Process] = []
    try:
        proc = psutil.Process(cli.pid)
        deadline = time.monotonic() + 30
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and cli.poll() is None:
            workers = _workers(proc)
            staging = list(tmp_path.glob(".channels.*.staging"))
            # both workers started, and the scan is writing into the staging folder
            if len(workers) >= 2 and staging and any(p.stat().st_size for p in staging[0].rglob("*.ids")):
                break
            time.sleep(0.01)
        assert cli.poll() is None, f"recordio ended before it could be killed: {cli.stderr.read().decode()}"
        assert len(workers) == 2
        everything = [p for p in proc.children(recursive=True)]   # the workers and multiprocessing's helper
        os.kill(cli.pid, signal.SIGKILL)
        assert cli.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while _alive(everything) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(everything) == [], "worker processes outlived the killed recordio"
        left = list(tmp_path.glob(".channels.*.staging"))
        assert len(left) == 1 and not out.exists()   # the killed run's staging, and no half-written output
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for p in _alive(everything):
            p.kill()
        if cli.stderr:
            cli.stderr.close()

    # The next run into the same destination (small input, in-process) removes the dead run's staging.
    small = {k: v for k, v in c.items() if k.startswith("val")}
    report = make_channels(str(small["val.en"]), str(small["val.de"]), str(small["val.en"]), str(small["val.de"]), out,
                           workers=1)
    assert list(tmp_path.glob(".channels.*")) == []
    assert sum(1 for _ in recordio.read_pairs(out / "train" / "train.rec")) == report["train"]["records"] > 0


def test_the_portable_fallback_alone_ends_a_worker_whose_parent_was_killed(tmp_path):
    """watch_parent (no prctl involved): a grandchild exits once its parent is SIGKILLed and it is re-parented."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = (f"import os, sys; ppid = os.getppid(); sys.path.insert(0, {str(ROOT)!r}); "
                  "from pipeline_tasks.parallel import watch_parent; "
                  f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); watch_parent(ppid, 0.05); "
                  "raise SystemExit('watch_parent returned')")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"])
    child = None
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = psutil.Process(int(pid_file.read_text()))
        assert _alive([child])
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3
        while _alive([child]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _alive([child]) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and _alive([child]):
            child.kill()


CONSOLE_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
Path(sys.argv[2]).open("a").write("started\\n")  # a spawned worker that ran this script again would add a line
from pipeline_tasks.parallel import WorkerPool
with WorkerPool(2) as pool:
    print(sum(pool.map(abs, range(-50, 50))))
"""


def test_workers_start_under_a_console_script_such_as_airflows(tmp_path):
    """In an Airflow task the main script is the ``airflow`` console script (no .py): spawn would run it
    again in every worker, which starts Airflow there and kills the worker (BrokenProcessPool)."""
    script = tmp_path / "console"  # no .py, as .venv/bin/airflow
    script.write_text(CONSOLE_SCRIPT)
    marker = tmp_path / "runs.txt"
    done = subprocess.run([sys.executable, str(script), str(ROOT), str(marker)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(sum(abs(i) for i in range(-50, 50)))
    assert marker.read_text() == "started\n"  # the script ran once, in the parent only
