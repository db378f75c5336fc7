"""``sockeye-train`` with timing hooks, for benchmarks/bench_peer.py; runs in the Sockeye virtualenv.

    <sockeye-venv>/bin/python benchmarks/peer_sockeye_train.py <sockeye-train arguments>

Standalone on purpose: it runs under the peer's Python and torch 1.13.1, so it imports nothing of
this repository. It calls ``sockeye.train.main()`` unchanged and only wraps three methods of
``sockeye.training.EarlyStoppingTrainer``:

- ``_step`` (one batch: forward, backward, update) records its start and end times and the batch's
  *real* target tokens, ``batch.target_length.sum()``: Sockeye's ``target_length`` counts the non-pad
  positions of the decoder input (``<s>`` + tokens), which is exactly the number of labels (tokens +
  ``</s>``), the same count as our ``Batch.num_target_tokens``. Sockeye's own ``tok/sec`` log figure
  is ``batch.tokens`` = samples x padded *source* length, which is neither real nor target tokens, so
  it cannot be compared with ours.
- ``_create_checkpoint`` (validation, metrics, parameter and training-state files) records its span,
  so that steady-state training throughput can exclude checkpoint time, as our trainer's progress
  lines do.
- the deadline: Sockeye's ``--max-seconds`` is only checked after a checkpoint, so it overshoots by
  up to one checkpoint interval. With ``BENCH_PEER_DEADLINE_S`` set, the first update that ends past
  that many seconds since Sockeye's ``TrainState`` was created sets ``config.max_updates`` to the
  current update count; Sockeye's own loop then sees "Maximum # of updates reached", writes its final
  checkpoint (validation, best parameters) and stops. That is our ``max_training_seconds`` contract
  (stop when the time is up, checkpoint, keep the best model) with Sockeye's own stopping code.

The records go to the JSON file named by ``BENCH_PEER_STATS`` when the process ends (also after a
failure, so that a partial run still says how far it got).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

STATS_ENV = "BENCH_PEER_STATS"
DEADLINE_ENV = "BENCH_PEER_DEADLINE_S"


def install_hooks(record: dict[str, Any]) -> None:
    """Wrap the trainer methods (see the module docstring); `record` collects what they observe."""
    from sockeye import training

    trainer_cls = training.EarlyStoppingTrainer
    deadline = float(os.environ.get(DEADLINE_ENV) or 0)
    orig_step, orig_checkpoint, orig_fit = trainer_cls._step, trainer_cls._create_checkpoint, trainer_cls.fit
    steps: list[list[float]] = record.setdefault("steps", [])
    checkpoints: list[list[float]] = record.setdefault("checkpoints", [])

    def _step(self: Any, batch: Any) -> bool:
        t0 = time.monotonic()
        did_update = orig_step(self, batch)
        t1 = time.monotonic()
        target = batch.target
        steps.append([t0, t1, int(batch.target_length.sum()), int(batch.samples),
                      int(target.shape[0]) * int(target.shape[1])])
        if (deadline and did_update and "deadline_update" not in record
                and time.time() - self.state.start_tic >= deadline):
            self.config.max_updates = self.state.updates
            record["deadline_update"] = self.state.updates
            record["deadline_elapsed_s"] = time.time() - self.state.start_tic
        return did_update

    def _create_checkpoint(self: Any, *args: Any, **kwargs: Any) -> None:
        t0 = time.monotonic()
        try:
            orig_checkpoint(self, *args, **kwargs)
        finally:
            checkpoints.append([t0, time.monotonic()])

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        record["fit_start"] = time.monotonic()
        try:
            state = orig_fit(self, *args, **kwargs)
        finally:
            record["fit_end"] = time.monotonic()
        import torch

        record["torch_threads"] = torch.get_num_threads()
        record["updates"] = state.updates
        record["epochs"] = state.epoch
        record["checkpoints_done"] = state.checkpoint
        record["best_checkpoint"] = state.best_checkpoint
        record["best_metric"] = state.best_metric
        return state

    trainer_cls._step = _step
    trainer_cls._create_checkpoint = _create_checkpoint
    trainer_cls.fit = fit


def main() -> int:
    """Run sockeye-train with the hooks; the stats file is written whatever happens."""
    record: dict[str, Any] = {"argv": sys.argv[1:], "process_start": time.monotonic()}
    stats_file = os.environ.get(STATS_ENV)
    try:
        install_hooks(record)
        from sockeye import train

        sys.argv = ["sockeye-train", *sys.argv[1:]]
        train.main()
        record["ok"] = True
        return 0
    finally:
        record["process_end"] = time.monotonic()
        if stats_file:
            with open(stats_file, "w", encoding="utf-8") as f:
                json.dump(record, f)


if __name__ == "__main__":
    sys.exit(main())
