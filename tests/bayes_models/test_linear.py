"""Conjugate Bayesian linear regression vs independent float64 computations (N-dim Gaussian marginal, batch fits)."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from bayes_models.linear import BayesianLinearRegression, polynomial_features, polynomial_log_evidences

DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max() / torch.as_tensor(b).abs().max())


def data(seed: int, n: int = 60, d: int = 4, beta: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    w = torch.randn(d, generator=g, dtype=DT)
    return X, X @ w + torch.randn(n, generator=g, dtype=DT) / math.sqrt(beta)


def priors(d: int) -> list[torch.Tensor | float]:
    g = torch.Generator().manual_seed(7)
    m = torch.randn(d, d, generator=g, dtype=DT)
    return [2.0, torch.rand(d, generator=g, dtype=DT) + 0.5, m @ m.T + torch.eye(d, dtype=DT)]


@pytest.mark.parametrize("which", range(3))
def test_evidence_equals_gaussian_marginal(which: int) -> None:
    """log p(y|X) = log N(y; X m0, X P0⁻¹ Xᵀ + β⁻¹ I), computed as an N-dim Gaussian; 1e-10 relative."""
    X, y = data(0)
    beta, m0 = 4.0, torch.linspace(-1, 1, 4, dtype=DT)
    model = BayesianLinearRegression(m0, priors(4)[which], beta)
    cov_w = torch.linalg.inv(model.precision)
    marginal = MultivariateNormal(X @ m0, X @ cov_w @ X.T + torch.eye(X.shape[0], dtype=DT) / beta)
    assert rel(model.log_evidence(X, y), marginal.log_prob(y)) < 1e-10


@pytest.mark.parametrize("which", range(3))
def test_sequential_updates_equal_batch(which: int) -> None:
    """5 chunks in turn = one batch fit (mean and precision, 1e-8 relative); batch evidence = Σ of the chunks'
    log predictive densities, each under the belief before its update (1e-8 relative)."""
    X, y = data(1, n=75)
    m0, prior = torch.zeros(4, dtype=DT), priors(4)[which]
    batch = BayesianLinearRegression(m0, prior, 4.0)
    evidence = batch.log_evidence(X, y)
    mean, precision = batch.update(X, y)
    seq, total = BayesianLinearRegression(m0, prior, 4.0), 0.0
    for Xk, yk in zip(X.chunk(5), y.chunk(5), strict=True):
        total = total + seq.log_evidence(Xk, yk)
        seq.update(Xk, yk)
    assert rel(seq.mean, mean) < 1e-8
    assert rel(seq.precision, precision) < 1e-8
    assert rel(total, evidence) < 1e-8


def test_posterior_and_predictive_match_formulas() -> None:
    """Posterior mean = argmax of the log joint (gradient 0 to 1e-9); predictive = x S xᵀ + 1/β (1e-10 relative)."""
    X, y = data(2, n=30)
    model = BayesianLinearRegression(torch.ones(4, dtype=DT), 3.0, 4.0)
    mean, precision = model.update(X, y)
    w = mean.clone().requires_grad_()
    log_joint = -2.0 * ((y - X @ w) ** 2).sum() - 1.5 * ((w - 1) ** 2).sum()
    (grad,) = torch.autograd.grad(log_joint, w)
    assert float(grad.abs().max()) < 1e-9
    assert rel(precision, 3.0 * torch.eye(4, dtype=DT) + 4.0 * X.T @ X) < 1e-12
    f_mean, f_var = model.predict(X[:5])
    cov = torch.linalg.inv(precision)
    assert rel(f_mean, X[:5] @ mean) < 1e-10
    assert rel(f_var, torch.einsum("nd,de,ne->n", X[:5], cov, X[:5]) + 0.25) < 1e-10


def test_polynomial_features() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=DT)
    assert torch.equal(polynomial_features(x, 2), torch.stack([torch.ones(4, dtype=DT), x, x**2], -1))
    legendre = polynomial_features(x, 3, "legendre")
    expected = torch.stack([torch.ones(4, dtype=DT), x, (3 * x**2 - 1) / 2, (5 * x**3 - 3 * x) / 2], -1)
    assert rel(legendre, expected) < 1e-14
    with pytest.raises(ValueError, match="basis"):
        polynomial_features(x, 2, "chebyshev")


def test_evidence_selects_true_polynomial_degree() -> None:
    """Cubic data (Legendre coefficients 0.5, −1, 0.8, 1; σ = 0.2; N = 40 on [−1, 1]), prior N(0, 10 I):
    the evidence picks degree 3 among 1..8 on at least 9 of 10 seeds."""
    w, sigma, wins = torch.tensor([0.5, -1.0, 0.8, 1.0], dtype=DT), 0.2, 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(40, generator=g, dtype=DT) * 2 - 1
        y = polynomial_features(x, 3, "legendre") @ w + sigma * torch.randn(40, generator=g, dtype=DT)
        evidences = polynomial_log_evidences(x, y, range(1, 9), 0.1, 1 / sigma**2, basis="legendre")
        wins += max(evidences, key=evidences.get) == 3
    assert wins >= 9, wins
