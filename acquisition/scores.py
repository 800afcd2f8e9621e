"""Acquisition score functions on Monte Carlo predictive samples.

Every score function has the signature
``fn(probs_S_N_C, *, generator=None) -> scores_N``: ``probs_S_N_C`` holds S posterior
samples of the class probabilities of N items over C classes, and a higher score means
the item is more worth labeling.

Numerics
--------
Scores are computed and returned in float64 on the input's device, whatever the input
dtype (float32 probabilities lose ~1e-7 per term otherwise, which is the size of the
BALD values that separate items late in a campaign). MPS has no float64, so there the
input's own dtype is kept. ``0 * log 0`` is taken as 0 (``torch.special.xlogy``), so
probabilities of exactly 0 or 1 give finite scores. When the model produces log
probabilities, prefer the ``*_from_log_probs`` variants: they never form ``log 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "ACQUISITION_FUNCTIONS",
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
    "variation_ratios",
]

ScoreFn = Callable[..., torch.Tensor]


def _as_float64(x_S_N_C: torch.Tensor, name: str) -> torch.Tensor:
    if x_S_N_C.ndim != 3:
        raise ValueError(f"{name} must have shape [S, N, C], got {tuple(x_S_N_C.shape)}")
    S, _, C = x_S_N_C.shape
    if S == 0 or C == 0:
        raise ValueError(f"{name} must have shape [S, N, C] with S >= 1 and C >= 1, got {tuple(x_S_N_C.shape)}")
    dtype = x_S_N_C.dtype if x_S_N_C.device.type == "mps" else torch.float64
    return x_S_N_C.to(dtype)


def _entropy(p_N_C: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p_N_C, p_N_C).sum(-1)


def _entropy_from_log(log_p_N_C: torch.Tensor) -> torch.Tensor:
    # exp(min) * min == -0.0, so log 0 = -inf contributes 0 instead of nan.
    log_p_N_C = log_p_N_C.clamp_min(torch.finfo(log_p_N_C.dtype).min)
    return -(log_p_N_C.exp() * log_p_N_C).sum(-1)


def predictive_entropy(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Entropy of the mean predictive (total uncertainty).

    .. math:: H\bigl[\bar p\bigr] = -\sum_c \bar p_c \log \bar p_c,
              \qquad \bar p_c = \frac{1}{S}\sum_s p_{s,c}

    Parameters
    ----------
    probs_S_N_C : torch.Tensor
        Class probabilities, S samples × N items × C classes.
    generator : torch.Generator, optional
        Unused; accepted so every score function has one signature.

    Returns
    -------
    torch.Tensor
        ``scores_N`` in nats, float64, on the input's device.
    """
    return _entropy(_as_float64(probs_S_N_C, "probs_S_N_C").mean(0))


def expected_entropy(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Mean entropy of the sampled predictives (aleatoric uncertainty).

    .. math:: \mathbb{E}_s H[p_s] = -\frac{1}{S}\sum_s \sum_c p_{s,c}\log p_{s,c}

    Parameters and returns as in :func:`predictive_entropy`.
    """
    return _entropy(_as_float64(probs_S_N_C, "probs_S_N_C")).mean(0)


def bald(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""BALD: mutual information between the label and the parameters (epistemic).

    .. math:: I[y;\theta] = H[\bar p] - \mathbb{E}_s H[p_s] \;\ge 0

    Negative values can only come from rounding and are clamped to 0. ``S = 1`` gives 0.

    Parameters and returns as in :func:`predictive_entropy`.
    """
    p = _as_float64(probs_S_N_C, "probs_S_N_C")
    return (_entropy(p.mean(0)) - _entropy(p).mean(0)).clamp_min(0.0)


def variation_ratios(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Variation ratio of the sampled argmax votes.

    .. math:: \mathrm{VR} = 1 - \frac{1}{S}\max_c \#\{s : \arg\max_{c'} p_{s,c'} = c\}

    A sample whose maximum is tied votes for the lowest class index (``torch.argmax``).

    Parameters and returns as in :func:`predictive_entropy`.
    """
    p = _as_float64(probs_S_N_C, "probs_S_N_C")
    S, N, C = p.shape
    votes_N_S = p.argmax(-1).T
    counts_N_C = torch.zeros(N, C, dtype=p.dtype, device=p.device)
    counts_N_C.scatter_add_(1, votes_N_S, torch.ones_like(votes_N_S, dtype=p.dtype))
    return 1.0 - counts_N_C.amax(-1) / S


def mean_std(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Mean over classes of the population standard deviation over samples.

    .. math:: \frac{1}{C}\sum_c \sqrt{\frac{1}{S}\sum_s (p_{s,c} - \bar p_c)^2}

    Parameters and returns as in :func:`predictive_entropy`.
    """
    p = _as_float64(probs_S_N_C, "probs_S_N_C")
    return (p - p.mean(0)).square().mean(0).sqrt().mean(-1)


def margin(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Negative margin between the two most probable classes of the mean predictive.

    .. math:: -(\bar p_{(1)} - \bar p_{(2)})

    so the smallest margin ranks highest. With one class, :math:`\bar p_{(2)} = 0`.

    Parameters and returns as in :func:`predictive_entropy`.
    """
    mean_N_C = _as_float64(probs_S_N_C, "probs_S_N_C").mean(0)
    if mean_N_C.shape[-1] == 1:
        return -mean_N_C[:, 0]
    top2_N_2 = mean_N_C.topk(2, dim=-1).values
    return top2_N_2[:, 1] - top2_N_2[:, 0]


def least_confidence(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""One minus the largest class probability of the mean predictive.

    .. math:: 1 - \max_c \bar p_c

    Parameters and returns as in :func:`predictive_entropy`.
    """
    return 1.0 - _as_float64(probs_S_N_C, "probs_S_N_C").mean(0).amax(-1)


def random(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores in [0, 1), the baseline strategy.

    Only N and the device of ``probs_S_N_C`` are used. Pass a seeded ``generator`` for
    reproducible rounds (without one, torch's global generator is used). The draw is made
    on the generator's device and then moved, so a CPU generator gives the same scores for
    CPU and GPU inputs.

    Returns
    -------
    torch.Tensor
        ``scores_N``, float64, on the input's device.
    """
    p = _as_float64(probs_S_N_C, "probs_S_N_C")
    device = generator.device if generator is not None else p.device
    return torch.rand(p.shape[1], generator=generator, dtype=p.dtype, device=device).to(p.device)


def predictive_entropy_from_log_probs(
    log_probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r""":func:`predictive_entropy` from log probabilities.

    .. math:: \log \bar p_c = \operatorname{logsumexp}_s \log p_{s,c} - \log S

    Parameters
    ----------
    log_probs_S_N_C : torch.Tensor
        Log class probabilities (e.g. ``log_softmax`` output); ``-inf`` is allowed.
    generator : torch.Generator, optional
        Unused.
    """
    lp = _as_float64(log_probs_S_N_C, "log_probs_S_N_C")
    return _entropy_from_log(torch.logsumexp(lp, 0) - math.log(lp.shape[0]))


def expected_entropy_from_log_probs(
    log_probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r""":func:`expected_entropy` from log probabilities.

    .. math:: -\frac1S\sum_s\sum_c e^{\ell_{s,c}}\,\ell_{s,c}
    """
    return _entropy_from_log(_as_float64(log_probs_S_N_C, "log_probs_S_N_C")).mean(0)


def bald_from_log_probs(log_probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`bald` from log probabilities, clamped at 0."""
    lp = _as_float64(log_probs_S_N_C, "log_probs_S_N_C")
    total = _entropy_from_log(torch.logsumexp(lp, 0) - math.log(lp.shape[0]))
    return (total - _entropy_from_log(lp).mean(0)).clamp_min(0.0)


ACQUISITION_FUNCTIONS: dict[str, ScoreFn] = {
    "predictive_entropy": predictive_entropy,
    "expected_entropy": expected_entropy,
    "bald": bald,
    "variation_ratios": variation_ratios,
    "mean_std": mean_std,
    "margin": margin,
    "least_confidence": least_confidence,
    "random": random,
    "entropy": predictive_entropy,  # alias
}


def get_acquisition(name: str) -> ScoreFn:
    """Return the score function registered under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is unknown; the message names it and lists the valid names.
    """
    if name == "batchbald":
        raise ValueError("batchbald selects a batch jointly, not per item: call acquisition.batchbald(probs_S_N_C, k)")
    if name == "epig":
        raise ValueError(
            "epig scores items against target inputs: call acquisition.epig(probs_S_N_C, target_probs_S_M_C)"
        )
    try:
        return ACQUISITION_FUNCTIONS[name]
    except KeyError:
        valid = ", ".join(sorted(ACQUISITION_FUNCTIONS))
        raise ValueError(f"unknown acquisition function {name!r}; valid names: {valid}") from None
