r"""Score a pool chunk by chunk with a running top-k and streaming uncertainty histograms.

Memory is O(k + chunk): the predictive samples ``probs[S, B, C]`` of one chunk at a time, never ``[S, N, C]``
for the pool. Alongside the top-k, fixed-bin histograms over :math:`[0, \log C]` of each scored item's
aleatoric (expected entropy :math:`\mathbb E_s H[p_s]`) and epistemic (BALD) uncertainty are accumulated, for
the round's "aleatoric vs epistemic" plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from acquisition.batch import _check_positive, perturbed_scores, powerbald_scores
from acquisition.scores import (
    ScoreFn,
    _as_float64,
    _entropy,
    bald,
    expected_entropy,
    get_acquisition,
    predictive_entropy,
)
from acquisition.topk import RunningTopK, _check_k

__all__ = ["StreamResult", "score_pool_streaming"]

PredictSamples = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class StreamResult:
    """Outcome of :func:`score_pool_streaming`.

    Attributes
    ----------
    ids : list of str
        The best ``min(k, n_scored)`` item ids, best first (score desc, id asc).
    scores : np.ndarray
        Their scores (float64), aligned with ``ids``.
    n_scored : int
        Items scored (the subsample's size when subsampling).
    aleatoric_hist, epistemic_hist : np.ndarray
        int64 counts per bin of expected entropy and of BALD over the scored items; each sums to ``n_scored``.
    bin_edges : np.ndarray
        The ``bins + 1`` edges, evenly over ``[0, log C]`` (``[0, 1]`` when C = 1); values past the last edge
        (rounding) count in the last bin.
    n_read : int
        Items read from ``pool_chunks`` (the pool's size).
    probs : torch.Tensor or None
        ``probs[S, K, C]`` of the kept items, aligned with ``ids``, when asked for (``keep_probs``): what a batch
        selector (BatchBALD) or a predicted class needs, without predicting the top-k again.
    """

    ids: list[str]
    scores: np.ndarray
    n_scored: int
    aleatoric_hist: np.ndarray
    epistemic_hist: np.ndarray
    bin_edges: np.ndarray
    n_read: int
    probs: torch.Tensor | None = None


def score_pool_streaming(
    predict_samples: PredictSamples,
    pool_chunks: Iterable[tuple[Sequence[str], torch.Tensor]],
    *,
    k: int,
    acquisition: str | ScoreFn,
    samples: int,
    generator: torch.Generator | None = None,
    subsample: int | None = None,
    pool_size: int | None = None,
    bins: int = 50,
    keep_probs: bool = False,
) -> StreamResult:
    """Score every pool chunk, keep the top k, accumulate uncertainty histograms.

    Parameters
    ----------
    predict_samples : callable
        ``predict_samples(x_chunk, S) -> probs[S, B, C]``, e.g. ``model.predictive_samples`` or
        ``functools.partial(bayes_models.fast_head.predictive_samples_consistent, network)``.
    pool_chunks : iterable of (ids_chunk, x_chunk)
        E.g. ``data.pool.iter_pool_chunks(...)``; read once, in order.
    k : int
        Number of items to return.
    acquisition : str or callable
        A registry name (``acquisition.get_acquisition``) or a score function ``probs[S, B, C] -> scores[B]``.
        It must score each item on its own (not ``batchbald``); it is called with ``generator=generator``.
    samples : int
        S, the number of predictive samples per item.
    generator : torch.Generator, optional
        Seeded source of the subsample and of random score functions (``random``, ``powerbald_scores``).
    subsample : int, optional
        Score only M items drawn uniformly without replacement from the pool before scoring (Gal et al. 2017
        score a random subset of the pool). Needs ``pool_size``; items outside it are never passed to the model.
    pool_size : int, optional
        Number of items ``pool_chunks`` yields (0 for an exhausted pool: an empty result); required with
        ``subsample`` and checked at the end.
    bins : int
        Number of histogram bins.
    keep_probs : bool
        Keep the predictive samples of the top-k items (``StreamResult.probs``, on the CPU).

    Returns
    -------
    StreamResult

    Raises
    ------
    ValueError
        Bad arguments, ``probs`` of the wrong shape, a class count changing between chunks, a NaN score (naming
        the item id), or a pool whose size differs from ``pool_size``.
    """
    k = _check_k(k)
    score_fn = get_acquisition(acquisition) if isinstance(acquisition, str) else acquisition
    _check_positive(samples, "samples")
    _check_positive(bins, "bins")
    selected = None
    if subsample is not None:
        _check_positive(subsample, "subsample")
        if pool_size is None:
            raise ValueError("subsample needs pool_size, the number of items pool_chunks yields")
        _check_k(pool_size, "pool_size")
        if subsample < pool_size:
            selected = np.zeros(pool_size, dtype=bool)
            chosen = torch.randperm(pool_size, generator=generator, device=_draw_device(generator))[:subsample]
            selected[chosen.cpu().numpy()] = True
    running = RunningTopK(k)
    aleatoric = np.zeros(bins, dtype=np.int64)
    epistemic = np.zeros(bins, dtype=np.int64)
    n_classes: int | None = None
    n_read = n_scored = 0
    kept_probs_S_K_C: torch.Tensor | None = None
    for ids_chunk, x_chunk in pool_chunks:
        ids = np.asarray(ids_chunk, dtype=np.str_).reshape(-1)
        if len(ids) != x_chunk.shape[0]:
            raise ValueError(f"a chunk has {len(ids)} ids for {x_chunk.shape[0]} rows (starting at id {ids[:1]})")
        start, n_read = n_read, n_read + len(ids)
        if selected is not None:
            if n_read > len(selected):
                raise ValueError(f"pool_chunks yielded more than pool_size={pool_size} items")
            keep = selected[start:n_read]
            if not keep.any():
                continue
            if not keep.all():
                ids, x_chunk = ids[keep], x_chunk[torch.from_numpy(keep)]
        with torch.no_grad():
            probs_S_B_C = predict_samples(x_chunk, samples)
        if probs_S_B_C.ndim != 3 or tuple(probs_S_B_C.shape[:2]) != (samples, len(ids)):
            raise ValueError(
                f"predict_samples returned shape {tuple(probs_S_B_C.shape)} for {len(ids)} items and S={samples}; "
                f"expected [{samples}, {len(ids)}, C]"
            )
        if n_classes is None:
            n_classes = probs_S_B_C.shape[2]
        elif probs_S_B_C.shape[2] != n_classes:
            raise ValueError(f"predict_samples returned {probs_S_B_C.shape[2]} classes after {n_classes}")
        total_B, expected_B = _entropies(probs_S_B_C)
        bald_B = (total_B - expected_B).clamp_min(0.0)
        from_parts = _FROM_PARTS.get(score_fn)
        if from_parts is not None:
            scores_B = from_parts(total_B, expected_B, bald_B, generator)
        else:
            scores_B = score_fn(probs_S_B_C, generator=generator)
        kept_positions = running.update(scores_B, ids)
        if keep_probs:
            kept_probs_S_K_C = _kept_probs(kept_probs_S_K_C, probs_S_B_C.detach().cpu(), kept_positions)
        upper = math.log(n_classes) if n_classes > 1 else 1.0
        aleatoric += _histogram(expected_B, upper, bins)
        epistemic += _histogram(bald_B, upper, bins)
        n_scored += len(ids)
    if pool_size is not None and n_read != pool_size:
        raise ValueError(f"pool_chunks yielded {n_read} items but pool_size is {pool_size}")
    ids_top, scores_top = running.result()
    upper = math.log(n_classes) if n_classes is not None and n_classes > 1 else 1.0
    edges = np.linspace(0.0, upper, bins + 1)
    return StreamResult(ids_top, scores_top, n_scored, aleatoric, epistemic, edges, n_read, kept_probs_S_K_C)


def _entropies(probs_S_B_C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H[p̄], E_s H[p_s])`` per item from one float64 copy of the chunk's samples (the score functions would
    each make their own: three copies and as many entropy passes per chunk for PowerBALD, measured)."""
    p = _as_float64(probs_S_B_C, "probs_S_B_C")
    return _entropy(p.mean(0)), _entropy(p).mean(0)


_FROM_PARTS: dict[ScoreFn, Callable[..., torch.Tensor]] = {
    bald: lambda total, expected, mutual, generator: mutual,
    predictive_entropy: lambda total, expected, mutual, generator: total,
    expected_entropy: lambda total, expected, mutual, generator: expected,
    powerbald_scores: lambda total, expected, mutual, generator: perturbed_scores(
        mutual, beta=1.0, mode="power", generator=generator
    ),
}
"""Score functions of the entropies the stream computes anyway, with the same values (and the same random draws
for PowerBALD) as calling them on the samples."""


def _kept_probs(kept_S_K_C: torch.Tensor | None, chunk_S_B_C: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """The samples of the running top k: ``positions`` index the kept-then-chunk concatenation, which is never
    formed (a copy of every chunk's samples, measured)."""
    if kept_S_K_C is None:
        return chunk_S_B_C[:, torch.from_numpy(positions)]
    n_kept = kept_S_K_C.shape[1]
    in_chunk = positions >= n_kept
    joined = torch.cat([kept_S_K_C, chunk_S_B_C[:, torch.from_numpy(positions[in_chunk] - n_kept)]], dim=1)
    remapped = positions.copy()
    remapped[in_chunk] = n_kept + np.arange(int(in_chunk.sum()))
    return joined[:, torch.from_numpy(remapped)]


def _histogram(values_B: torch.Tensor, upper: float, bins: int) -> np.ndarray:
    """Counts per bin of ``values`` over ``[0, upper]``; values outside (rounding) go to the end bins."""
    index = (values_B.detach().to(torch.float64) * (bins / upper)).floor().clamp(0, bins - 1).long()
    return torch.bincount(index.cpu(), minlength=bins).numpy()


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
