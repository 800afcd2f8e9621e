"""Score functions vs brute-force float64 loops; tolerance 1e-10 absolute throughout."""

import math
from collections import Counter

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition import (
    ACQUISITION_FUNCTIONS,
    bald,
    bald_from_log_probs,
    expected_entropy,
    expected_entropy_from_log_probs,
    get_acquisition,
    least_confidence,
    margin,
    mean_std,
    predictive_entropy,
    predictive_entropy_from_log_probs,
    random,
    variation_ratios,
)

ATOL = 1e-10
SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)


@st.composite
def probs_arrays(draw, max_s=5, max_n=6, max_c=5):
    """probs[S, N, C] with exact zeros, exact ones and tiny values; rows sum to 1."""
    shape = (draw(st.integers(1, max_s)), draw(st.integers(1, max_n)), draw(st.integers(1, max_c)))
    elements = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0), st.floats(0.0, 1e-300))
    w = draw(hnp.arrays(np.float64, shape, elements=elements))
    w[..., 0] = np.where(w.sum(-1) == 0, 1.0, w[..., 0])  # an all-zero row becomes one-hot
    return w / w.sum(-1, keepdims=True)


# ---- brute force, one item at a time, float64 Python arithmetic --------------------------------


def bf_entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def bf_mean(P, n):
    S, _, C = P.shape
    return [sum(P[s, n, c] for s in range(S)) / S for c in range(C)]


def bf_argmax(p):
    best = 0
    for c in range(len(p)):
        if p[c] > p[best]:
            best = c
    return best


def bf_predictive_entropy(P):
    return [bf_entropy(bf_mean(P, n)) for n in range(P.shape[1])]


def bf_expected_entropy(P):
    S, N, _ = P.shape
    return [sum(bf_entropy(P[s, n]) for s in range(S)) / S for n in range(N)]


def bf_bald(P):
    return [max(t - a, 0.0) for t, a in zip(bf_predictive_entropy(P), bf_expected_entropy(P), strict=True)]


def bf_variation_ratios(P):
    S, N, _ = P.shape
    return [1 - max(Counter(bf_argmax(P[s, n]) for s in range(S)).values()) / S for n in range(N)]


def bf_mean_std(P):
    S, N, C = P.shape
    out = []
    for n in range(N):
        m = bf_mean(P, n)
        out.append(sum(math.sqrt(sum((P[s, n, c] - m[c]) ** 2 for s in range(S)) / S) for c in range(C)) / C)
    return out


def bf_margin(P):
    out = []
    for n in range(P.shape[1]):
        top = [*sorted(bf_mean(P, n), reverse=True), 0.0]
        out.append(-(top[0] - top[1]))
    return out


def bf_least_confidence(P):
    return [1 - max(bf_mean(P, n)) for n in range(P.shape[1])]


PAIRS = [
    (predictive_entropy, bf_predictive_entropy),
    (expected_entropy, bf_expected_entropy),
    (bald, bf_bald),
    (variation_ratios, bf_variation_ratios),
    (mean_std, bf_mean_std),
    (margin, bf_margin),
    (least_confidence, bf_least_confidence),
]
IDS = [fn.__name__ for fn, _ in PAIRS]


@pytest.mark.parametrize(("fn", "brute"), PAIRS, ids=IDS)
@SETTINGS
@given(P=probs_arrays())
def test_matches_brute_force(fn, brute, P):
    scores = fn(torch.from_numpy(P))
    assert scores.dtype == torch.float64 and scores.shape == (P.shape[1],)
    assert torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), brute(P), rtol=0, atol=ATOL)


@pytest.mark.parametrize(("fn", "brute"), PAIRS, ids=IDS)
@SETTINGS
@given(P=probs_arrays())
def test_float32_input_scored_in_float64(fn, brute, P):
    P32 = P.astype(np.float32)
    scores = fn(torch.from_numpy(P32))
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), brute(P32.astype(np.float64)), rtol=0, atol=ATOL)


@SETTINGS
@given(P=probs_arrays(max_s=8, max_c=8))
def test_bald_non_negative_and_decomposes(P):
    for p in (torch.from_numpy(P), torch.from_numpy(P).float()):
        mi = bald(p)
        assert (mi >= -1e-6).all() and (mi >= 0).all()
        np.testing.assert_allclose(mi, predictive_entropy(p) - expected_entropy(p), rtol=0, atol=1e-12)


@SETTINGS
@given(P=probs_arrays())
def test_log_prob_variants_equal_prob_variants(P):
    log_p = torch.from_numpy(P).log()  # exact zeros give -inf
    for from_log, from_probs in [
        (predictive_entropy_from_log_probs, predictive_entropy),
        (expected_entropy_from_log_probs, expected_entropy),
        (bald_from_log_probs, bald),
    ]:
        scores = from_log(log_p)
        assert torch.isfinite(scores).all()
        np.testing.assert_allclose(scores, from_probs(torch.from_numpy(P)), rtol=0, atol=ATOL)


def test_log_prob_variants_from_log_softmax():
    logits = torch.randn(7, 11, 4, generator=torch.Generator().manual_seed(0)) * 30
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(bald_from_log_probs(log_p), bald(log_p.exp()), rtol=0, atol=1e-6)
    assert (bald_from_log_probs(log_p) >= 0).all()


@pytest.mark.parametrize("fn", [fn for fn, _ in PAIRS], ids=IDS)
def test_one_class(fn):
    scores = fn(torch.ones(3, 4, 1))
    expected = -1.0 if fn is margin else 0.0
    assert torch.equal(scores, torch.full((4,), expected, dtype=torch.float64))


def test_single_sample_has_zero_bald():
    P = torch.softmax(torch.randn(1, 20, 5, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.equal(bald(P), torch.zeros(20, dtype=torch.float64))
    assert torch.equal(variation_ratios(P), torch.zeros(20, dtype=torch.float64))
    assert torch.equal(mean_std(P), torch.zeros(20, dtype=torch.float64))


def test_one_hot_samples():
    # Item 0: all samples agree on class 1. Item 1: votes 2 × class 0, 1 × class 2.
    P = torch.zeros(3, 2, 3, dtype=torch.float64)
    P[:, 0, 1] = 1
    P[0, 1, 0] = P[1, 1, 0] = P[2, 1, 2] = 1
    votes = torch.tensor([2 / 3, 0.0, 1 / 3], dtype=torch.float64)
    vote_entropy = -(votes[votes > 0] * votes[votes > 0].log()).sum()
    assert torch.equal(expected_entropy(P), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(predictive_entropy(P), torch.stack([torch.tensor(0.0).double(), vote_entropy]))
    torch.testing.assert_close(bald(P), predictive_entropy(P))
    torch.testing.assert_close(variation_ratios(P), torch.tensor([0.0, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(least_confidence(P), torch.tensor([0.0, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(margin(P), torch.tensor([-1.0, -1 / 3], dtype=torch.float64))


def test_empty_pool_gives_empty_scores():
    for fn in ACQUISITION_FUNCTIONS.values():
        assert fn(torch.ones(2, 0, 3) / 3).shape == (0,)


def test_random_is_seeded_and_ignores_values():
    P, Q = torch.rand(4, 9, 3), torch.rand(2, 9, 5)
    a = random(P, generator=torch.Generator().manual_seed(7))
    b = random(Q, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (9,)
    assert ((a >= 0) & (a < 1)).all()
    assert not torch.equal(a, random(P, generator=torch.Generator().manual_seed(8)))


def test_registry_and_alias():
    public = {
        "predictive_entropy",
        "expected_entropy",
        "bald",
        "variation_ratios",
        "mean_std",
        "margin",
        "least_confidence",
        "random",
    }
    assert set(ACQUISITION_FUNCTIONS) == public | {"entropy", "powerbald"}
    assert get_acquisition("entropy") is predictive_entropy
    for name in public:
        assert get_acquisition(name).__name__ == name
    with pytest.raises(ValueError, match="batchbald selects a batch jointly"):
        get_acquisition("batchbald")


def test_unknown_name_is_named_with_valid_choices():
    with pytest.raises(ValueError, match=r"'bold'.*bald.*variation_ratios"):
        get_acquisition("bold")


@pytest.mark.parametrize("shape", [(3, 4), (0, 2, 3), (2, 3, 0)])
def test_bad_shapes_rejected(shape):
    with pytest.raises(ValueError, match="S, N, C"):
        bald(torch.ones(shape))
