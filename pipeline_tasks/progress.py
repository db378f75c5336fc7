"""Progress lines for long steps, written through `logging` so an Airflow task log shows them."""

from __future__ import annotations

import logging
import time


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: how every progress line of the steps spells a duration."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Rate-limited progress reporter: count, rate, percentage and ETA when the total is known."""

    def __init__(self, logger: logging.Logger, what: str, unit: str, total: int | None = None,
                 every_s: float = 10.0, scale: float = 1.0, scale_unit: str | None = None) -> None:
        self.logger, self.what, self.unit, self.total = logger, what, unit, total
        self.every_s, self.scale, self.scale_unit = every_s, scale, scale_unit or unit
        self.count = 0
        self.start = self.last = time.monotonic()

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        if self.scale != 1:
            unit = self.scale_unit
            msg = f"{self.what}: {self.count / self.scale:,.1f} {unit} ({rate / self.scale:,.1f} {unit}/s)"
        else:
            msg = f"{self.what}: {self.count:,} {self.unit} ({rate:,.0f} {self.unit}/s)"
        if self.total:
            pct = 100.0 * self.count / self.total
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            msg += f", {pct:.1f}%"
            if eta != float("inf"):
                msg += f", ETA {format_duration(eta)}"
        return msg

    def update(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.logger.info(self._line(now))

    def done(self) -> float:
        """Log the final line; returns elapsed seconds."""
        now = time.monotonic()
        self.logger.info(self._line(now) + f", done in {format_duration(now - self.start)}")
        return now - self.start
