"""BatchBALD and stochastic batch acquisition vs brute-force float64 loops and sampling-law checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from acquisition import bald, top_k
from acquisition.batch import (
    _conditional_entropies,
    _exact_state,
    _extend_exact,
    _sampled_state,
    batchbald,
    joint_mutual_information,
    perturbed_scores,
    powerbald,
    powerbald_scores,
)


def _probs(S: int, N: int, C: int, seed: int, concentration: float = 0.5) -> torch.Tensor:
    """Independent Dirichlet(concentration) class probabilities, float64 rows summing to 1."""
    x = np.random.default_rng(seed).gamma(concentration, size=(S, N, C)) + 1e-12
    return torch.from_numpy(x / x.sum(-1, keepdims=True))


def _brute_joint_mi(p: np.ndarray, positions: list[int]) -> float:
    """I[y_B; θ] by explicit loops over class configurations and samples (independent of the library)."""
    S, _, C = p.shape
    joint_entropy = 0.0
    for config in itertools.product(range(C), repeat=len(positions)):
        q = 0.0
        for s in range(S):
            product = 1.0
            for i, c in zip(positions, config, strict=True):
                product *= p[s, i, c]
            q += product / S
        if q > 0:
            joint_entropy -= q * math.log(q)
    conditional = 0.0
    for i in positions:
        for s in range(S):
            conditional -= sum(v * math.log(v) for v in p[s, i] if v > 0) / S
    return joint_entropy - conditional


def _brute_greedy(p: np.ndarray, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        gains = {i: _brute_joint_mi(p, [*chosen, i]) for i in range(p.shape[1]) if i not in chosen}
        chosen.append(max(gains, key=lambda i: (gains[i], -i)))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_joint_mutual_information_matches_brute_force(seed):
    p = _probs(5, 6, 3, seed)
    pn = p.numpy()
    for positions in ([2], [0, 4], [5, 1, 3]):
        assert joint_mutual_information(p, positions) == pytest.approx(_brute_joint_mi(pn, positions), abs=1e-12)
    assert joint_mutual_information(p, []) == 0.0
    assert joint_mutual_information(p, [2]) == pytest.approx(bald(p)[2].item(), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_batchbald_is_greedy_joint_mi_exactly(seed):
    p = _probs(6, 9, 3, seed)
    expected = _brute_greedy(p.numpy(), 3)
    assert batchbald(p, 3).tolist() == expected
    assert batchbald(p, 3, lazy=False).tolist() == expected


def test_lazy_greedy_equals_full_evaluation():
    p = _probs(8, 80, 3, seed=11)
    lazy = batchbald(p, 6, exact_threshold=3**6)
    full = batchbald(p, 6, exact_threshold=3**6, lazy=False)
    assert lazy.tolist() == full.tolist()
    assert len(set(lazy.tolist())) == 6


@pytest.mark.parametrize("exact_threshold", [None, 1])
def test_first_pick_is_top_bald(exact_threshold):
    p = _probs(10, 200, 5, seed=3)
    picks = batchbald(p, 3, exact_threshold=exact_threshold, generator=torch.Generator().manual_seed(0))
    assert picks[0].item() == int(torch.argmax(bald(p)))
    assert picks.dtype == torch.long and len(set(picks.tolist())) == 3


def test_sampled_estimator_close_to_exact():
    """With 3 chosen items of 3 classes both regimes apply: 27 enumerated vs 60 000 drawn configurations."""
    p = _probs(12, 40, 3, seed=5)
    batch = [4, 17, 29]
    joint = torch.ones(12, 1, dtype=torch.float64)
    for i in batch:
        joint = _extend_exact(joint, p[:, i])
    exact, exact_se = _conditional_entropies(_exact_state(joint), p)
    sampled = _sampled_state(p[:, batch], 60000, torch.Generator().manual_seed(0))
    estimate, se = _conditional_entropies(sampled, p)
    assert exact_se.abs().max() == 0 and se.min() > 0
    z = (estimate - exact) / se
    assert z.abs().max() < 4.5, z
    assert (estimate - exact).abs().max() < 0.01
    # end to end: the sampled regime's batch is (nearly) as informative as the exact one
    exact_batch = batchbald(p, 4, exact_threshold=10**6)
    sampled_batch = batchbald(p, 4, exact_threshold=1, num_samples=20000, generator=torch.Generator().manual_seed(1))
    assert joint_mutual_information(p, sampled_batch) >= 0.98 * joint_mutual_information(p, exact_batch)


def test_sampled_regime_is_deterministic_given_generator():
    p = _probs(10, 60, 4, seed=8)
    runs = [
        batchbald(p, 6, exact_threshold=4, num_samples=500, generator=torch.Generator().manual_seed(7)) for _ in "ab"
    ]
    assert torch.equal(runs[0], runs[1])


def test_batchbald_skips_a_duplicate_of_the_most_informative_item():
    S = 8
    s = torch.arange(S)
    parity = torch.stack([s % 2, (s // 2) % 2])  # two independent partitions of the samples
    p = _probs(S, 10, 2, seed=0, concentration=200.0)  # filler: near-uniform, little disagreement
    a = torch.where(parity[0, :, None] == 0, torch.tensor([0.99, 0.01]), torch.tensor([0.01, 0.99])).double()
    b = torch.where(parity[1, :, None] == 0, torch.tensor([0.95, 0.05]), torch.tensor([0.05, 0.95])).double()
    p[:, 0], p[:, 3], p[:, 5] = b, a, a  # B, A and A's copy
    assert top_k(bald(p), [str(i) for i in range(10)], 2).tolist() == [3, 5]  # top-k BALD takes the copy
    picks = batchbald(p, 3).tolist()
    assert picks[:2] == [3, 0]
    assert 5 not in picks[:2]


def test_ties_broken_by_item_id_or_position():
    p = _probs(6, 5, 3, seed=2)
    p[:, 1] = p[:, 4] = _probs(6, 1, 3, seed=9, concentration=0.1)[:, 0]  # two identical, most informative
    assert int(torch.argmax(bald(p))) == 1
    assert batchbald(p, 1).tolist() == [1]
    assert batchbald(p, 1, item_ids=["e", "d", "c", "b", "a"]).tolist() == [4]


def test_k_edge_cases_and_validation():
    p = _probs(4, 3, 2, seed=0)
    assert batchbald(p, 0).tolist() == [] and sorted(batchbald(p, 10).tolist()) == [0, 1, 2]
    assert sorted(powerbald(p, 10, generator=torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2]
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        batchbald(p.numpy(), 2)
    with pytest.raises(ValueError, match=r"shape \[S, N, C\]"):
        batchbald(p[0], 2)
    bad = p.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"probs_S_N_C\[1, 2, 0\] = nan is not finite"):
        batchbald(bad, 2)
    with pytest.raises(ValueError, match=r"probs_S_N_C\[0, 0, :\] sums to 3, expected 1 .*not logits"):
        powerbald(3 * p, 2)
    bad = p.clone()
    bad[0, 1] = torch.tensor([1.5, -0.5])
    with pytest.raises(ValueError, match="is negative"):
        batchbald(bad, 1)
    with pytest.raises(ValueError, match="k must be a non-negative integer"):
        batchbald(p, -1)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        batchbald(p, 1, num_samples=0)
    with pytest.raises(ValueError, match="got 2 item ids for 3 items"):
        batchbald(p, 1, item_ids=["a", "b"])
    with pytest.raises(ValueError, match="unknown mode 'top'; valid modes: power, softmax, softrank"):
        powerbald(p, 1, mode="top")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        powerbald(p, 1, beta=-1.0)
    with pytest.raises(ValueError, match=r"power mode needs scores >= 0.*position 0"):
        powerbald(p, 1, scores_fn="margin")
    with pytest.raises(ValueError, match="unknown acquisition function 'nope'"):
        powerbald(p, 1, scores_fn="nope")
    with pytest.raises(ValueError, match="positions must be distinct"):
        joint_mutual_information(p, [1, 1])
    with pytest.raises(ValueError, match="position 3 is out of range"):
        joint_mutual_information(p, [3])
    with pytest.raises(ValueError, match="exceed max_configurations"):
        joint_mutual_information(p, [0, 1, 2], max_configurations=4)


def test_powerbald_seeded_determinism():
    p = _probs(8, 50, 4, seed=1)
    for mode in ("power", "softmax", "softrank"):
        a = powerbald(p, 10, mode=mode, generator=torch.Generator().manual_seed(3))
        b = powerbald(p, 10, mode=mode, generator=torch.Generator().manual_seed(3))
        c = powerbald(p, 10, mode=mode, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.dtype == torch.long and len(set(a.tolist())) == 10
    # the per-item score form draws the same batch from the same generator state
    keys = powerbald_scores(p, generator=torch.Generator().manual_seed(3))
    top = top_k(keys, [f"{i:03d}" for i in range(50)], 10).tolist()
    assert top == powerbald(p, 10, generator=torch.Generator().manual_seed(3)).tolist()


SCORES = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.0], dtype=torch.float64)
LAWS = {
    ("power", 2.0): SCORES**2,
    ("softmax", 3.0): torch.exp(3.0 * SCORES),
    ("softrank", 1.0): 1.0 / torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64),
    ("power", 0.0): torch.ones(5, dtype=torch.float64),
}


@pytest.mark.parametrize(("mode", "beta"), list(LAWS))
def test_powerbald_single_draw_frequencies_follow_the_law(mode, beta):
    p = _probs(2, 5, 2, seed=0)
    generator = torch.Generator().manual_seed(2024)
    draws = 3000
    counts = np.zeros(5)
    for _ in range(draws):
        counts[powerbald(p, 1, beta=beta, mode=mode, scores_fn=lambda _: SCORES, generator=generator).item()] += 1
    law = (LAWS[mode, beta] / LAWS[mode, beta].sum()).numpy()
    chi2 = float(((counts - draws * law) ** 2 / (draws * law)).sum())
    assert chi2 < 23.5, (counts, draws * law)  # chi-square, 4 degrees of freedom, p = 1e-4


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_large_beta_approaches_top_k(mode):
    p = _probs(8, 40, 4, seed=6)
    scores = bald(p)
    ids = [f"{i:02d}" for i in range(40)]
    expected = top_k(scores, ids, 7).tolist()
    for seed in range(3):
        got = powerbald(p, 7, beta=1e5, mode=mode, generator=torch.Generator().manual_seed(seed))
        assert got.tolist() == expected


def test_zero_weight_items_fill_the_batch_last():
    keys = perturbed_scores(torch.tensor([0.0, 0.5, 0.0, 0.2]), generator=torch.Generator().manual_seed(0))
    assert torch.isinf(keys[[0, 2]]).all() and torch.isfinite(keys[[1, 3]]).all()
    p = _probs(2, 4, 2, seed=0)
    picks = powerbald(p, 4, scores_fn=lambda _: torch.tensor([0.0, 0.5, 0.0, 0.2]), item_ids=["d", "c", "b", "a"])
    assert sorted(picks[:2].tolist()) == [1, 3] and picks[2:].tolist() == [2, 0]
