"""A simulated campaign with the learner: an oracle answers every queried item from held-back labels.

The in-process counterpart of the flows' ``simulate_campaign``: round 1 fits the initial labels, every later round
teaches the previous round's batch; each round's test metrics are those the flows log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bayes_models.metrics import accuracy, nll
from learner.active import ActiveLearner, as_features, as_labels


@dataclass(frozen=True)
class SimulatedRound:
    round: int
    n_labeled: int
    test_accuracy: float
    test_nll: float
    selected: str
    queued: list[str]
    """Ids of the batch queried after this round's fit (taught in the next round)."""


def simulate(
    learner: ActiveLearner,
    x: Any,
    y: Any,
    x_test: Any,
    y_test: Any,
    *,
    initial: Sequence[int],
    k: int,
    rounds: int,
    ids: Sequence[str] | None = None,
) -> list[SimulatedRound]:
    """``rounds`` rounds on the pool ``(x, y)``: fit the ``initial`` positions, then query ``k`` and teach their
    true labels, round after round; test accuracy and NLL of the selected model after every fit."""
    x, y, x_test, y_test = as_features(x), as_labels(y), as_features(x_test), as_labels(y_test)
    names = np.asarray([str(i) for i in ids] if ids is not None else [f"{i:012d}" for i in range(len(y))])
    chosen = np.asarray(initial, dtype=np.int64)
    remaining = np.setdiff1d(np.arange(len(y)), chosen)
    history = []
    for round_ in range(1, rounds + 1):
        if round_ == 1:
            learner.fit(x[chosen], y[chosen], ids=names[chosen].tolist())
        else:
            learner.teach(x[chosen], y[chosen], ids=names[chosen].tolist())
        probs = torch.from_numpy(learner.predict_proba(x_test))
        batch = learner.query(x[remaining], k, ids=names[remaining].tolist()) if len(remaining) else None
        queued = batch.ids if batch is not None else []
        history.append(
            SimulatedRound(
                round_, learner.n_labeled, accuracy(probs, y_test), nll(probs, y_test), learner.selected.name, queued
            )
        )
        if batch is None:
            break
        chosen = remaining[batch.indices]
        remaining = np.setdiff1d(remaining, chosen)
    return history
