"""Cohen's κ against scikit-learn's, and the count of stable rounds."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from acquisition.stopping import cohen_kappa, stable_rounds


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 4, size=200)
    second = np.where(rng.random(200) < 0.8, first, rng.integers(0, 6, size=200))  # a class only one of them has
    assert cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


def test_kappa_of_a_worked_example():
    # 10 items, agree on 8: p_o = 0.8; class shares (0.5, 0.5) and (0.4, 0.6): p_e = 0.2 + 0.3 = 0.5; κ = 0.6.
    first = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    second = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    assert cohen_kappa(first, second) == pytest.approx(0.6, abs=1e-12)
    assert cohen_kappa(first, 1 - first) == pytest.approx(-1.0, abs=1e-12)


def test_identical_predictions_agree_fully_even_with_one_class():
    assert cohen_kappa(np.full(7, 3), np.full(7, 3)) == 1.0  # 0 / 0 in the formula
    assert cohen_kappa(np.arange(5), np.arange(5)) == 1.0


def test_kappa_refuses_predictions_of_different_items():
    with pytest.raises(ValueError, match="shapes"):
        cohen_kappa(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no items"):
        cohen_kappa(np.zeros(0), np.zeros(0))


def test_stable_rounds_counts_the_latest_run_at_the_threshold():
    assert stable_rounds([], 0.99) == 0
    assert stable_rounds([None, 0.995, 0.999, 0.992], 0.99) == 3
    assert stable_rounds([0.995, 0.98, 0.999, 0.99], 0.99) == 2  # the threshold itself counts
    assert stable_rounds([0.999, 0.999, None], 0.99) == 0  # a round without a comparison ends the run
    assert stable_rounds([0.999, 0.999, 0.97], 0.99) == 0
