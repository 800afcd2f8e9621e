"""Acquisition: score functions on predictive samples ``probs[S, N, C]`` and top-k selection.

Pure tensor functions (torch and numpy only). See ``scores`` for the score functions and
their registry, ``topk`` for deterministic (score desc, item id asc) selection.
"""

from acquisition.scores import (
    ACQUISITION_FUNCTIONS,
    ScoreFn,
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
from acquisition.topk import RunningTopK, top_k

__all__ = [
    "ACQUISITION_FUNCTIONS",
    "RunningTopK",
    "ScoreFn",
    "bald",
    "bald_from_log_probs",
    "expected_entropy",
    "expected_entropy_from_log_probs",
    "get_acquisition",
    "least_confidence",
    "margin",
    "mean_std",
    "predictive_entropy",
    "predictive_entropy_from_log_probs",
    "random",
    "top_k",
    "variation_ratios",
]
