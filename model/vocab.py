"""Vocabulary files of the built-in seq2seq algorithm (docs/ARCHITECTURE.md §3, fixed contract).

A vocabulary is a flat JSON object token -> id. Ids 0-3 are the special symbols; real tokens follow
ordered by count descending, ties by token descending -- exactly what AWS's `create_vocab_proto.py`
produces, so that either side's files can be used with either trainer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from itertools import chain, islice

PAD_SYMBOL = "<pad>"
UNK_SYMBOL = "<unk>"
BOS_SYMBOL = "<s>"
EOS_SYMBOL = "</s>"
SPECIAL_SYMBOLS = (PAD_SYMBOL, UNK_SYMBOL, BOS_SYMBOL, EOS_SYMBOL)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

DEFAULT_NUM_WORDS = 50_000
DEFAULT_MIN_COUNT = 1

Vocab = dict[str, int]


class VocabError(ValueError):
    """A vocabulary file that breaks the contract; the message names the file and the field."""


def prune(counts: Mapping[str, int], num_words: int = DEFAULT_NUM_WORDS,
          min_count: int = DEFAULT_MIN_COUNT) -> Vocab:
    """Turn raw counts into a vocabulary the way `create_vocab_proto.py` does.

    Sorting (count, token) pairs in reverse gives count descending, ties broken by token descending;
    that tie-break is part of the contract, since it decides which ids rare tokens get.
    """
    if num_words < 0:
        raise ValueError(f"num_words must be >= 0, got {num_words}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    kept = sorted(((c, w) for w, c in counts.items() if c >= min_count and w not in SPECIAL_SYMBOLS),
                  reverse=True)
    words = islice((w for _, w in kept), num_words)
    return {word: idx for idx, word in enumerate(chain(SPECIAL_SYMBOLS, words))}


def validate(vocab: object, path: str = "<vocab>") -> Vocab:
    """Check a decoded vocabulary object against the contract; return it typed."""
    if not isinstance(vocab, dict):
        raise VocabError(f"{path}: expected a JSON object token -> id, got {type(vocab).__name__}")
    for token, idx in vocab.items():
        if type(idx) is not int or idx < 0:
            raise VocabError(f"{path}: token {token!r} has id {idx!r}; ids must be non-negative integers")
    for expected_id, symbol in enumerate(SPECIAL_SYMBOLS):
        if symbol not in vocab:
            raise VocabError(f"{path}: special symbol {symbol!r} is missing (it must have id {expected_id})")
        if vocab[symbol] != expected_id:
            raise VocabError(f"{path}: special symbol {symbol!r} has id {vocab[symbol]}, expected {expected_id}")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        seen: set[int] = set()
        for token, idx in vocab.items():
            if idx in seen:
                raise VocabError(f"{path}: id {idx} is used twice (again by token {token!r})")
            seen.add(idx)
        missing = next(i for i in range(len(ids)) if i not in seen)
        raise VocabError(f"{path}: ids must be 0..{len(ids) - 1} without gaps; id {missing} is missing")
    return vocab


def load(path: str | os.PathLike[str]) -> Vocab:
    """Read and validate a vocabulary JSON file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise VocabError(f"{path}: vocabulary file not found") from None
    except UnicodeDecodeError as e:
        raise VocabError(f"{path}: not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise VocabError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return validate(data, path)


def dumps(vocab: Mapping[str, int]) -> str:
    """Serialise in id order, formatted like AWS's script (indent 4, non-ASCII kept)."""
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    return json.dumps(ordered, indent=4, ensure_ascii=False)


def save(vocab: Mapping[str, int], path: str | os.PathLike[str]) -> None:
    """Write a vocabulary file (UTF-8). Callers stage it in a temporary folder for atomicity."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(vocab))


def reverse(vocab: Mapping[str, int]) -> list[str]:
    """id -> token as a list, for decoding model output."""
    inv = [""] * len(vocab)
    for token, idx in vocab.items():
        inv[idx] = token
    return inv
