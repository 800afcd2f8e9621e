"""Laplace approximations (last-layer or all weights; full, KFAC or diagonal GGN), evidence and belief updates.

``Laplace(net, "classification", subset="last_layer", structure="kfac").fit(x, y)`` →
``optimize_prior_precision()`` → ``predict(x)`` / ``predictive_samples(x, S)`` → ``log_evidence()``;
``ggn_log_evidence(x)`` is log Z with the exact GGN's determinant, computed over the data (:mod:`.kernel`), and
``ggn_conditional_log_evidence(x, y)`` the evidence of part of the data given the rest (what selection compares);
``posterior()`` is the next round's prior: ``fit(x_new, y_new, prior=prior_from_posterior(posterior))``.
``marglik_training(net, x, y, ...)`` trains a network and its layer-wise prior precisions together (Immer et al. 2021);
``tune_prior_on_validation(laplace, x_val, y_val)`` tunes the prior precision on a validation split's NLL instead.
"""

from bayes_models.laplace.belief import (
    GaussianBelief,
    as_precision,
    map_with_gaussian_prior,
    precision_from_state_dict,
    prior_from_posterior,
)
from bayes_models.laplace.classifier import LaplaceClassifier, LaplaceConfig, fit_laplace, laplace_subset
from bayes_models.laplace.core import CONDITIONED, Laplace
from bayes_models.laplace.diag import DiagPrecision
from bayes_models.laplace.full import DensePrecision
from bayes_models.laplace.kfac import KronBlock, KronPrecision
from bayes_models.laplace.marglik import MarglikFit, marglik_training
from bayes_models.laplace.tuning import PRIOR_SCALES, PriorTuning, tune_prior_on_validation

__all__ = [
    "CONDITIONED",
    "PRIOR_SCALES",
    "DensePrecision",
    "DiagPrecision",
    "GaussianBelief",
    "KronBlock",
    "KronPrecision",
    "Laplace",
    "LaplaceClassifier",
    "LaplaceConfig",
    "MarglikFit",
    "PriorTuning",
    "as_precision",
    "fit_laplace",
    "laplace_subset",
    "map_with_gaussian_prior",
    "marglik_training",
    "precision_from_state_dict",
    "prior_from_posterior",
    "tune_prior_on_validation",
]
