"""The quality gate: promote a newly trained model only if it is at least as good as the promoted one.

The promoted model is a small JSON pointer under the artifact root (``<root>/<dag_id>/promoted.json``,
see pipeline_tasks/runs.py): which run, which ``model.tar.gz``, its evaluation metrics, when. The
decision is a pure function of the two metric sets and the rule, so it is tested without storage; a
model that is not promoted is a normal outcome (the run succeeds and says why), not a failure.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline_tasks import storage

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("perplexity", "loss", "ter")


@dataclass(frozen=True)
class GateRule:
    """``metric`` of the evaluation (``test:bleu``, ``test:chrf``, ``test:perplexity``, …) decides; the
    new model must reach ``current + min_delta`` (or ``current - min_delta`` when lower is better), and
    ``threshold``, when set, is a floor (ceiling) it must pass even with nothing promoted yet. With
    several test sets, ``test_set`` names the one that decides (``newstest2017``: its
    ``newstest2017:bleu``), or ``mean`` (the scores averaged over the sets); None: the first set, whose
    scores are the ``test:*`` ones."""

    metric: str = "test:bleu"
    mode: str | None = None          # max | min; None: min for perplexity/loss/TER, else max
    min_delta: float = 0.0
    threshold: float | None = None
    test_set: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in (None, "max", "min"):
            raise ValueError(f"gate mode must be max or min, got {self.mode!r}")
        if self.min_delta < 0:
            raise ValueError(f"gate min_delta must be >= 0, got {self.min_delta}")
        if ":" not in self.metric:
            raise ValueError(f"gate metric must be <test set>:<measure> such as test:bleu, got {self.metric!r}")

    @property
    def measure(self) -> str:
        return self.metric.split(":", 1)[1]

    @property
    def metric_name(self) -> str:
        """The metric compared: ``metric`` as given, or its measure on the named test set (or the mean)."""
        return self.metric if self.test_set is None else f"{self.test_set}:{self.measure}"

    @property
    def higher_is_better(self) -> bool:
        if self.mode is not None:
            return self.mode == "max"
        return not any(word in self.measure.lower() for word in LOWER_IS_BETTER)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateRule:
        unknown = sorted(set(d) - {"metric", "mode", "min_delta", "threshold", "test_set"})
        if unknown:
            raise ValueError(f"unknown gate rule field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    new_value: float | None
    current_value: float | None


def decide(new_metrics: Mapping[str, Any], current: Mapping[str, Any] | None, rule: GateRule) -> Decision:
    """Whether the new model replaces the promoted one (``current``: the pointer, or None)."""
    name = rule.metric_name
    value = new_metrics.get(name)
    if not isinstance(value, int | float) or math.isnan(value):
        return Decision(False, f"the new model has no usable {name} ({value!r})", None, None)
    better = (lambda a, b: a >= b) if rule.higher_is_better else (lambda a, b: a <= b)
    word = "at least" if rule.higher_is_better else "at most"
    if rule.threshold is not None and not better(value, rule.threshold):
        return Decision(False, f"{name} {value:.4g} does not reach the threshold ({word} {rule.threshold:.4g})",
                        value, None)
    if current is None:
        return Decision(True, f"no model promoted yet; {name} {value:.4g}", value, None)
    cur = (current.get("metrics") or {}).get(name)
    if not isinstance(cur, int | float) or math.isnan(cur):
        return Decision(True, f"the promoted model has no {name}; the new one has {value:.4g}", value, None)
    target = cur + rule.min_delta if rule.higher_is_better else cur - rule.min_delta
    if better(value, target):
        return Decision(True, f"{name} {value:.4g} vs promoted {cur:.4g} (needed {word} {target:.4g})", value, cur)
    return Decision(False, f"{name} {value:.4g} vs promoted {cur:.4g}: needed {word} {target:.4g}", value, cur)


def read_pointer(uri: str) -> dict[str, Any] | None:
    """The promoted model's record, or None when nothing has been promoted."""
    if not storage.exists(uri):
        return None
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    else:
        body = loc.read_bytes()
    try:
        return json.loads(body)
    except ValueError as e:
        raise ValueError(f"{uri}: the promoted-model pointer is not valid JSON: {e}") from None


def write_pointer(uri: str, record: Mapping[str, Any]) -> None:
    """Replace the pointer in one step (a local rename, or one S3 PUT): readers see old or new, never half."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(dict(record), f, indent=2, sort_keys=True)
        f.write("\n")
    try:
        storage.put_file(f.name, uri)
    finally:
        os.unlink(f.name)


def gate(new_metrics: Mapping[str, Any], pointer_uri: str, rule: GateRule, candidate: Mapping[str, Any]) -> dict:
    """Decide, and promote (write the pointer) when the rule says so. ``candidate`` describes the new
    model (run id, model URI, eval URI…) and becomes the pointer's content with the metrics."""
    current = read_pointer(pointer_uri)
    decision = decide(new_metrics, current, rule)
    result = {**asdict(decision), "rule": asdict(rule), "pointer": pointer_uri,
              "previous": current, "candidate": dict(candidate)}
    if decision.promote:
        write_pointer(pointer_uri, {**candidate, "metrics": dict(new_metrics), "promoted_at": time.time(),
                                    "rule": asdict(rule), "reason": decision.reason})
        log.info("promoted: %s", decision.reason)
    else:
        log.warning("not promoted: %s", decision.reason)
    return result
