"""Shared helpers for benchmarks: corpora of a given size made from the bundled sample."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "pipeline_tasks" / "sample_data" / "wmt-toy-ende"


def demo_hyperparameters(updates: int, checkpoint_every: int = 200) -> dict:
    """The `make demo` hyperparameters (Makefile DEMO_HP), with an update budget and checkpoint interval."""
    return {"max_seq_len_source": 60, "max_seq_len_target": 60, "optimized_metric": "perplexity",
            "batch_size": 32, "checkpoint_frequency_num_batches": checkpoint_every, "rnn_num_hidden": 128,
            "num_layers_encoder": 1, "num_layers_decoder": 1, "num_embed_source": 64, "num_embed_target": 64,
            "checkpoint_threshold": 100, "max_num_batches": updates, "learning_rate": 0.003,
            "bleu_sample_size": 0}


def repeated_corpus(out_dir: Path, pairs: int, src: str = "en", trg: str = "de") -> tuple[Path, Path]:
    """train.{src,trg} of `pairs` lines: the sample's training split repeated (and cut)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang in (src, trg):
        lines = (SAMPLE / f"train.{lang}").read_bytes().splitlines(keepends=True)
        p = out_dir / f"train.{lang}"
        if not p.exists() or p.read_bytes().count(b"\n") != pairs:
            with open(p, "wb") as f:
                full, rest = divmod(pairs, len(lines))
                block = b"".join(lines)
                for _ in range(full):
                    f.write(block)
                f.writelines(lines[:rest])
        paths.append(p)
    return paths[0], paths[1]


class PeakRSS:
    """Samples the summed RSS of a process tree (main + worker processes) while it runs."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        import psutil
        self.proc = psutil.Process(pid or os.getpid())
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
