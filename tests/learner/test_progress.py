"""Progress callbacks: pool scoring tells the items scored per chunk, training the steps of every loop, and neither
changes a number."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine

from learner import EvidenceOptions, ModelOptions, fit_candidate, stream_plan, stream_scores
from learner.candidates import CandidateSpec


@pytest.fixture(scope="module")
def wine_tensors():
    x, y = load_wine(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _fit(x, y, family, progress=None, **model):
    spec = CandidateSpec("c", ModelOptions(family=family, hidden=8, depth=1, steps=6, device="cpu", **model))
    ids = [f"i{i}" for i in range(len(x))]
    return fit_candidate(
        spec, EvidenceOptions(subset="last_layer"), x, y, ids, feature_shape=(x.shape[1],), n_classes=3, seed=0,
        progress=progress,
    )  # fmt: skip


def test_scoring_tells_the_items_scored_after_each_chunk_up_to_the_total(wine_tensors):
    x, y = wine_tensors
    model = _fit(x[:60], y[:60], "mc_dropout").model
    pool = x[60:]  # 118 items in chunks of 50
    chunks = [([f"p{i}" for i in range(s, min(s + 50, len(pool)))], pool[s : s + 50]) for s in range(0, len(pool), 50)]
    seen: list[tuple[int, int]] = []
    plan = stream_plan("bald", 5, 0)
    told = stream_scores(model, chunks, plan, samples=4, seed=0, progress=lambda d, t: seen.append((d, t)), total=118)
    assert seen == [(50, 118), (100, 118), (118, 118)]
    quiet = stream_scores(model, chunks, plan, samples=4, seed=0)
    assert told.ids == quiet.ids and np.array_equal(told.scores, quiet.scores)  # nothing changed


@pytest.mark.parametrize(("family", "loops"), [("mc_dropout", 1), ("laplace", 1), ("vi", 1), ("ensemble", 2)])
def test_training_tells_every_step_of_every_loop_and_changes_nothing(wine_tensors, family, loops):
    x, y = wine_tensors
    extra = {"members": 2} if family == "ensemble" else {}
    seen: list[tuple[int, int]] = []
    told = _fit(x, y, family, lambda d, t: seen.append((d, t)), **extra)
    done = [d for d, _ in seen]
    assert done == list(range(1, 6 * loops + 1))  # monotone, one per step, over the members one after another
    assert seen[-1] == (6 * loops, 6 * loops)
    quiet = _fit(x, y, family, **extra)
    probe = x[:7]
    np.testing.assert_array_equal(
        told.model.predictive_samples(probe, 3, seed=1).numpy(),
        quiet.model.predictive_samples(probe, 3, seed=1).numpy(),
    )
