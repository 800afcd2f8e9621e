"""Diagonal-GGN Laplace vs the diagonal of a dense brute-force GGN and its own dense log det (float64)."""

import pytest
import torch
from torch import nn

from bayes_models.architectures import mlp
from bayes_models.laplace import DiagPrecision, Laplace

DT = torch.float64


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_all_weights_diag_equals_dense_ggn_diagonal(brute, likelihood: str) -> None:
    """MLP, all weights: diag(H) = diag(GGN) + δ with the GGN from autograd Jacobians (1e-10 rel); log evidence
    = ll − ½δ‖θ‖² − ½ Σ log diag(H) + ½ P log δ, the dense slogdet of the diagonal matrices (1e-10 rel)."""
    net = brute.mlp(seed=1)
    if likelihood == "classification":
        x, y = brute.classification_data(seed=1)
    else:
        x, y = brute.regression_data(seed=1, d=4, c=3)
    sigma = 0.7
    la = Laplace(net, likelihood, "all", "diag", prior_precision=1.5, sigma_noise=sigma).fit(x, y)
    _, theta = brute.params_of(net)
    ggn = brute.ggn(net, x, likelihood, sigma)
    diag = torch.diagonal(ggn) + 1.5
    assert brute.rel(la.posterior().precision.diag, diag) < 1e-10
    prior = 1.5 * torch.eye(theta.numel(), dtype=DT)
    expected = brute.log_evidence(brute.log_lik(net, x, y, likelihood, sigma), theta, prior, torch.diag(diag))
    assert brute.rel(la.log_evidence(), expected) < 1e-10


def test_last_layer_diag_of_split_net(brute) -> None:
    """SplitNet MLP with a Dropout→Linear head: last-layer diag = diagonal of the last layer's dense GGN on the
    eval-mode features (1e-10 rel), whatever the network's train/eval mode."""
    torch.manual_seed(0)
    net = mlp(4, 3, hidden=6, depth=1, dropout=0.5).to(DT)
    net.train()
    x, y = brute.classification_data(seed=2)
    la = Laplace(net, "classification", "last_layer", "diag", prior_precision=0.3).fit(x, y)
    assert net.training
    with torch.no_grad():
        features = net.features(x)
    ggn = brute.ggn(net.head[1], features, "classification")
    assert brute.rel(la.posterior().precision.diag, torch.diagonal(ggn) + 0.3) < 1e-10
    assert torch.equal(la.predict(x[:4]), la.predict(x[:4]))  # dropout is off: deterministic


def test_linear_regression_diag_evidence(brute) -> None:
    """nn.Linear with Gaussian noise: diag Laplace evidence = the same formula with diag(XᵀX/σ²) + α written out."""
    x, y = brute.regression_data(seed=3)
    torch.manual_seed(0)
    net = nn.Linear(3, 1).to(DT)
    la = Laplace(net, "regression", "last_layer", "diag", prior_precision=2.0, sigma_noise=0.5).fit(x, y)
    features = torch.cat([x, torch.ones(x.shape[0], 1, dtype=DT)], 1)
    diag = (features**2).sum(0) / 0.25 + 2.0
    _, theta = brute.params_of(net)
    prior = 2.0 * torch.eye(4, dtype=DT)
    expected = brute.log_evidence(brute.log_lik(net, x, y, "regression", 0.5), theta, prior, torch.diag(diag))
    assert brute.rel(la.log_evidence(), expected) < 1e-10


def test_diag_precision_algebra_and_sampling() -> None:
    """logdet / quad / jsj vs dense (1e-12 rel); sample variances = 1/d within 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(6, generator=g, dtype=DT) + 0.2
    prec, dense = DiagPrecision(d), torch.diag(d)
    v, jac = torch.randn(6, generator=g, dtype=DT), torch.randn(4, 3, 6, generator=g, dtype=DT)
    assert abs(float(prec.logdet() - torch.linalg.slogdet(dense)[1])) < 1e-12
    assert abs(float(prec.quad(v) - v @ dense @ v)) < 1e-12 * float(v @ dense @ v)
    assert torch.allclose(prec.jsj(jac), jac @ torch.linalg.inv(dense) @ jac.mT, rtol=1e-12, atol=1e-14)
    s = prec.sample(100_000, torch.Generator().manual_seed(1))
    se = (1 / d) * (2 / s.shape[0]) ** 0.5
    assert bool(((s.var(0) - 1 / d).abs() <= 5 * se).all())


def test_diag_rejects_dense_prior(brute) -> None:
    net = brute.mlp()
    x, y = brute.classification_data()
    full = Laplace(net, "classification", "last_layer", "full").fit(x, y)
    with pytest.raises(ValueError, match="diag Laplace cannot use a full prior"):
        Laplace(net, "classification", "last_layer", "diag").fit(x, y, prior=full.posterior())
