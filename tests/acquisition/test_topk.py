"""top_k and RunningTopK vs an exhaustive sort by (-score, id, position); results compared exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition import RunningTopK, top_k

SETTINGS = settings(derandomize=True, deadline=None, max_examples=150)

# Few distinct values, so ties are common; includes ±inf and -0.0 (== 0.0).
SCORES = st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, float("inf"), float("-inf")])
IDS = st.text(alphabet="ab9Zé😀", max_size=3)


@st.composite
def pools(draw, unique_ids=True):
    n = draw(st.integers(0, 30))
    ids_strategy = st.lists(IDS, min_size=n, max_size=n, unique=unique_ids)
    return draw(st.lists(SCORES, min_size=n, max_size=n)), draw(ids_strategy), draw(st.integers(0, 35))


def brute(scores, ids, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i], i))[:k]


@SETTINGS
@given(pool=pools(unique_ids=False))
def test_top_k_matches_exhaustive_sort(pool):
    scores, ids, k = pool
    positions = top_k(torch.tensor(scores, dtype=torch.float64), ids, k)
    assert positions.dtype == np.int64
    assert positions.tolist() == brute(scores, ids, k)


@SETTINGS
@given(pool=pools(), data=st.data())
def test_top_k_independent_of_input_order(pool, data):
    scores, ids, k = pool
    perm = data.draw(st.permutations(range(len(scores))))
    picked = [ids[i] for i in top_k(np.array(scores), ids, k)]
    picked_perm = [ids[perm[i]] for i in top_k(np.array(scores)[perm], [ids[i] for i in perm], k)]
    assert picked == picked_perm


def test_ties_broken_by_id_ascending():
    positions = top_k(torch.tensor([1.0, 2.0, 2.0, 1.0]), ["d", "c", "b", "a"], 4)
    assert positions.tolist() == [2, 1, 3, 0]
    # String order, not numeric: "10" < "9".
    assert top_k([0.5, 0.5], ["9", "10"], 1).tolist() == [1]


def test_k_larger_than_n_and_zero():
    assert top_k([0.1, 0.3], ["a", "b"], 10).tolist() == [1, 0]
    assert top_k([0.1, 0.3], ["a", "b"], 0).tolist() == []
    assert top_k([], [], 3).tolist() == []


def test_nan_names_the_item():
    with pytest.raises(ValueError, match="'item-7'"):
        top_k(torch.tensor([0.1, float("nan")]), ["item-3", "item-7"], 1)
    running = RunningTopK(2)
    running.update([0.2], ["ok"])
    with pytest.raises(ValueError, match="'bad'"):
        running.update(np.array([1.0, np.nan]), ["fine", "bad"])


@pytest.mark.parametrize("k", [-1, 1.5, True])
def test_bad_k_rejected(k):
    with pytest.raises(ValueError, match="k must be"):
        top_k([1.0], ["a"], k)


def test_misaligned_inputs_rejected():
    with pytest.raises(ValueError, match="2 scores but 1 item ids"):
        top_k([1.0, 2.0], ["a"], 1)


@SETTINGS
@given(pool=pools(unique_ids=False), data=st.data())
def test_running_top_k_equals_one_shot(pool, data):
    scores, ids, k = pool
    cuts = sorted(data.draw(st.lists(st.integers(0, len(scores)), max_size=6)))
    running = RunningTopK(k)
    kept = np.empty(0, dtype=np.int64)  # what a caller keeps per item, through the positions update returns
    for lo, hi in zip([0, *cuts], [*cuts, len(scores)], strict=True):
        positions = running.update(torch.tensor(scores[lo:hi], dtype=torch.float64), ids[lo:hi])
        kept = np.concatenate([kept, np.arange(lo, hi)])[positions]
    got_ids, got_scores = running.result()
    expected = brute(scores, ids, k)
    assert got_ids == [ids[i] for i in expected]
    assert kept.tolist() == list(expected)
    assert got_scores.dtype == np.float64
    np.testing.assert_array_equal(got_scores, [scores[i] for i in expected])
    assert running.n_seen == len(scores)


def test_running_top_k_memory_is_bounded():
    running = RunningTopK(3)
    rng = np.random.default_rng(0)
    for chunk in range(20):
        running.update(rng.random(100), [f"{chunk}-{i}" for i in range(100)])
        assert len(running.result()[0]) == 3
