"""Bayesian PyTorch models behind one duck-typed interface (torch and numpy only; no Prefect, no MLflow).

Every model family implements:

``fit(x, y, prior=None) -> self``
    Fit (or, given ``prior``, belief-update from an earlier posterior) on tensors ``x[N, ...]``, ``y[N]``.
``predictive_samples(x, n) -> probs[S=n, N, C]``
    Samples of the class probabilities under the approximate posterior.
``log_evidence() -> float``
    Log marginal likelihood (or a labelled bound) for model selection by Bayes factors.
``posterior()``
    Mean and precision/variance of the approximate posterior: the next round's prior.
``state_dict()`` / ``load_state_dict(state)``
    Plain tensors and JSON-able config, loadable with ``torch.load(..., weights_only=True)``.

Networks are :class:`SplitNet` modules: a deterministic ``features`` backbone and a stochastic ``head``.
"""

from bayes_models.architectures import SplitNet, build_network, gal_cnn, mlp, resolve_device
from bayes_models.mc_dropout import MCDropout, MCDropoutConfig

__all__ = ["MCDropout", "MCDropoutConfig", "SplitNet", "build_network", "gal_cnn", "mlp", "resolve_device"]
