"""Temperature scaling (Guo et al. 2017): one temperature T > 0 fitted by validation NLL.

``p_T = softmax(z / T)`` for logits z; for class probabilities (e.g. the mean of a Bayesian model's predictive samples)
``z = log p``, so ``p_T ∝ p^{1/T}``. T > 1 softens over-confident predictions, T < 1 sharpens. Dividing by T > 0 keeps
the order of the logits, so the predicted class (argmax) does not change, except where two top logits are closer than
floating-point rounding can tell apart (``|Δz| / T`` below the float resolution), where softmax itself ties.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from bayes_models.metrics import NLL_EPS

__all__ = ["TemperatureScaling"]

_KINDS = ("logits", "probs")


def _as_logits(scores: torch.Tensor, kind: str, *, floor: float | None = None) -> torch.Tensor:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'logits' or 'probs', got {kind!r}")
    scores = scores.to(torch.float64)
    if kind == "logits":
        return scores
    return torch.log(scores if floor is None else scores.clamp_min(floor))


class TemperatureScaling:
    """Fit ``T`` by minimising the mean NLL of ``softmax(z / T)`` on validation data (LBFGS over ``log T``).

    Parameters
    ----------
    min_temperature, max_temperature : float
        T is searched in this range (default ``[1e-2, 1e2]``; the objective is flat outside it). A validation set the
        model separates perfectly drives the optimum towards T → 0 (LBFGS stops once the NLL's gradient vanishes);
        one it predicts worse than uniform drives it to T → ∞.
    max_iter : int
        LBFGS iterations (with a strong-Wolfe line search).
    """

    def __init__(self, *, min_temperature: float = 1e-2, max_temperature: float = 1e2, max_iter: int = 100) -> None:
        if not 0 < min_temperature <= 1 <= max_temperature:
            raise ValueError(
                f"need 0 < min_temperature <= 1 <= max_temperature, got {min_temperature}, {max_temperature}"
            )
        self.min_temperature, self.max_temperature, self.max_iter = min_temperature, max_temperature, max_iter
        self.temperature = 1.0

    def fit(self, scores_N_C: torch.Tensor, targets_N: torch.Tensor, *, kind: str = "logits") -> TemperatureScaling:
        """Fit T on validation ``scores_N_C`` (logits, or probabilities with ``kind="probs"``) and ``targets_N``.

        Probabilities are floored at ``NLL_EPS`` before the log (as :class:`bayes_models.metrics.NLL` does) so that a
        zero-probability target keeps the objective finite. Computed in float64.
        """
        z = _as_logits(scores_N_C, kind, floor=NLL_EPS)
        if z.ndim != 2 or targets_N.shape != z.shape[:1]:
            raise ValueError(f"need scores [N, C] and targets [N], got {tuple(z.shape)} and {tuple(targets_N.shape)}")
        if z.shape[0] == 0:
            raise ValueError("temperature scaling needs at least one validation item")
        y = targets_N.to(z.device, torch.long)
        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe", tolerance_change=1e-12
        )

        bounds = math.log(self.min_temperature), math.log(self.max_temperature)

        def closure() -> torch.Tensor:  # flat outside the bounds, so LBFGS stops instead of chasing T → 0 or ∞
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.clamp(*bounds).exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
        value = float(log_t.detach())
        if not math.isfinite(value):
            raise RuntimeError("temperature scaling diverged (non-finite log T); check the validation scores")
        self.temperature = min(max(math.exp(value), self.min_temperature), self.max_temperature)
        return self

    def transform(self, scores: torch.Tensor, *, kind: str = "logits") -> torch.Tensor:
        """Calibrated probabilities ``softmax(z / T)`` over the last dimension (any leading shape), computed in
        float64 and returned in the input's floating dtype. Zero probabilities stay zero."""
        z = _as_logits(scores, kind)
        dtype = scores.dtype if scores.dtype.is_floating_point else torch.float32
        return torch.softmax(z / self.temperature, dim=-1).to(dtype)

    def nll(self, scores_N_C: torch.Tensor, targets_N: torch.Tensor, *, kind: str = "logits") -> float:
        """Mean NLL of the calibrated predictions (probabilities floored as in :meth:`fit`)."""
        z = _as_logits(scores_N_C, kind, floor=NLL_EPS)
        return float(F.cross_entropy(z / self.temperature, targets_N.to(z.device, torch.long)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "min_temperature": self.min_temperature,
            "max_temperature": self.max_temperature,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.temperature = float(state["temperature"])
        self.min_temperature = float(state["min_temperature"])
        self.max_temperature = float(state["max_temperature"])
