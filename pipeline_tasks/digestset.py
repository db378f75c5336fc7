"""A set of 64-bit digests in one numpy array: what the clean step remembers of every pair it kept.

A Python ``set`` of 8-byte ``bytes`` costs 70-100 bytes per entry (a bytes object, a hash slot, the
set's spare room); at WMT17's ~6M pairs, twice (exact and normalised digests), that is about a
gigabyte for 96 MB of digests. Here a digest is a uint64 in an open-addressing table (linear probing)
that doubles when it is half full, so an entry costs 16-32 bytes, and lookups and inserts take a whole
block of digests per numpy call instead of one interpreter round trip each.

The digests are blake2b outputs, already uniform; the home slot is still taken from a multiplicative
hash (Fibonacci hashing) so that the set stays fast for any keys. 0 marks an empty slot; the key 0 is
remembered on the side.
"""

from __future__ import annotations

import numpy as np

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd
_EMPTY = np.uint64(0)


class DigestSet:
    """A growing set of uint64 keys with vectorised ``contains`` and ``add``."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        bits = max(int(capacity - 1).bit_length(), 4)
        self._table = np.zeros(1 << bits, dtype=np.uint64)
        self._bits = bits
        self._size = 0            # keys in the table (0 not counted: it is `_has_zero`)
        self._has_zero = False

    def __len__(self) -> int:
        return self._size + self._has_zero

    @property
    def nbytes(self) -> int:
        """Memory held by the table (the whole cost of the set)."""
        return self._table.nbytes

    @property
    def capacity(self) -> int:
        return len(self._table)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _MULTIPLIER) >> np.uint64(64 - self._bits)).astype(np.intp)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each key, whether it is in the set (a bool array of the same length)."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        if self._has_zero:
            found[keys == _EMPTY] = True
        idx = np.flatnonzero(keys != _EMPTY)
        k = keys[idx]
        slot = self._home(k)
        mask = len(self._table) - 1
        while len(idx):
            there = self._table[slot]
            hit = there == k
            found[idx[hit]] = True
            going = ~hit & (there != _EMPTY)  # occupied by another key: probe on
            idx, k, slot = idx[going], k[going], (slot[going] + 1) & mask
        return found

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Insert `keys`; True for each key that was not in the set before it (of equal keys within
        `keys`, only the first counts as new: first occurrence in order wins)."""
        keys = np.asarray(keys, dtype=np.uint64)
        new = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return new
        _, first = np.unique(keys, return_index=True)
        first.sort()
        fresh = first[~self.contains(keys[first])]
        new[fresh] = True
        k = keys[fresh]
        if self._has_zero is False and (k == _EMPTY).any():
            self._has_zero = True
        k = k[k != _EMPTY]
        if len(k):
            self._reserve(self._size + len(k))
            self._insert(k)
            self._size += len(k)
        return new

    def _reserve(self, size: int) -> None:
        """Grow (doubling) so that `size` keys fill at most half the table."""
        bits = self._bits
        while size * 2 > (1 << bits):
            bits += 1
        if bits == self._bits:
            return
        old = self._table[self._table != _EMPTY]
        self._table = np.zeros(1 << bits, dtype=np.uint64)
        self._bits = bits
        self._insert(old)

    def _insert(self, keys: np.ndarray) -> None:
        """Place distinct keys that are not in the table yet (there is room for them)."""
        table, mask = self._table, len(self._table) - 1
        slot = self._home(keys)
        while len(keys):
            free = table[slot] == _EMPTY
            table[slot[free]] = keys[free]  # keys that share a free slot: one of them gets it
            placed = table[slot] == keys
            going = ~placed
            keys, slot = keys[going], (slot[going] + 1) & mask
