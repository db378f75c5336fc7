"""Progress lines of the training loop: at least one every interval, whatever the loop is doing.

The lines go to the training loop's logger (``model.training``), not this module's: they are that
loop's lines in the job log, and whatever reads the log (benchmarks, people) finds them under its name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import Any, Protocol

from model.hyperparameters import Hyperparameters

log = logging.getLogger("model.training")


class TrainingLoop(Protocol):
    """What a progress line reads of the loop (:class:`model.training.Trainer`): its counters
    (``TrainingState``), settings, number of ranks (``DistInfo``), learning rate and clock."""

    state: Any
    hp: Hyperparameters
    dist: Any
    schedule: Any

    def tick(self) -> float: ...


class Progress:
    """A progress line at least every `interval` seconds, from a daemon thread, so that neither a slow
    batch nor a long validation leaves the task log silent. Rates are over the last window (since the
    previous line), not since the start, so they show what the job does now; time spent in checkpoints
    and validation is counted apart from training time."""

    def __init__(self, trainer: TrainingLoop, interval: float) -> None:
        self.trainer = trainer
        self.interval = interval
        self.num_batches = 0
        self.checkpoint_seconds = 0.0
        self._started = time.monotonic()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._start_updates = trainer.state.num_updates
        self._start_tokens = trainer.state.target_tokens
        self._mark = (self._started, self._start_updates, self._start_tokens, 0.0)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="training-progress", daemon=True)

    @property
    def updates_done(self) -> int:
        return self.trainer.state.num_updates - self._start_updates

    @property
    def tokens_done(self) -> int:
        return self.trainer.state.target_tokens - self._start_tokens

    @property
    def training_seconds(self) -> float:
        return time.monotonic() - self._started - self.checkpoint_seconds - self._current_phase_seconds()

    def _current_phase_seconds(self) -> float:
        return time.monotonic() - self._phase_started if self._phase else 0.0

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def phase(self, what: str) -> Any:
        with self._lock:
            self._phase, self._phase_started = what, time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self.checkpoint_seconds += time.monotonic() - self._phase_started
                self._phase = None

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.log_line()
            except Exception:  # progress must never take training down
                log.debug("progress line failed", exc_info=True)

    def log_line(self) -> None:
        with self._lock:
            phase, phase_started = self._phase, self._phase_started
            now = time.monotonic()
            state = self.trainer.state
            t0, u0, k0, c0 = self._mark
            self._mark = (now, state.num_updates, state.target_tokens, self.checkpoint_seconds)
        if phase:
            log.info("%s (%s so far; update %d)", phase, format_duration(now - phase_started), state.num_updates)
            return
        hp = self.trainer.hp
        window = max(now - t0 - (self.checkpoint_seconds - c0), 1e-9)
        updates, tokens = state.num_updates - u0, state.target_tokens - k0
        rate = updates / window
        if hp.max_num_batches > 0:
            remaining = hp.max_num_batches - state.num_updates
            target = f"update {state.num_updates}/{hp.max_num_batches}"
        else:
            remaining = self.num_batches - state.batch_in_epoch
            target = f"update {state.num_updates}"
        eta = format_duration(remaining / rate if rate else math.inf) + ("" if hp.max_num_batches > 0 else " (epoch)")
        if hp.max_training_seconds is not None:
            eta += f", time budget {format_duration(max(hp.max_training_seconds - self.trainer.tick(), 0.0))} left"
        log.info("epoch %d batch %d/%d, %s; last %s: %.2f updates/s, %.0f target tokens/s; lr %.3g, ETA %s",
                 state.epoch + 1, state.batch_in_epoch, self.num_batches, target, format_duration(window), rate,
                 tokens * self.trainer.dist.world_size / window, self.trainer.schedule.current_lr, eta)


def format_duration(seconds: float) -> str:
    """``7m30s`` / ``1h02m03s``: how the training log spells a duration (whole seconds)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
