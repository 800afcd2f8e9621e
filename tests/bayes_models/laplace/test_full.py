"""Full-GGN Laplace vs closed-form Bayesian linear regression and dense brute force (float64)."""

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from bayes_models.laplace import DensePrecision, Laplace
from bayes_models.linear import BayesianLinearRegression

DT = torch.float64


def blr_linear(x: torch.Tensor, y: torch.Tensor, sigma: float, alpha: float, mu0: float) -> tuple[nn.Linear, float]:
    """``nn.Linear`` set to the exact posterior mean (its MAP) of each output, and the exact total evidence."""
    y = y.reshape(x.shape[0], -1)
    net = nn.Linear(x.shape[1], y.shape[1]).to(DT)
    features, evidence = torch.cat([x, torch.ones(x.shape[0], 1, dtype=DT)], 1), 0.0
    with torch.no_grad():
        for c in range(y.shape[1]):
            blr = BayesianLinearRegression(torch.full((x.shape[1] + 1,), mu0, dtype=DT), alpha, 1 / sigma**2)
            evidence += float(blr.log_evidence(features, y[:, c]))
            mean, _ = blr.update(features, y[:, c])
            net.weight[c], net.bias[c] = mean[:-1], mean[-1]
    return net, evidence


@pytest.mark.parametrize("subset", ["last_layer", "all"])
@pytest.mark.parametrize(("n_out", "mu0"), [(1, 0.0), (1, 0.7), (2, 0.0)])
def test_linear_gaussian_evidence_equals_blr(brute, subset: str, n_out: int, mu0: float) -> None:
    """At the MAP of a linear-Gaussian model the Laplace evidence is exact: equals the BLR evidence (summed over
    independent outputs) to 1e-10 relative."""
    x, y = brute.regression_data(c=n_out)
    sigma, alpha = 0.5, 2.0
    net, evidence = blr_linear(x, y, sigma, alpha, mu0)
    la = Laplace(net, "regression", subset, "full", prior_precision=alpha, prior_mean=mu0, sigma_noise=sigma)
    assert brute.rel(la.fit(x, y).log_evidence(), evidence) < 1e-10


def test_linear_softmax_predictive_matches_dense_gaussian(brute) -> None:
    """Linear softmax, last layer: H = Hessian of the summed NLL + δI (autograd.functional.hessian, 1e-10 rel);
    probit = MacKay's formula on the centred logits of J H⁻¹ Jᵀ from autograd Jacobians (1e-10); MC mean =
    MultivariateNormal(θ*, H⁻¹) brute force within 5 combined standard errors."""
    torch.manual_seed(3)
    net = nn.Linear(3, 4).to(DT)
    x, y = brute.classification_data(n=25, d=3, c=4)
    x_test = torch.randn(6, 3, dtype=DT)
    la = Laplace(net, "classification", "last_layer", "full", prior_precision=0.5).fit(x, y)
    _, theta = brute.params_of(net)

    def nll(t: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(brute.forward(net, t, x), y, reduction="sum")

    precision = torch.autograd.functional.hessian(nll, theta) + 0.5 * torch.eye(theta.numel(), dtype=DT)
    assert brute.rel(la.posterior().precision.matrix, precision) < 1e-10

    jac, cov = brute.jacobian(net, x_test), torch.linalg.inv(precision)
    f_cov = torch.einsum("ncp,pq,ndq->ncd", jac, cov, jac)
    assert brute.rel(la.predict(x_test, link="probit"), brute.one_scale_probit(net(x_test).detach(), f_cov)) < 1e-10

    torch.manual_seed(0)
    thetas = MultivariateNormal(theta, precision_matrix=precision).sample((100_000,))
    logits = torch.einsum("nd,scd->snc", x_test, thetas[:, :12].reshape(-1, 4, 3)) + thetas[:, None, 12:]
    ref = torch.softmax(logits, -1)
    samples = la.predictive_samples(x_test, 20_000, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (20_000, 6, 4)
    se = torch.sqrt(samples.var(0) / samples.shape[0] + ref.var(0) / ref.shape[0])
    assert bool(((samples.mean(0) - ref.mean(0)).abs() <= 5 * se + 1e-12).all())
    mc = la.predict(x_test, link="mc", n_samples=20_000, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mc, samples.mean(0), atol=1e-12)


def test_mlp_all_weights_matches_dense_ggn(brute) -> None:
    """Small MLP (115 weights), per-layer prior: H = GGN + diag(δ) with the GGN from autograd Jacobians (1e-8 rel),
    log evidence = dense slogdet formula (1e-8 rel), centred probit predictive from J H⁻¹ Jᵀ (1e-8 rel)."""
    net = brute.mlp()
    x, y = brute.classification_data()
    delta = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    la = Laplace(net, "classification", "all", "full", prior_precision=delta).fit(x, y)
    _, theta = brute.params_of(net)
    prior = torch.diag(torch.repeat_interleave(delta, torch.tensor([40, 54, 21])))
    posterior = brute.ggn(net, x, "classification") + prior
    assert la.subnet.n_params == 115
    assert brute.rel(la.posterior().precision.matrix, posterior) < 1e-8
    expected = brute.log_evidence(brute.log_lik(net, x, y, "classification"), theta, prior, posterior)
    assert brute.rel(la.log_evidence(), expected) < 1e-8

    x_test = torch.randn(5, 4, dtype=DT)
    jac = brute.jacobian(net, x_test)
    f_cov = torch.einsum("ncp,pq,ndq->ncd", jac, torch.linalg.inv(posterior), jac)
    assert brute.rel(la.predict(x_test), brute.one_scale_probit(net(x_test).detach(), f_cov)) < 1e-8


def test_dense_precision_sampling_and_algebra() -> None:
    """logdet / quad / jsj vs dense algebra (1e-10 rel); sample covariance = H⁻¹ within 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=g, dtype=DT)
    h = m @ m.T + 0.5 * torch.eye(5, dtype=DT)
    prec, cov = DensePrecision(h), torch.linalg.inv(h)
    v, jac = torch.randn(5, generator=g, dtype=DT), torch.randn(3, 2, 5, generator=g, dtype=DT)
    assert abs(float(prec.logdet() - torch.linalg.slogdet(h)[1])) < 1e-10
    assert abs(float(prec.quad(v) - v @ h @ v)) < 1e-10 * float(v @ h @ v)
    assert torch.allclose(prec.jsj(jac), jac @ cov @ jac.mT, rtol=1e-10, atol=1e-12)
    s = prec.sample(200_000, torch.Generator().manual_seed(1))
    se = torch.sqrt((torch.diag(cov)[:, None] * torch.diag(cov)[None, :] + cov**2) / s.shape[0])
    assert bool(((s.T @ s / s.shape[0] - cov).abs() <= 5 * se).all())


def test_full_refuses_too_many_weights() -> None:
    net = nn.Linear(200, 101)
    with pytest.raises(ValueError, match="structure='full'"):
        Laplace(net, "classification", "all", "full").fit(torch.randn(2, 200), torch.tensor([0, 1]))
