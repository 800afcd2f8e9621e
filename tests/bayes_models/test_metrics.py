"""Calibration metrics vs brute-force float64 loops (tolerance 1e-12 absolute) and hand-computed examples."""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.scores import bald, expected_entropy, predictive_entropy
from bayes_models.metrics import (
    ECE,
    NLL,
    NLL_EPS,
    Accuracy,
    Brier,
    Reliability,
    accuracy,
    brier,
    ece,
    nll,
    reliability,
    uncertainty_decomposition,
)

ATOL = 1e-12
SETTINGS = settings(derandomize=True, deadline=None, max_examples=80)


@st.composite
def labelled(draw, max_n=40, max_c=5):
    """(probs[N, C], targets[N]). Small integer weights put confidences on bin edges (e.g. 1/3 = 5/15)
    and give exact zeros and argmax ties."""
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    w = draw(hnp.arrays(np.float64, (n, c), elements=st.integers(0, 5).map(float)))
    w[:, 0] = np.where(w.sum(-1) == 0, 1.0, w[:, 0])
    targets = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return w / w.sum(-1, keepdims=True), targets


# ---- brute force ----------------------------------------------------------------------------


def bf_argmax(p):
    return max(range(len(p)), key=lambda c: (p[c], -c))


def bf_accuracy(P, y):
    return sum(bf_argmax(p) == t for p, t in zip(P, y, strict=True)) / len(y)


def bf_nll(P, y, eps=NLL_EPS):
    return sum(-math.log(max(p[t], eps)) for p, t in zip(P, y, strict=True)) / len(y)


def bf_brier(P, y):
    return sum(sum((p[c] - (c == t)) ** 2 for c in range(len(p))) for p, t in zip(P, y, strict=True)) / len(y)


def bf_bins(P, y, n_bins):
    """Per-bin (count, sum_conf, sum_correct) with bins (b/M, (b+1)/M], 0 in the first bin."""
    stats = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for p, t in zip(P, y, strict=True):
        conf = max(p)
        b = next(b for b in range(n_bins) if conf <= (b + 1) / n_bins)
        assert b == 0 or b / n_bins < conf
        stats[b][0] += 1
        stats[b][1] += conf
        stats[b][2] += bf_argmax(p) == t
    return stats


def bf_ece(P, y, n_bins):
    total = 0.0
    for count, s_conf, s_corr in bf_bins(P, y, n_bins):
        if count:
            total += count / len(y) * abs(s_corr / count - s_conf / count)
    return total


@SETTINGS
@given(data=labelled(), n_bins=st.integers(1, 20))
def test_metrics_match_brute_force(data, n_bins):
    P, y = data
    p, t = torch.from_numpy(P), torch.from_numpy(y)
    assert accuracy(p, t) == pytest.approx(bf_accuracy(P, y), abs=ATOL)
    assert nll(p, t) == pytest.approx(bf_nll(P, y), abs=ATOL)
    assert brier(p, t) == pytest.approx(bf_brier(P, y), abs=ATOL)
    assert ece(p, t, n_bins=n_bins) == pytest.approx(bf_ece(P, y, n_bins), abs=ATOL)

    diagram = reliability(p, t, n_bins=n_bins)
    stats = bf_bins(P, y, n_bins)
    np.testing.assert_array_equal(diagram.count, [s[0] for s in stats])
    np.testing.assert_array_equal(diagram.bin_edges, [b / n_bins for b in range(n_bins + 1)])
    filled = diagram.count > 0
    np.testing.assert_allclose(diagram.confidence[filled], [s[1] / s[0] for s in stats if s[0]], atol=ATOL)
    np.testing.assert_allclose(diagram.accuracy[filled], [s[2] / s[0] for s in stats if s[0]], atol=ATOL)
    assert np.isnan(diagram.confidence[~filled]).all() and np.isnan(diagram.accuracy[~filled]).all()


@SETTINGS
@given(data=labelled(max_n=60), cuts=st.lists(st.integers(0, 60), max_size=5))
def test_streaming_equals_one_shot(data, cuts):
    P, y = data
    p, t = torch.from_numpy(P).float(), torch.from_numpy(y)
    cuts = sorted(min(c, len(y)) for c in cuts)
    for make, one_shot in [
        (Accuracy, accuracy),
        (NLL, nll),
        (Brier, brier),
        (ECE, ece),
    ]:
        metric = make()
        for lo, hi in zip([0, *cuts], [*cuts, len(y)], strict=True):
            metric.update(p[lo:hi], t[lo:hi])
        assert metric.compute() == pytest.approx(one_shot(p, t), abs=ATOL)
    streamed = Reliability(7)
    for lo, hi in zip([0, *cuts], [*cuts, len(y)], strict=True):
        streamed.update(p[lo:hi], t[lo:hi])
    np.testing.assert_allclose(streamed.compute().confidence, reliability(p, t, 7).confidence, atol=ATOL)


def test_ece_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.3, 0.7]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 1])  # correct, wrong, correct (tie -> class 0), correct
    # 2 bins: (0, .5] holds conf .5 (acc 1); (.5, 1] holds .9, .8, .7 (mean .8, acc 2/3).
    assert ece(probs, targets, n_bins=2) == pytest.approx(0.25 * 0.5 + 0.75 * abs(2 / 3 - 0.8), abs=ATOL)
    # 15 bins: every item alone in its bin (0.8 = 12/15 sits on an edge and belongs to bin 11).
    assert ece(probs, targets) == pytest.approx((0.1 + 0.8 + 0.5 + 0.3) / 4, abs=ATOL)
    counts = reliability(probs, targets).count
    assert np.flatnonzero(counts).tolist() == [7, 10, 11, 13]


def test_perfect_predictions():
    probs, targets = torch.eye(3), torch.arange(3)
    assert accuracy(probs, targets) == 1.0
    assert nll(probs, targets) == 0.0
    assert brier(probs, targets) == 0.0
    assert ece(probs, targets) == 0.0


def test_nll_clamps_zero_probability():
    value = nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert value == pytest.approx(-math.log(NLL_EPS))
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_reset_and_empty():
    metric = Accuracy()
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()
    metric.update(torch.tensor([[0.2, 0.8]]), torch.tensor([0]))
    metric.reset()
    metric.update(torch.tensor([[0.2, 0.8]]), torch.tensor([1]))
    assert metric.compute() == 1.0
    calibration = ECE()
    with pytest.raises(RuntimeError, match="before any update"):
        calibration.compute()


@pytest.mark.parametrize(
    ("probs", "targets", "match"),
    [
        (torch.ones(3), torch.zeros(3, dtype=torch.long), r"\[N, C\]"),
        (torch.ones(3, 2), torch.zeros(2, dtype=torch.long), "targets_N must have shape"),
        (torch.ones(3, 2), torch.tensor([0, 2, 1]), r"\[0, 2\)"),
        (torch.ones(3, 2), torch.zeros(3), "integer class indices"),
    ],
)
def test_bad_inputs_rejected(probs, targets, match):
    with pytest.raises(ValueError, match=match):
        accuracy(probs, targets)


def test_uncertainty_decomposition_matches_acquisition():
    probs = torch.softmax(torch.randn(6, 30, 4, generator=torch.Generator().manual_seed(3)) * 3, -1)
    probs[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    total, aleatoric, epistemic = uncertainty_decomposition(probs)
    torch.testing.assert_close(total, predictive_entropy(probs), rtol=0, atol=ATOL)
    torch.testing.assert_close(aleatoric, expected_entropy(probs), rtol=0, atol=ATOL)
    torch.testing.assert_close(epistemic, bald(probs), rtol=0, atol=ATOL)
    torch.testing.assert_close(total, aleatoric + epistemic, rtol=0, atol=ATOL)
    assert (epistemic >= 0).all() and total.dtype == torch.float64
