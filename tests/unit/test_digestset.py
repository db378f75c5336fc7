"""The numpy hash set of digests (pipeline_tasks/digestset.py) against a Python set: lookups, inserts,
growth, duplicates inside one batch (the first occurrence is the new one), the key 0, and its memory."""

from __future__ import annotations

import numpy as np

from pipeline_tasks.digestset import DigestSet


def _u64(values) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_inserts_and_lookups():
    s = DigestSet()
    assert len(s) == 0 and not s.contains(_u64([1, 2, 3])).any()
    assert s.add(_u64([5, 7, 2**64 - 1])).tolist() == [True, True, True]
    assert s.contains(_u64([7, 8, 5, 2**64 - 1, 0])).tolist() == [True, False, True, True, False]
    assert s.add(_u64([7, 9])).tolist() == [False, True] and len(s) == 4
    assert s.add(_u64([])).tolist() == [] and s.contains(_u64([])).tolist() == []


def test_duplicates_inside_one_batch_first_occurrence_wins():
    s = DigestSet()
    assert s.add(_u64([4, 9, 4, 4, 9, 1])).tolist() == [True, True, False, False, False, True]
    assert len(s) == 3
    assert s.add(_u64([1, 6, 6, 4])).tolist() == [False, True, False, False]


def test_zero_is_a_key_like_any_other():
    s = DigestSet()
    assert not s.contains(_u64([0])).any()
    assert s.add(_u64([0, 3, 0])).tolist() == [True, True, False]
    assert s.contains(_u64([0, 3])).all() and len(s) == 2
    assert s.add(_u64([0])).tolist() == [False]


def test_growth_keeps_every_key_and_the_load_at_most_half():
    s = DigestSet(capacity=16)
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, size=50_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)  # even
    capacities = set()
    for block in np.array_split(keys, 37):
        s.add(block)
        assert len(s) * 2 <= s.capacity
        capacities.add(s.capacity)
    assert len(capacities) > 5                      # it grew, several times
    assert len(s) == len(set(keys.tolist()))
    assert s.contains(keys).all()
    assert not s.contains(keys + np.uint64(1)).any()  # odd keys: none inserted
    assert s.nbytes / len(s) <= 32                 # 8-byte slots, at least a quarter full once grown


def test_keys_that_share_a_home_slot_probe_on_and_wrap_around():
    """Every key's home is the table's second-to-last slot: one probe chain, through the end and round."""

    class OneSlot(DigestSet):
        def _home(self, keys: np.ndarray) -> np.ndarray:
            return np.full(len(keys), len(self._table) - 2, dtype=np.intp)

    s = OneSlot(capacity=16)
    keys = _u64(range(1, 41))
    assert s.add(keys[:5]).all() and s.add(keys[3:8]).tolist() == [False, False, True, True, True]
    assert s.add(keys).tolist() == [False] * 8 + [True] * 32  # grows twice on the way
    assert s.contains(keys).all() and not s.contains(_u64([41, 1000])).any() and len(s) == 40
    sequential = np.arange(1, 100_000, dtype=np.uint64)   # with the real hash: consecutive keys
    t = DigestSet()
    assert t.add(sequential).all() and t.contains(sequential).all() and len(t) == 99_999


def test_against_a_python_set_over_many_batches():
    rng = np.random.default_rng(7)
    pool = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
    pool[0] = 0
    s, ref = DigestSet(capacity=4), set()
    for _ in range(200):
        batch = pool[rng.integers(0, len(pool), size=int(rng.integers(0, 60)))]
        assert s.contains(batch).tolist() == [int(k) in ref for k in batch.tolist()]
        want = []
        for k in batch.tolist():
            want.append(k not in ref)
            ref.add(k)
        assert s.add(batch).tolist() == want
        assert len(s) == len(ref)
