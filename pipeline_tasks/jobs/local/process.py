"""Child processes that never outlive the task that started them: the local training job's ``train``
and the local transform job's ``serve`` (as processes, or as the ``docker run`` client of a container).

They run in their own session (so one signal reaches every process they start, torchrun's workers
included) and would therefore survive their parent: when Airflow stops a task — marked failed,
cleared, timed out — its task runner sends SIGTERM, calls the operator's ``on_kill`` (a ``@task``
has none) and SIGKILLs the task 5 s later, and a training job left behind would burn CPU with no
checkpoint synced and no failure recorded. Three things prevent that:

- :func:`start` asks the kernel to SIGTERM the child when its parent dies (Linux ``PR_SET_PDEATHSIG``),
  even by SIGKILL;
- :func:`stop_on_sigterm` turns the task's SIGTERM into :class:`TaskStopped` raised in the main thread
  (after the handler that was there, Airflow's), so the code waiting on the child unwinds and stops it;
- :func:`stop_detached` stops the child as SageMaker stops a job — SIGTERM, a grace period for the
  checkpoint, then SIGKILL — from a small detached reaper process, because the task itself has only
  seconds left; the reaper then syncs the job's checkpoints, so the next try resumes from them.

Both job kinds start their child from here: the container's entrypoint as a plain process
(:func:`entrypoint_command`, with the repository on its PYTHONPATH) or the ``docker run`` client
(pipeline_tasks/jobs/local/docker.py). pipeline_tasks/parallel.py's worker pools use
:func:`set_parent_death_signal` too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from model.distributed import set_parent_death_signal
from pipeline_tasks.jobs.local.docker import docker_kill, docker_stop

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

REPO_ROOT = Path(__file__).resolve().parents[3]
KILLED_TASK_WAIT_S = 3.0  # how long a stopped task waits for its child itself (Airflow SIGKILLs it at 5 s)


def repo_pythonpath() -> str:
    """PYTHONPATH for a child that runs this repository's code (the entrypoints, the reaper) whether or
    not it is installed: the repository first, then what the caller had."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def entrypoint_command(entrypoint: str, override_env: str) -> list[str]:
    """The container's `entrypoint` (``train``, ``serve``) as a plain process on this machine;
    ``$<override_env>`` replaces it (tests, wrappers)."""
    override = os.environ.get(override_env)
    if override:
        return shlex.split(override)
    return [sys.executable, str(REPO_ROOT / "container" / entrypoint)]


class TaskStopped(BaseException):
    """The task running this code was told to stop (SIGTERM). A BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` in job code mistakes it for a failure to handle and carry on."""


def start(cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session that dies with its parent (on Linux; elsewhere the
    SIGTERM handler and the reaper still stop it)."""
    parent = os.getpid()

    def preexec() -> None:
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return subprocess.Popen(list(cmd), start_new_session=True,
                            preexec_fn=preexec if sys.platform.startswith("linux") else None, **popen)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`TaskStopped` in the main thread (the previous handler,
    e.g. Airflow's, runs first). Outside the main thread signals cannot be handled: the block runs
    unchanged, and :func:`start`'s parent-death signal is what stops the child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise TaskStopped("the task received SIGTERM (stopped, cleared, marked failed or timed out)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_group(pid: int, sig: int) -> bool:
    """Signal the process group `pid` leads; False when it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(proc: subprocess.Popen, grace_s: float, logger: Logger, what: str = "the process",
         docker_name: str | None = None) -> None:
    """SIGTERM to the group, wait up to `grace_s`, then SIGKILL: for a caller that can wait."""
    if proc.poll() is not None:
        return
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not exit within %.0fs of SIGTERM: killing it", what, grace_s)
        signal_group(proc.pid, signal.SIGKILL)
        if docker_name:
            docker_kill(docker_name)
        proc.wait()


def stop_detached(proc: subprocess.Popen, grace_s: float, logger: Logger, what: str = "the process", *,
                  docker_name: str | None = None, sync_from: Path | None = None, sync_to: str | None = None,
                  wait_s: float = KILLED_TASK_WAIT_S) -> None:
    """Stop `proc` when this process itself is being stopped: SIGTERM now, and a detached reaper that
    SIGKILLs the group after `grace_s` if it is still there (``docker stop`` for a container), then syncs
    `sync_from` to `sync_to`. Waits up to `wait_s` here, so a child that stops at once is reaped now."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
    cmd = [sys.executable, "-m", "pipeline_tasks.jobs.local.process", "--pgid", str(proc.pid), "--grace", str(grace_s)]
    if docker_name:
        cmd += ["--docker-name", docker_name]
    if sync_from is not None and sync_to:
        cmd += ["--sync-from", str(sync_from), "--sync-to", sync_to]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    try:
        reaper = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        logger.warning("stopping %s (pid %d): SIGTERM sent; reaper pid %d sends SIGKILL after %.0fs if it is "
                       "still running%s", what, proc.pid, reaper.pid, grace_s,
                       f" and then syncs {sync_from} to {sync_to}" if sync_to else "")
    except OSError as e:  # no reaper: SIGKILL now rather than leave it running
        logger.error("cannot start a reaper (%s): killing %s now", e, what)
        signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait_s)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in group `pgid`: a child that exited but whose parent has
    not waited for it yet is done for our purposes."""
    proc = Path("/proc")
    if not proc.is_dir():
        return signal_group(pgid, 0)
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def reap(pgid: int, grace_s: float, docker_name: str | None = None, sync_from: str | None = None,
         sync_to: str | None = None, poll_s: float = 0.2) -> int:
    """The reaper: wait for group `pgid` to end, SIGKILL it after `grace_s`, then sync checkpoints."""
    if docker_name:
        docker_stop(docker_name, grace_s)
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(poll_s)
    if _group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
    if sync_from and sync_to:
        from pipeline_tasks.jobs.local.staging import sync_checkpoints

        sync_checkpoints(sync_to, Path(sync_from), log)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline_tasks.jobs.local.process",
                                description="Stop a process group as SageMaker stops a job (internal).")
    p.add_argument("--pgid", type=int, required=True)
    p.add_argument("--grace", type=float, required=True)
    p.add_argument("--docker-name")
    p.add_argument("--sync-from")
    p.add_argument("--sync-to")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a reaper must outlive the stop it carries out
    return reap(a.pgid, a.grace, a.docker_name, a.sync_from, a.sync_to)


if __name__ == "__main__":
    sys.exit(main())
