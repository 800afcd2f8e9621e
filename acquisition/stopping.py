r"""When to stop labelling: stabilising predictions (Bloodgood & Vijay-Shanker 2009).

Each round the selected model predicts a class for every item of a fixed *stop set* of unlabelled pool items, and
the round's predictions are compared with the previous round's by Cohen's κ, the agreement beyond what the two
rounds' class frequencies give by chance. Once κ stays at or above a threshold for a few rounds in a row, the
labels those rounds added no longer change what the model predicts on the pool, so more labels are unlikely to
help. The signal needs no labels — a live campaign's test set is small or absent — and its cost is one predictive
on the stop set per round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cohen_kappa", "stable_rounds"]


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float:
    r"""Cohen's κ of two predictions of the same items: :math:`(p_o - p_e) / (1 - p_e)`, with :math:`p_o` the share
    of items given the same class and :math:`p_e = \sum_c p_1(c)\,p_2(c)` the share expected from the two class
    frequencies alone.

    1 when the two agree on every item (also when both give one class throughout, where the formula is 0 / 0).

    Raises
    ------
    ValueError
        When the two are not the same number of items, or there are none.
    """
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"two predictions of the same items are needed; got shapes {first.shape} and {second.shape}")
    if first.size == 0:
        raise ValueError("Cohen's kappa of no items is undefined")
    observed = float(np.mean(first == second))
    if observed == 1.0:
        return 1.0
    classes = int(max(first.max(), second.max())) + 1
    expected = float(np.dot(np.bincount(first, minlength=classes), np.bincount(second, minlength=classes)))
    expected /= first.size**2
    return (observed - expected) / (1.0 - expected)


def stable_rounds(kappas: Sequence[float | None], threshold: float) -> int:
    """How many of the latest rounds in a row had κ ≥ ``threshold`` (``kappas`` oldest first; ``None``: a round with
    no comparison, which ends the run)."""
    count = 0
    for kappa in reversed(kappas):
        if kappa is None or kappa < threshold:
            break
        count += 1
    return count
