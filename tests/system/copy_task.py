"""A synthetic translation task a correct seq2seq learns quickly: copy (or reverse) random sequences.

Sockeye's system tests do the same: if the model, the data path, the training loop and beam search
are right, BLEU on held-out sequences approaches 100 within a few hundred tiny updates on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model import recordio, vocab

SYMBOLS = [chr(c) for c in range(ord("a"), ord("a") + 16)]


def copy_vocab() -> dict[str, int]:
    v = {s: i for i, s in enumerate(vocab.SPECIAL_SYMBOLS)}
    v.update({s: i + 4 for i, s in enumerate(SYMBOLS)})
    return v


def sequences(n: int, seed: int, min_len: int = 3, max_len: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 4 + len(SYMBOLS), rng.integers(min_len, max_len + 1)).tolist() for _ in range(n)]


def pairs(seqs: list[list[int]], reverse: bool) -> list[tuple[list[int], list[int]]]:
    return [(s, s[::-1] if reverse else list(s)) for s in seqs]


def write_rec(path: Path, data: list[tuple[list[int], list[int]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for s, t in data:
            f.write(recordio.frame(recordio.encode_record(s, t)))
    return path


def make_sagemaker_tree(root: Path, hyperparameters: dict[str, str], n_train: int = 3000, n_val: int = 200,
                        reverse: bool = False, seed: int = 1) -> Path:
    """``root`` laid out as /opt/ml would be for a training job on the copy task."""
    write_rec(root / "input/data/train/train.rec", pairs(sequences(n_train, seed), reverse))
    write_rec(root / "input/data/validation/val.rec", pairs(sequences(n_val, seed + 1), reverse))
    for name in ("vocab.src.json", "vocab.trg.json"):
        (root / "input/data/vocab").mkdir(parents=True, exist_ok=True)
        vocab.save(copy_vocab(), root / "input/data/vocab" / name)
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    return root
