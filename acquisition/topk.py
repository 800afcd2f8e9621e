"""Deterministic top-k selection of items by score, one-shot and streaming.

Order: score descending, ties broken by item id ascending (Python ``str`` order, i.e. by
code point), and items with equal score *and* equal id keep their input order. Item ids
are compared as strings, so ``"10" < "9"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["RunningTopK", "top_k"]


def _scores_and_ids(scores_N: torch.Tensor | np.ndarray | Sequence[float], item_ids: Sequence[str]):
    if isinstance(scores_N, torch.Tensor):
        scores_N = scores_N.detach().cpu().numpy()
    scores = np.asarray(scores_N, dtype=np.float64)
    ids = np.asarray(item_ids, dtype=np.str_).reshape(-1)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if len(ids) != len(scores):
        raise ValueError(f"got {len(scores)} scores but {len(ids)} item ids")
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"score of item {ids[nan[0]]!r} is NaN ({nan.size} NaN scores in all)")
    return scores, ids


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {k!r}")
    return int(k)


def _order(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` positions in (score desc, id asc, position asc) order."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        # Only items scoring at least the k-th best score can be selected: O(N) prefilter.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(len(scores))
    # np.lexsort sorts by the last key first and is stable.
    order = np.lexsort((ids[candidates], -scores[candidates]))
    return candidates[order[:k]]


def top_k(scores_N: torch.Tensor | np.ndarray | Sequence[float], item_ids: Sequence[str], k: int) -> np.ndarray:
    r"""Positions of the k highest-scoring items, best first.

    The order is the lexicographic order of :math:`(-s_i, \mathrm{id}_i)`, so equal scores are
    ranked by item id ascending and the result does not depend on the input order
    (except among items sharing both score and id, which keep their input order).

    Parameters
    ----------
    scores_N : torch.Tensor or np.ndarray or sequence of float
        One score per item; higher is better. ``±inf`` is allowed, NaN is not.
    item_ids : sequence of str
        Stable item ids, aligned with ``scores_N``.
    k : int
        Number of items to select; ``k > N`` returns all N.

    Returns
    -------
    np.ndarray
        int64 positions into ``scores_N`` / ``item_ids``, length ``min(k, N)``.

    Raises
    ------
    ValueError
        On a NaN score (the message names the item id), misaligned inputs or a negative k.
    """
    k = _check_k(k)
    scores, ids = _scores_and_ids(scores_N, item_ids)
    return _order(scores, ids, k).astype(np.int64)


class RunningTopK:
    """Streaming top-k over chunks, with the same result as :func:`top_k` on the concatenation.

    Keeps only the current best ``k`` (ids and scores), so memory is O(k + chunk size).
    Each :meth:`update` merges the chunk into the kept set and re-selects with the
    :func:`top_k` order; because the kept items precede the chunk and the sort is
    stable, even items with equal score and id come out as in the one-shot call.

    Parameters
    ----------
    k : int
        Number of items to keep.

    Examples
    --------
    >>> running = RunningTopK(2)
    >>> running.update([0.1, 0.9], ["a", "b"])
    >>> running.update([0.9, 0.5], ["a2", "c"])
    >>> running.result()
    (['a2', 'b'], array([0.9, 0.9]))
    """

    def __init__(self, k: int) -> None:
        self.k = _check_k(k)
        self.n_seen = 0
        self._ids = np.empty(0, dtype=np.str_)
        self._scores = np.empty(0, dtype=np.float64)

    def update(self, scores_chunk: torch.Tensor | np.ndarray | Sequence[float], ids_chunk: Sequence[str]) -> np.ndarray:
        """Merge one chunk of scores and their item ids (raises ValueError on NaN, naming the id).

        Returns the kept items' positions in the kept-then-chunk concatenation, best first, so a caller can keep
        something per item (e.g. its predictive samples) alongside.
        """
        scores, ids = _scores_and_ids(scores_chunk, ids_chunk)
        self.n_seen += len(scores)
        all_scores = np.concatenate([self._scores, scores])
        all_ids = np.concatenate([self._ids, ids])
        keep = _order(all_scores, all_ids, self.k)
        self._scores, self._ids = all_scores[keep], all_ids[keep]
        return keep

    def result(self) -> tuple[list[str], np.ndarray]:
        """Return ``(ids, scores)`` of the best ``min(k, n_seen)`` items, best first."""
        return self._ids.tolist(), self._scores.copy()
