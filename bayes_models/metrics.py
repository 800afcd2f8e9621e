"""Streaming classification metrics (torchmetrics style) and the entropy decomposition.

Each metric class has ``update(probs_N_C, targets_N)``, ``compute()`` and ``reset()``,
so a test set or pool can be scored in chunks; updating over chunks gives the same
value as one update over the concatenation (up to float64 summation order). State is
kept as float64 sums on the CPU. The functional helpers (``accuracy``, ``nll``, ...)
run one update of the matching class.

``probs_N_C`` are class probabilities (rows summing to 1 are assumed, not checked) and
``targets_N`` integer class indices in ``[0, C)``. Predictions are ``argmax`` over
classes, ties going to the lowest class index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ECE",
    "NLL",
    "Accuracy",
    "Brier",
    "Reliability",
    "ReliabilityDiagram",
    "accuracy",
    "brier",
    "ece",
    "nll",
    "reliability",
    "uncertainty_decomposition",
]

NLL_EPS = 1e-12
"""Default floor on the true-class probability in :class:`NLL`: one item costs at most
``-log(1e-12) ≈ 27.6`` nats, so a single confident mistake cannot make the mean infinite."""


def _check(probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if probs_N_C.ndim != 2:
        raise ValueError(f"probs_N_C must have shape [N, C], got {tuple(probs_N_C.shape)}")
    targets_N = torch.as_tensor(targets_N, device=probs_N_C.device)
    if targets_N.shape != probs_N_C.shape[:1]:
        raise ValueError(f"targets_N must have shape [{probs_N_C.shape[0]}], got {tuple(targets_N.shape)}")
    if targets_N.dtype.is_floating_point or targets_N.dtype == torch.bool:
        raise ValueError(f"targets_N must hold integer class indices, got {targets_N.dtype}")
    C = probs_N_C.shape[1]
    if targets_N.numel() and (targets_N.min() < 0 or targets_N.max() >= C):
        raise ValueError(f"targets_N must lie in [0, {C}), got range [{int(targets_N.min())}, {int(targets_N.max())}]")
    return probs_N_C.to(torch.float64), targets_N.long()


class _Mean:
    """Running mean of per-item values (shared by the scalar metrics)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._total = 0.0
        self._count = 0

    def _add(self, values_N: torch.Tensor) -> None:
        self._total += float(values_N.sum())
        self._count += values_N.numel()

    def compute(self) -> float:
        if self._count == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any update()")
        return self._total / self._count


class Accuracy(_Mean):
    r"""Fraction of items whose argmax class is the target.

    .. math:: \frac1N\sum_i \bigl[\arg\max_c p_{ic} = y_i\bigr]
    """

    def update(self, probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> None:
        p, y = _check(probs_N_C, targets_N)
        self._add((p.argmax(-1) == y).to(torch.float64))


class NLL(_Mean):
    r"""Mean negative log-likelihood of the true class, in nats.

    .. math:: -\frac1N \sum_i \log \max(p_{i,y_i}, \varepsilon)

    Parameters
    ----------
    eps : float
        Floor on the true-class probability (default :data:`NLL_EPS` = 1e-12), which keeps
        the metric finite when a probability is exactly 0. Compute NLL from log
        probabilities (e.g. ``cross_entropy``) where the model gives them.
    """

    def __init__(self, eps: float = NLL_EPS) -> None:
        self.eps = eps
        super().__init__()

    def update(self, probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> None:
        p, y = _check(probs_N_C, targets_N)
        self._add(-p.gather(1, y[:, None]).squeeze(1).clamp_min(self.eps).log())


class Brier(_Mean):
    r"""Multiclass Brier score: :math:`\frac1N\sum_i\sum_c (p_{ic} - [c = y_i])^2`, in [0, 2]."""

    def update(self, probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> None:
        p, y = _check(probs_N_C, targets_N)
        onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
        self._add(((p - onehot) ** 2).sum(-1))


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (``n_bins`` equal-width confidence bins).

    Attributes
    ----------
    bin_edges : np.ndarray
        ``n_bins + 1`` edges ``b / n_bins``; bin b holds confidences in
        ``(edges[b], edges[b+1]]`` (confidence 0 goes to the first bin).
    confidence : np.ndarray
        Mean confidence (max class probability) per bin; NaN for an empty bin.
    accuracy : np.ndarray
        Accuracy per bin; NaN for an empty bin.
    count : np.ndarray
        int64 number of items per bin.
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


class Reliability:
    """Reliability-diagram statistics over equal-width confidence bins.

    The confidence of an item is :math:`\\max_c p_{ic}` and it is correct when its argmax
    is the target. Bins are ``(b/M, (b+1)/M]`` for ``b = 0..M-1`` (0 joins the first bin).

    Parameters
    ----------
    n_bins : int
        Number of bins M (default 15).
    """

    def __init__(self, n_bins: int = 15) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        # b / M is correctly rounded, so edges equal ``b / n_bins`` computed in Python.
        self.bin_edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
        self.reset()

    def reset(self) -> None:
        self._count = torch.zeros(self.n_bins, dtype=torch.float64)
        self._sum_conf = torch.zeros(self.n_bins, dtype=torch.float64)
        self._sum_correct = torch.zeros(self.n_bins, dtype=torch.float64)

    def update(self, probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> None:
        p, y = _check(probs_N_C, targets_N)
        conf, pred = p.max(-1)
        conf, correct = conf.cpu(), (pred == y).to(torch.float64).cpu()
        # right=False: edges[b] < conf <= edges[b+1] -> b, using the inner edges only.
        bins = torch.bucketize(conf, self.bin_edges[1:-1], right=False)
        self._count.index_add_(0, bins, torch.ones_like(conf))
        self._sum_conf.index_add_(0, bins, conf)
        self._sum_correct.index_add_(0, bins, correct)

    @property
    def n_items(self) -> int:
        return int(self._count.sum())

    def compute(self) -> ReliabilityDiagram:
        count = self._count.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(count > 0, self._sum_conf.numpy() / count, np.nan)
            acc = np.where(count > 0, self._sum_correct.numpy() / count, np.nan)
        return ReliabilityDiagram(self.bin_edges.numpy().copy(), confidence, acc, count.astype(np.int64))


class ECE:
    r"""Expected calibration error over equal-width confidence bins (Guo et al., 2017).

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    with the bins of :class:`Reliability`.

    Parameters
    ----------
    n_bins : int
        Number of bins (default 15).
    """

    def __init__(self, n_bins: int = 15) -> None:
        self._bins = Reliability(n_bins)

    @property
    def n_bins(self) -> int:
        return self._bins.n_bins

    def reset(self) -> None:
        self._bins.reset()

    def update(self, probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> None:
        self._bins.update(probs_N_C, targets_N)

    def compute(self) -> float:
        n = self._bins.n_items
        if n == 0:
            raise RuntimeError("ECE.compute() called before any update()")
        # n_b/N * |sum_correct_b/n_b - sum_conf_b/n_b| = |sum_correct_b - sum_conf_b| / N
        return float((self._bins._sum_correct - self._bins._sum_conf).abs().sum()) / n


def accuracy(probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> float:
    """Accuracy of one batch; see :class:`Accuracy`."""
    metric = Accuracy()
    metric.update(probs_N_C, targets_N)
    return metric.compute()


def nll(probs_N_C: torch.Tensor, targets_N: torch.Tensor, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood of one batch; see :class:`NLL`."""
    metric = NLL(eps)
    metric.update(probs_N_C, targets_N)
    return metric.compute()


def brier(probs_N_C: torch.Tensor, targets_N: torch.Tensor) -> float:
    """Brier score of one batch; see :class:`Brier`."""
    metric = Brier()
    metric.update(probs_N_C, targets_N)
    return metric.compute()


def ece(probs_N_C: torch.Tensor, targets_N: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of one batch; see :class:`ECE`."""
    metric = ECE(n_bins)
    metric.update(probs_N_C, targets_N)
    return metric.compute()


def reliability(probs_N_C: torch.Tensor, targets_N: torch.Tensor, n_bins: int = 15) -> ReliabilityDiagram:
    """Reliability-diagram data of one batch; see :class:`Reliability`."""
    metric = Reliability(n_bins)
    metric.update(probs_N_C, targets_N)
    return metric.compute()


def uncertainty_decomposition(probs_S_N_C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Split predictive uncertainty into aleatoric and epistemic parts (entropy decomposition).

    .. math:: \underbrace{H[\bar p]}_{\text{total}}
              = \underbrace{\mathbb{E}_s H[p_s]}_{\text{aleatoric}}
              + \underbrace{I[y;\theta]}_{\text{epistemic}}

    The same numbers as ``acquisition.predictive_entropy``, ``expected_entropy`` and
    ``bald`` (tested to agree); computed here so that ``bayes_models`` depends on torch
    and numpy only, as the package layering requires. Epistemic is clamped at 0, so
    ``total - aleatoric - epistemic`` is 0 up to rounding.

    Parameters
    ----------
    probs_S_N_C : torch.Tensor
        Class probabilities, S samples × N items × C classes.

    Returns
    -------
    tuple of torch.Tensor
        ``(total_N, aleatoric_N, epistemic_N)`` in nats, float64, on the input's device.
    """
    if probs_S_N_C.ndim != 3 or probs_S_N_C.shape[0] == 0:
        raise ValueError(f"probs_S_N_C must have shape [S >= 1, N, C], got {tuple(probs_S_N_C.shape)}")
    p = probs_S_N_C.to(torch.float64)
    total = -torch.special.xlogy(p.mean(0), p.mean(0)).sum(-1)
    aleatoric = -torch.special.xlogy(p, p).sum(-1).mean(0)
    return total, aleatoric, (total - aleatoric).clamp_min(0.0)
