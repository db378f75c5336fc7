"""Order-preserving parallel map over blocks of work, with a bounded number of blocks in flight.

`ProcessPoolExecutor.map` and `Pool.imap` both read their whole input ahead, which would put a
corpus in memory; here at most `max_in_flight` blocks exist at once, so memory stays flat.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Cores this process may use (affinity-aware), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - non-Linux
        return max(os.cpu_count() or 1, 1)


class WorkerPool:
    """Worker processes for CPU-bound steps, or this process alone when `workers` <= 1.

    Workers are started with `spawn` (not fork): safe inside a multi-threaded Airflow task process.
    Scripts that use it need the usual `if __name__ == "__main__":` guard.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ex: Executor | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

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
