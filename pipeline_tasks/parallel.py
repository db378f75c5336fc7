"""Order-preserving parallel map over blocks of work, with a bounded number of blocks in flight.

`ProcessPoolExecutor.map` and `Pool.imap` both read their whole input ahead, which would put a
corpus in memory; here at most `max_in_flight` blocks exist at once, so memory stays flat.

Workers die with the process that started them: a step killed with SIGKILL (an Airflow task timeout,
the OOM killer, kill -9) cannot clean up, and orphaned workers would go on writing into its staging
folder, or wait forever on a queue nobody feeds.
"""

from __future__ import annotations

import importlib.machinery
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TypeVar

from pipeline_tasks.jobs.local.process import set_parent_death_signal

T = TypeVar("T")
R = TypeVar("R")

PARENT_POLL_S = 0.5


def watch_parent(parent_pid: int, interval_s: float = PARENT_POLL_S,
                 exit: Callable[[int], object] = os._exit) -> None:
    """Exit as soon as `parent_pid` is no longer our parent (it died and we were re-parented).

    The portable fallback for PR_SET_PDEATHSIG; loops in a daemon thread of each worker."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: SIGKILL on the parent's death (Linux), a watching thread everywhere.

    PR_SET_PDEATHSIG fires when the *thread* that started the worker ends; the pool's processes are
    started by the thread that submits work, which stays inside the `with WorkerPool` block."""
    set_parent_death_signal(signal.SIGKILL)  # without prctl (not Linux, an odd libc) the thread below still works
    if os.getppid() != parent_pid:   # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def default_workers() -> int:
    """Cores this process may use (affinity-aware), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - non-Linux
        return max(os.cpu_count() or 1, 1)


class WorkerPool:
    """Worker processes for CPU-bound steps, or this process alone when `workers` <= 1.

    Workers are started with `spawn` (not fork): safe inside a multi-threaded Airflow task process.
    Scripts that use it need the usual `if __name__ == "__main__":` guard. Workers exit when this
    process dies, however it dies (see _die_with_parent).

    A spawned worker runs the parent's main script again, unless that is a module (``python -m``). In an
    Airflow task the main script is the ``airflow`` console script, which would start Airflow in every
    worker and kill it; while the pool lives, such a main (a script that is not a ``.py`` file) is marked
    as a module named ``__main__``, which spawn does not re-run. Work functions live in modules anyway.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ex: Executor | None = None

    def __enter__(self) -> WorkerPool:
        self._hidden_main = None
        if self.workers > 1:
            main = sys.modules.get("__main__")
            script = getattr(main, "__file__", None)
            if main is not None and getattr(main, "__spec__", None) is None and script and not script.endswith(".py"):
                main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)  # spawn skips "__main__"
                self._hidden_main = main
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_die_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None
        if self._hidden_main is not None:
            self._hidden_main.__spec__ = None
            self._hidden_main = None

    def map(self, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int | None = None) -> Iterator[R]:
        """fn(item) for each item, in input order, at most `max_in_flight` submitted ahead."""
        if self._ex is None:
            for item in items:
                yield fn(item)
            return
        limit = max_in_flight or 2 * self.workers
        pending: deque = deque()
        try:
            for item in items:
                pending.append(self._ex.submit(fn, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
