"""MetricDefinitions read out of a training job's log, as SageMaker reads them (docs/ARCHITECTURE.md §5).

The definitions themselves are the container's (model/metrics.py): a request carries them, and the
local backends apply them here to the lines of ``train`` so that their FinalMetricDataList says what
SageMaker's would.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping

from model.metrics import METRIC_DEFINITIONS

Patterns = list[tuple[str, re.Pattern[str]]]


def compile_definitions(definitions: Iterable[Mapping[str, str]]) -> Patterns:
    return [(d["Name"], re.compile(d["Regex"])) for d in definitions]


def scan(patterns: Patterns, text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, pattern in patterns:
        for m in pattern.finditer(text):
            with contextlib.suppress(ValueError, IndexError):  # "1.2.3" matches the regex but is no number
                found[name] = float(m.group(1))
    return found


def parse_metrics(text: str, definitions: Iterable[Mapping[str, str]] = METRIC_DEFINITIONS) -> dict[str, float]:
    """The last value of every metric whose regex matches in `text`, as SageMaker reads a job's log."""
    return scan(compile_definitions(definitions), text)
