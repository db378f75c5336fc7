"""Checkpoint averaging's pieces: the element-wise mean and the on-disk set of the N best."""

from __future__ import annotations

import pytest
import torch

from model.averaging import BestCheckpoints, average_state_dicts, better_or_equal


def test_the_average_is_the_element_wise_mean_in_each_tensors_dtype():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(5)}
    c = {"w": torch.tensor([2.0, 1.0]), "h": torch.tensor([3.0], dtype=torch.float16), "n": torch.tensor(7)}
    avg = average_state_dicts([a, b, c])
    assert torch.equal(avg["w"], torch.tensor([2.0, 3.0]))
    assert avg["h"].dtype == torch.float16 and avg["h"].item() == 2.0
    assert avg["n"].item() == 3  # not a parameter: taken from the first
    with pytest.raises(ValueError, match="other tensors"):
        average_state_dicts([a, {"w": a["w"]}])


@pytest.mark.parametrize("metric,values,best", [
    ("perplexity", [9.0, 7.0, 8.0, 12.0, 6.5], [5, 2, 3]),  # lower is better
    ("bleu", [9.0, 7.0, 8.0, 12.0, 6.5], [4, 1, 3]),        # higher is better
])
def test_the_n_best_are_kept_on_disk_and_the_rest_deleted(tmp_path, metric, values, best):
    kept = BestCheckpoints(tmp_path / "best", 3, metric)
    for n, v in enumerate(values, 1):
        kept.offer(n, v, {"w": torch.full((2,), float(n))})
    assert [e["checkpoint"] for e in kept.entries()] == best
    assert sorted(p.name for p in (tmp_path / "best").glob("*.pt")) == sorted(f"params.{n}.pt" for n in best)
    avg, used = BestCheckpoints(tmp_path / "best", 3, metric).average()  # a restarted job reads the same
    assert used == best and torch.allclose(avg["w"], torch.full((2,), sum(best) / 3))


def test_the_average_replaces_the_best_only_when_not_worse():
    assert better_or_equal("perplexity", 5.0, 5.0) and better_or_equal("perplexity", 4.9, 5.0)
    assert not better_or_equal("perplexity", 5.1, 5.0)
    assert better_or_equal("bleu", 20.1, 20.0) and not better_or_equal("bleu", 19.9, 20.0)
