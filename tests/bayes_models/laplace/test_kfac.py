"""KFAC Laplace vs brute-force Kronecker factors, the exact GGN where KFAC is exact, and its own dense form."""

import math

import pytest
import torch
from torch import nn

from bayes_models.architectures import gal_cnn
from bayes_models.laplace import KronBlock, KronPrecision, Laplace
from bayes_models.linear import BayesianLinearRegression

DT = torch.float64
LINEAR_INDEX = [0, 2, 4]  # positions of the nn.Linear layers in the brute.mlp() Sequential
SIZES = [40, 54, 21]


def brute_factors(net: nn.Sequential, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: A = Σ_n ã ãᵀ and G = Σ_n B_nᵀ Λ_n B_n with B_n = ∂f_n/∂s_n from autograd.functional.jacobian."""
    lam = torch.softmax(net(x).detach(), -1)
    lam = torch.diag_embed(lam) - lam.unsqueeze(-1) * lam.unsqueeze(-2)
    out, h, n = [], x, x.shape[0]
    for i, layer in enumerate(net):
        if i in LINEAR_INDEX:
            s = layer(h).detach()
            jac = torch.autograd.functional.jacobian(net[i + 1 :], s)  # [N, C, N, O]
            b = jac[torch.arange(n), :, torch.arange(n), :]  # per-example blocks [N, C, O]
            a = torch.cat([h, torch.ones(n, 1, dtype=DT)], 1)
            out.append((a.T @ a, torch.einsum("nco,ncd,nde->oe", b, lam, b)))
        h = layer(h).detach()
    return out


def test_kronecker_factors_equal_brute_force(brute) -> None:
    """MLP, all weights: A_l and G_l (sums over 30 examples) equal the brute-force sums to 1e-10 relative."""
    net = brute.mlp()
    x, y = brute.classification_data()
    la = Laplace(net, "classification", "all", "kfac", prior_precision=1.0).fit(x, y)
    blocks = la.posterior().precision.blocks
    for block, (a, g) in zip(blocks, brute_factors(net, x), strict=True):
        assert block.n == 30
        assert brute.rel(block.A, a) < 1e-10
        assert brute.rel(block.G, g) < 1e-10


def test_kfac_is_exact_for_one_example(brute) -> None:
    """For N = 1, KFAC's blocks equal the diagonal blocks of the dense GGN (+ δI) to 1e-10 relative, and its
    log evidence equals the dense formula on that block-diagonal precision."""
    net = brute.mlp(seed=4)
    x, y = brute.classification_data(seed=4, n=1)
    la = Laplace(net, "classification", "all", "kfac", prior_precision=0.8).fit(x, y)
    ggn, start = brute.ggn(net, x, "classification"), 0
    dense = la.posterior().precision.to_dense()
    blocks = []
    for size in SIZES:
        block = ggn[start : start + size, start : start + size] + 0.8 * torch.eye(size, dtype=DT)
        blocks.append(block)
        assert brute.rel(dense[start : start + size, start : start + size], block) < 1e-10
        start += size
    _, theta = brute.params_of(net)
    prior = 0.8 * torch.eye(theta.numel(), dtype=DT)
    expected = brute.log_evidence(brute.log_lik(net, x, y, "classification"), theta, prior, torch.block_diag(*blocks))
    assert brute.rel(la.log_evidence(), expected) < 1e-10


@pytest.mark.parametrize("n_out", [1, 2])
def test_linear_gaussian_kfac_is_exact(brute, n_out: int) -> None:
    """Gaussian likelihood, one nn.Linear: G = N I/σ², so G ⊗ A / N = XᵀX/σ² ⊗ I exactly and the KFAC evidence at
    the MAP equals the BLR evidence (summed over outputs) to 1e-10 relative."""
    x, y = brute.regression_data(seed=5, c=n_out)
    y2 = y.reshape(x.shape[0], -1)
    sigma, alpha, evidence = 0.5, 2.0, 0.0
    net = nn.Linear(3, n_out).to(DT)
    features = torch.cat([x, torch.ones(x.shape[0], 1, dtype=DT)], 1)
    with torch.no_grad():
        for c in range(n_out):
            blr = BayesianLinearRegression(torch.zeros(4, dtype=DT), alpha, 1 / sigma**2)
            evidence += float(blr.log_evidence(features, y2[:, c]))
            mean, _ = blr.update(features, y2[:, c])
            net.weight[c], net.bias[c] = mean[:-1], mean[-1]
    la = Laplace(net, "regression", "last_layer", "kfac", prior_precision=alpha, sigma_noise=sigma).fit(x, y)
    assert brute.rel(la.log_evidence(), evidence) < 1e-10


def test_kron_precision_algebra_matches_dense() -> None:
    """Eigenbasis logdet / quad / jsj of scale·G⊗A/n + δI equal the dense matrix's (1e-10 rel); sample covariance
    = H⁻¹ within 5 standard errors."""
    g = torch.Generator().manual_seed(0)

    def spd(k: int) -> torch.Tensor:
        m = torch.randn(k, k, generator=g, dtype=DT)
        return m @ m.T

    blocks = [
        KronBlock(spd(3), spd(2), 5.0, torch.tensor(0.7, dtype=DT), 2.0, True),
        KronBlock(spd(2), spd(3), 4.0, torch.tensor(1.3, dtype=DT), 1.0, False),
    ]
    prec = KronPrecision(blocks)
    dense = prec.to_dense()
    assert dense.shape == (12, 12)
    v, jac = torch.randn(12, generator=g, dtype=DT), torch.randn(4, 3, 12, generator=g, dtype=DT)
    cov = torch.linalg.inv(dense)
    assert abs(float(prec.logdet() - torch.linalg.slogdet(dense)[1])) < 1e-10
    assert abs(float(prec.quad(v) - v @ dense @ v)) < 1e-10 * float(v @ dense @ v)
    assert torch.allclose(prec.jsj(jac), jac @ cov @ jac.mT, rtol=1e-10, atol=1e-12)
    assert torch.allclose(prec.scaled(0.5).to_dense(), 0.5 * dense, rtol=1e-12)
    s = prec.sample(200_000, torch.Generator().manual_seed(1))
    se = torch.sqrt((torch.diag(cov)[:, None] * torch.diag(cov)[None, :] + cov**2) / s.shape[0])
    assert bool(((s.T @ s / s.shape[0] - cov).abs() <= 5 * se).all())


def test_last_layer_kfac_evidence_and_probit_vs_own_dense_form(brute) -> None:
    """Last-layer KFAC on an MLP: log evidence = dense slogdet formula on its own to_dense() precision (1e-10 rel);
    probit predictive = MacKay's formula on the centred logits with J Σ Jᵀ, Σ = inverse of that dense matrix (1e-10
    rel)."""
    net = brute.mlp(seed=6)
    x, y = brute.classification_data(seed=6)
    la = Laplace(net, "classification", "last_layer", "kfac", prior_precision=0.4).fit(x, y)
    dense = la.posterior().precision.to_dense()
    last = net[4]
    _, theta = brute.params_of(last)
    expected = brute.log_evidence(
        brute.log_lik(net, x, y, "classification"), theta, 0.4 * torch.eye(theta.numel(), dtype=DT), dense
    )
    assert brute.rel(la.log_evidence(), expected) < 1e-10
    x_test = torch.randn(5, 4, dtype=DT)
    with torch.no_grad():
        features = net[:4](x_test)
    jac = brute.jacobian(last, features)
    f_cov = torch.einsum("ncp,pq,ndq->ncd", jac, torch.linalg.inv(dense), jac)
    assert brute.rel(la.predict(x_test), brute.one_scale_probit(net(x_test).detach(), f_cov)) < 1e-10


def test_kfac_on_convolutions() -> None:
    """All-weights KFAC names the unsupported layer type; last-layer KFAC of the Gal et al. CNN works."""
    torch.manual_seed(0)
    net = gal_cnn(1, (10, 10), 3, hidden=8)
    with pytest.raises(NotImplementedError, match="Conv2d"):
        Laplace(net, "classification", "all", "kfac")
    x, y = torch.randn(6, 1, 10, 10), torch.randint(0, 3, (6,))
    la = Laplace(net, "classification", "last_layer", "kfac").fit(x, y)
    probs = la.predictive_samples(x, 4, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (4, 6, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 6))
    assert math.isfinite(la.log_evidence())


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_all_weights_kfac_predictive_vs_dense_jacobians(brute, likelihood: str) -> None:
    """All-weights KFAC predictive (rank-one layer Jacobians, no J formed) = the linearised predictive from autograd
    Jacobians and the inverse of its own dense precision (1e-10 rel): centred probit probabilities, or for regression
    the mean and variance diag(J Σ Jᵀ) + σ²."""
    net = brute.mlp(seed=15)
    if likelihood == "classification":
        x, y = brute.classification_data(seed=15)
    else:
        x, y = brute.regression_data(seed=15, d=4, c=3)
    la = Laplace(net, likelihood, "all", "kfac", prior_precision=0.9, sigma_noise=0.6).fit(x, y)
    x_test = torch.randn(5, 4, dtype=DT)
    jac = brute.jacobian(net, x_test)
    f_cov = torch.einsum("ncp,pq,ndq->ncd", jac, torch.linalg.inv(la.posterior().precision.to_dense()), jac)
    f_var, f_mean = f_cov.diagonal(dim1=1, dim2=2), net(x_test).detach()
    if likelihood == "classification":
        assert brute.rel(la.predict(x_test), brute.one_scale_probit(f_mean, f_cov)) < 1e-10
    else:
        mean, var = la.predict(x_test)
        assert brute.rel(mean, f_mean) < 1e-12
        assert brute.rel(var, f_var + 0.36) < 1e-10


def test_spectrum_of_rank_deficient_factors_is_finite_float32():
    """MNIST's always-zero border pixels make A singular; the spectrum must stay finite (eigh runs in float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 300, generator=g)
    x[:, :120] = 0.0  # inputs that never fire
    a = torch.cat([x, torch.ones(50, 1)], 1)
    out = torch.randn(50, 10, generator=g)
    block = KronBlock(A=a.T @ a, G=out.T @ out, n=50, delta=torch.tensor(1.0), bias=True)
    q_g, q_a, d = block.spectrum()
    assert q_a.dtype == torch.float32
    assert torch.isfinite(q_g).all() and torch.isfinite(q_a).all() and torch.isfinite(d).all()
    assert (d >= 1.0 - 1e-5).all()  # eigenvalues of GGN (≥ 0) plus the prior δ = 1


def test_kfac_fit_does_not_import_sympy(fresh_python):
    """A KFAC fit in a fresh interpreter leaves ``sympy`` unimported (0.5 s a process): a ``grad_outputs`` tensor given
    to ``torch.autograd.grad`` would import it, through torch.fx's symbolic shapes, as the check below shows."""
    code = (
        "import sys, torch\n"
        "from bayes_models.architectures import mlp\n"
        "from bayes_models.laplace import Laplace\n"
        "x = torch.randn(40, 5); y = x[:, :2].argmax(1); net = mlp(5, 2, hidden=8)\n"
        "Laplace(net, 'classification', subset='all', structure='kfac').fit(x, y)\n"
        "print('sympy' in sys.modules)\n"
        "out = net(x)\n"
        "torch.autograd.grad(out, next(net.parameters()), grad_outputs=torch.ones_like(out))\n"
        "print('sympy' in sys.modules)\n"
    )
    assert fresh_python(code).split() == ["False", "True"]
