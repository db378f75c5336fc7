"""Checkpoint averaging: the final model as the parameter average of the N best checkpoints.

What Sockeye's ``average`` and fairseq's ``average_checkpoints.py`` do, usually worth a few tenths of
BLEU for nothing but disk. The N best parameter sets are kept as files beside the training checkpoint
(not in memory: a large model times N would not fit), with a small index, so that they are synced
with the checkpoints and a restarted job averages the same ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from model import metrics
from model.atomic import staged_file
from model.checkpoint import torch_load, torch_save

log = logging.getLogger(__name__)

BEST_DIR = "best"
INDEX_FILE = "index.json"


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (accumulated in float64, stored in each tensor's own
    dtype); other tensors (counters, integer buffers) are taken from the first state."""
    if not states:
        raise ValueError("no parameter sets to average")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 2):
        if list(s) != keys:
            raise ValueError(f"parameter set {i} has other tensors than the first")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float64)
            for s in states:
                total += s[k].to(torch.float64)
            out[k] = (total / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


class BestCheckpoints:
    """The `keep` best parameter sets so far, by `metric` (``perplexity`` lower is better, others higher),
    as ``<folder>/params.<checkpoint>.pt`` plus ``index.json`` naming them with their scores."""

    def __init__(self, folder: Path, keep: int, metric: str) -> None:
        self.folder, self.keep, self.metric = folder, keep, metric

    @property
    def index_file(self) -> Path:
        return self.folder / INDEX_FILE

    def entries(self) -> list[dict[str, Any]]:
        """``[{"checkpoint": n, "value": v}, …]``, best first."""
        if not self.index_file.is_file():
            return []
        return json.loads(self.index_file.read_text(encoding="utf-8"))["entries"]

    def file(self, checkpoint: int) -> Path:
        return self.folder / f"params.{checkpoint}.pt"

    def _rank(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sign = 1.0 if self.metric == "perplexity" else -1.0
        return sorted(entries, key=lambda e: (sign * e["value"], e["checkpoint"]))

    def offer(self, checkpoint: int, value: float, state: Mapping[str, torch.Tensor]) -> bool:
        """Keep this checkpoint's parameters if they are among the best `keep`; True when kept. The file is
        written before the index names it and an evicted file is deleted after, so a job killed at any point
        leaves an index whose files all exist."""
        entries = [e for e in self.entries() if e["checkpoint"] != checkpoint]
        ranked = self._rank([*entries, {"checkpoint": checkpoint, "value": value}])
        kept, dropped = ranked[: self.keep], ranked[self.keep:]
        if all(e["checkpoint"] != checkpoint for e in kept):
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        torch_save(self.file(checkpoint), {k: v.detach().cpu() for k, v in state.items()})
        with staged_file(self.index_file, "w", encoding="utf-8") as f:
            json.dump({"metric": self.metric, "entries": kept}, f, indent=2)
        for e in dropped:
            self.file(e["checkpoint"]).unlink(missing_ok=True)
        return True

    def average(self) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The average of the kept parameter sets, and which checkpoints they are."""
        entries = self.entries()
        states = [torch_load(self.file(e["checkpoint"]), "averaged checkpoint parameters") for e in entries]
        return average_state_dicts(states), [e["checkpoint"] for e in entries]


def better_or_equal(metric: str, candidate: float, best: float) -> bool:
    """Whether the average may replace the best single checkpoint: not worse by ``optimized_metric``."""
    return candidate == best or metrics.is_better(metric, candidate, best)
