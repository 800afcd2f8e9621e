"""EPIG against a brute-force mutual information, and the bounds it must obey."""

import itertools
import math

import numpy as np
import pytest
import torch

from acquisition import bald, epig


def _probs(shape: tuple[int, int, int], seed: int, concentration: float = 0.5) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(shape[-1], concentration), size=shape[:2]))


def _brute_force(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mean over targets of I[y; y*] = KL(joint ‖ product of marginals), the joint summed sample by sample."""
    s, n, c = p.shape
    m, d = q.shape[1], q.shape[2]
    scores = np.zeros(n)
    for i, j in itertools.product(range(n), range(m)):
        joint = np.zeros((c, d))
        for k in range(s):
            joint += np.outer(p[k, i], q[k, j]) / s
        marginals = np.outer(joint.sum(1), joint.sum(0))
        scores[i] += sum(joint[a, b] * math.log(joint[a, b] / marginals[a, b]) for a in range(c) for b in range(d))
    return scores / m


def test_epig_equals_the_mutual_information_of_the_joint_predictive():
    p, q = _probs((7, 5, 3), 0), _probs((7, 4, 3), 1)
    np.testing.assert_allclose(epig(p, q).numpy(), _brute_force(p.numpy(), q.numpy()), rtol=1e-10, atol=1e-14)


def test_epig_blocks_of_items_give_the_same_scores_as_one_at_a_time():
    p, q = _probs((6, 600, 4), 2), _probs((6, 9, 4), 3)  # 600 items: three blocks
    whole = epig(p, q)
    one_by_one = torch.cat([epig(p[:, i : i + 1], q) for i in range(0, 600, 97)])
    np.testing.assert_allclose(whole[::97].numpy(), one_by_one.numpy(), rtol=1e-12, atol=1e-15)


def test_epig_is_bounded_by_bald_and_vanishes_without_posterior_uncertainty():
    p, q = _probs((20, 50, 5), 4), _probs((20, 30, 5), 5)
    scores = epig(p, q)
    assert scores.dtype == torch.float64 and scores.shape == (50,)
    # Data processing: what a label says about another label cannot exceed what it says about the parameters.
    assert bool((scores <= bald(p) + 1e-12).all()) and float(scores.min()) >= 0.0
    assert float(scores.max()) > 1e-3
    assert float(epig(p[:1], q[:1]).max()) < 1e-12  # S = 1
    identical = p[:1].expand(20, 50, 5)  # every draw the same: no epistemic uncertainty
    assert float(epig(identical, q).abs().max()) < 1e-12


def test_epig_refuses_targets_from_other_posterior_draws():
    with pytest.raises(ValueError, match="the items have 4 posterior draws and the targets 3; they must share them"):
        epig(_probs((4, 2, 3), 0), _probs((3, 2, 3), 1))
    with pytest.raises(ValueError, match="epig needs at least one target input"):
        epig(_probs((4, 2, 3), 0), torch.empty(4, 0, 3, dtype=torch.float64))
