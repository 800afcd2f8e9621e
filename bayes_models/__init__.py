"""Bayesian PyTorch models behind one interface (torch and numpy only; no Prefect, no MLflow).

Every model family implements :class:`BayesianClassifier` (``bayes_models/interface.py``, held by
``tests/bayes_models/test_contract.py``):

``fit(x, y, prior=None) -> self``
    Fit (or, given ``prior``, belief-update from an earlier posterior) on tensors ``x[N, ...]``, ``y[N]``.
``predictive_samples(x, n) -> probs[S=n, N, C]``
    Samples of the class probabilities under the approximate posterior.
``log_evidence() -> float``
    Log marginal likelihood for model selection by Bayes factors. A family whose value is only a lower bound
    (VI's ELBO) sets ``evidence_is_bound = True``; families without one (MC dropout, ensembles) raise
    ``NotImplementedError`` saying so — fit a post-hoc :class:`Laplace` on their network instead.
``posterior()``
    Mean and precision/variance of the approximate posterior: the next round's prior.
``state_dict()`` / ``load_state_dict(state)``
    Plain tensors and JSON-able config, loadable with ``torch.load(..., weights_only=True)``.

Networks are :class:`SplitNet` modules: a deterministic ``features`` backbone and a stochastic ``head``.
"""

from bayes_models.architectures import SplitNet, build_network, gal_cnn, mlp, resolve_device, seeded
from bayes_models.ensemble import DeepEnsemble
from bayes_models.fast_head import head_samples_consistent, predictive_samples_consistent
from bayes_models.interface import BayesianClassifier
from bayes_models.laplace import (
    GaussianBelief,
    Laplace,
    LaplaceClassifier,
    LaplaceConfig,
    map_with_gaussian_prior,
    prior_from_posterior,
)
from bayes_models.linear import BayesianLinearRegression, polynomial_features, polynomial_log_evidences
from bayes_models.mc_dropout import MCDropout, MCDropoutConfig
from bayes_models.selection import bayes_factor_table
from bayes_models.temperature import TemperatureScaling
from bayes_models.vi import BayesLinear, ELBOParts, MeanFieldVI, VIConfig

__all__ = [
    "BayesLinear",
    "BayesianClassifier",
    "BayesianLinearRegression",
    "DeepEnsemble",
    "ELBOParts",
    "GaussianBelief",
    "Laplace",
    "LaplaceClassifier",
    "LaplaceConfig",
    "MCDropout",
    "MCDropoutConfig",
    "MeanFieldVI",
    "SplitNet",
    "TemperatureScaling",
    "VIConfig",
    "bayes_factor_table",
    "build_network",
    "gal_cnn",
    "head_samples_consistent",
    "map_with_gaussian_prior",
    "mlp",
    "polynomial_features",
    "polynomial_log_evidences",
    "predictive_samples_consistent",
    "prior_from_posterior",
    "resolve_device",
    "seeded",
]
