"""Acquisition: score functions on predictive samples ``probs[S, N, C]`` and top-k selection.

Pure tensor functions (torch and numpy only). See ``scores`` for the score functions and
their registry, ``topk`` for deterministic (score desc, item id asc) selection, ``stopping`` for when more labels
stop changing the model's predictions.
"""

from acquisition.batch import (
    POWERBALD_MODES,
    batchbald,
    joint_mutual_information,
    perturbed_scores,
    powerbald,
    powerbald_scores,
)
from acquisition.epig import EPIG_TARGETS, epig
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
from acquisition.stopping import cohen_kappa, stable_rounds
from acquisition.streaming import StreamResult, score_pool_streaming
from acquisition.topk import RunningTopK, top_k

# PowerBALD's per-item (perturbed) score streams like any other; BatchBALD selects jointly, and a targeted score
# also takes the targets' predictive samples (``fn(probs, target_probs)``): callers route both.
ACQUISITION_FUNCTIONS["powerbald"] = powerbald_scores
BATCH_ACQUISITIONS = ("batchbald",)
TARGETED_ACQUISITIONS = {"epig": epig}

__all__ = [
    "ACQUISITION_FUNCTIONS",
    "BATCH_ACQUISITIONS",
    "EPIG_TARGETS",
    "POWERBALD_MODES",
    "TARGETED_ACQUISITIONS",
    "RunningTopK",
    "ScoreFn",
    "StreamResult",
    "bald",
    "bald_from_log_probs",
    "batchbald",
    "cohen_kappa",
    "epig",
    "expected_entropy",
    "expected_entropy_from_log_probs",
    "get_acquisition",
    "joint_mutual_information",
    "least_confidence",
    "margin",
    "mean_std",
    "perturbed_scores",
    "powerbald",
    "powerbald_scores",
    "predictive_entropy",
    "predictive_entropy_from_log_probs",
    "random",
    "score_pool_streaming",
    "stable_rounds",
    "top_k",
    "variation_ratios",
]
