"""The one interface every model family implements, as a ``typing.Protocol`` (held by a contract test)."""

from __future__ import annotations

from typing import Any, Protocol, Self, runtime_checkable

import torch


@runtime_checkable
class BayesianClassifier(Protocol):
    """A Bayesian classifier of the label loop: fit, sample its predictive, report its evidence, hand on its posterior.

    ``evidence_is_bound`` says whether ``log_evidence()`` is only a lower bound (VI's ELBO); families without a
    marginal likelihood (MC dropout, deep ensembles) raise ``NotImplementedError`` from ``log_evidence``.
    """

    evidence_is_bound: bool

    def fit(self, x: torch.Tensor, y: torch.Tensor, prior: Any = None) -> Self:
        """Fit on ``x[N, ...]``, ``y[N]``; with ``prior`` (an earlier ``posterior()``), a belief update."""
        ...

    def predictive_samples(self, x: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
        """``probs[S=n, N, C]``: ``n`` draws of the class probabilities, exactly ``n`` whatever the family."""
        ...

    def log_evidence(self) -> float: ...

    def posterior(self) -> Any:
        """The approximate posterior (mean and precision/variance, or point masses): the next round's prior."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and a JSON-able config, loadable with ``torch.load(..., weights_only=True)``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
