"""The ``Laplace`` front end: prior-precision tuning vs grid search, persistence, sampling, errors."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from bayes_models.architectures import mlp
from bayes_models.laplace import Laplace, prior_from_posterior

DT = torch.float64
CASES = [("last_layer", "full"), ("last_layer", "kfac"), ("last_layer", "diag"), ("all", "diag"), ("all", "kfac")]


def grid_max(la: Laplace, log_grid: torch.Tensor) -> tuple[float, float]:
    """(max log Z, its log δ) over a grid of isotropic prior precisions."""
    values = []
    for log_delta in log_grid:
        la.prior_precision = log_delta.exp()
        values.append(la.log_evidence())
    best = int(torch.tensor(values, dtype=DT).argmax())
    return values[best], float(log_grid[best])


@pytest.mark.parametrize(("subset", "structure"), CASES)
def test_prior_precision_optimisation_reaches_grid_maximum(brute, subset: str, structure: str) -> None:
    """From δ = 0.01, marglik tuning raises log Z and ends within 1e-4 (absolute, nats) of the best value on a
    0.05-spaced grid of log δ, at a log δ within two grid steps of the grid's argmax where the gradient in log δ
    is below 1e-6 (Newton's method converged); per-layer tuning does at least as well (−1e-6), at a point where
    every layer's gradient is below 1e-6."""
    net = brute.mlp(seed=10)
    x, y = brute.classification_data(seed=10, n=60)
    la = Laplace(net, "classification", subset, structure, prior_precision=0.01).fit(x, y)
    best, best_log_delta = grid_max(la, torch.linspace(-6, 6, 241, dtype=DT))
    la.prior_precision = 0.01
    before = la.log_evidence()
    la.optimize_prior_precision(n_steps=100)
    after = la.log_evidence()
    assert after > before
    assert after > best - 1e-4
    assert abs(float(la.prior_precision.log()) - best_log_delta) <= 0.1 + 1e-9
    assert abs(float(la._log_z_in_log_delta(False)(la.prior_precision.log())[1])) < 1e-6  # a stationary point
    la.optimize_prior_precision(n_steps=100, per_layer=True)
    assert la.prior_precision.shape == (len(la.subnet.group_sizes),)
    assert la.log_evidence() >= after - 1e-6
    assert la._log_z_in_log_delta(True)(la.prior_precision.log())[1].abs().max() < 1e-6


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_prior_tuning_objective_equals_the_assembled_posteriors(brute, likelihood, structure, subset) -> None:
    """The closed form that prior tuning steps on (from the curvature's eigenvalues, taken once) gives the value and
    the autograd gradient and Hessian of ``log_marginal_likelihood`` (which assembles the posterior) at random
    ``log δ``, scalar and per layer, with a non-zero prior mean (1e-8 / 1e-7 relative); the Hessian is diagonal and
    never positive. A full structure with a δ per layer has none."""
    if likelihood == "classification":
        x, y = brute.classification_data(seed=12, n=50)
    else:
        x, y = brute.regression_data(seed=12, n=50, sigma=0.4)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(x.shape[1], 6), nn.Tanh(), nn.Linear(6, 3 if likelihood == "classification" else 1))
    net = net.to(DT)
    la = Laplace(net, likelihood, subset, structure, prior_mean=0.1, sigma_noise=0.7).fit(x, y)
    for per_layer in (False, True):
        closed_form = la._log_z_in_log_delta(per_layer)
        if structure == "full" and subset == "all" and per_layer:
            assert closed_form is None
            continue
        for _ in range(3):
            log_delta = (2 * torch.randn(len(la.subnet.group_sizes) if per_layer else (), dtype=DT)).requires_grad_()
            reference = la.log_marginal_likelihood(log_delta.exp())
            reference.backward()
            value, gradient, curvature = closed_form(log_delta.detach())
            assert float(value) == pytest.approx(float(reference), rel=1e-8)
            torch.testing.assert_close(gradient, log_delta.grad, rtol=1e-8, atol=1e-8)
            hessian = torch.autograd.functional.hessian(
                lambda u: la.log_marginal_likelihood(u.exp()), log_delta.detach()
            )  # per layer: diagonal (the layers' terms are separate), what Newton's method steps on
            torch.testing.assert_close(torch.diag(curvature) if per_layer else curvature, hessian, rtol=1e-7, atol=1e-9)
            assert (curvature <= 0).all()


def test_noise_and_prior_tuning_for_regression(brute) -> None:
    """nn.Linear at its least-squares weights: joint tuning of (δ, σ) raises log Z, ends within 1e-3 nats of the
    maximum over a 41 × 41 grid of (σ, log δ), at σ within 0.05 of the grid's σ."""
    x, y = brute.regression_data(seed=11, n=50, sigma=0.4)
    torch.manual_seed(0)
    net = nn.Linear(3, 1).to(DT)
    with torch.no_grad():
        solution = torch.linalg.lstsq(torch.cat([x, torch.ones(50, 1, dtype=DT)], 1), y[:, None]).solution[:, 0]
        net.weight[0], net.bias[0] = solution[:3], solution[3]
    la = Laplace(net, "regression", "all", "full", prior_precision=1.0, sigma_noise=1.0).fit(x, y)
    before = la.log_evidence()
    la.optimize_prior_precision(n_steps=300, tune_sigma_noise=True)
    after, sigma = la.log_evidence(), la.sigma_noise
    assert after > before
    best, best_sigma = -float("inf"), 0.0
    for grid_sigma in torch.linspace(0.2, 1.0, 41, dtype=DT):
        la.sigma_noise = float(grid_sigma)
        value, _ = grid_max(la, torch.linspace(-4, 4, 41, dtype=DT))
        if value > best:
            best, best_sigma = value, float(grid_sigma)
    assert after > best - 1e-3
    assert abs(sigma - best_sigma) < 0.05


@pytest.mark.parametrize(("subset", "structure"), [*CASES, ("all", "full")])
def test_state_dict_round_trip(brute, subset: str, structure: str) -> None:
    """torch.save → torch.load(weights_only=True) → from_state_dict on a copy of the network whose covered weights
    were re-initialised gives the same evidence, probit predictive and weights (exactly), also after a belief
    update. (The state holds the covered weights only; a last-layer state needs the same backbone.)"""
    net = brute.mlp(seed=12)
    x, y = brute.classification_data(seed=12)
    first = Laplace(net, "classification", subset, structure, prior_precision=0.7).fit(x[:15], y[:15])
    la = Laplace(net, "classification", subset, structure).fit(x[15:], y[15:], prior_from_posterior(first.posterior()))
    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in Laplace(other, "classification", subset, structure).subnet.params:
            p.normal_()
    loaded = Laplace.from_state_dict(torch.load(buffer, weights_only=True), other)
    assert loaded.log_evidence() == la.log_evidence()
    assert torch.equal(loaded.predict(x[:5]), la.predict(x[:5]))
    assert torch.equal(loaded.subnet.vector(), la.subnet.vector())


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_predictive_samples(brute, subset: str) -> None:
    """Shapes [S, N, C], rows summing to 1, seeded draws reproducible, and the same weight sample for every item
    (a chunked call equals one call)."""
    net = brute.mlp(seed=13)
    x, y = brute.classification_data(seed=13)
    la = Laplace(net, "classification", subset, "diag", batch_size=7).fit(x, y)
    a = la.predictive_samples(x, 5, generator=torch.Generator().manual_seed(0))
    b = la.predictive_samples(x, 5, generator=torch.Generator().manual_seed(0))
    c = la.predictive_samples(x, 5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 30, 3)
    assert torch.allclose(a.sum(-1), torch.ones(5, 30, dtype=DT))
    assert torch.equal(a, b) and not torch.equal(a, c)
    la.batch_size = 1000
    assert torch.allclose(la.predictive_samples(x, 5, generator=torch.Generator().manual_seed(0)), a, atol=1e-12)


def test_split_net_head_with_dropout_and_float32() -> None:
    """The default mlp() (Dropout→Linear head, float32): last-layer fit and predictions are deterministic."""
    torch.manual_seed(0)
    net = mlp(5, 4, hidden=16)
    x, y = torch.randn(40, 5), torch.randint(0, 4, (40,))
    la = Laplace(net, "classification", "last_layer", "kfac").fit(x, y)
    la.optimize_prior_precision(n_steps=20)
    probs = la.predict(x)
    assert probs.dtype == torch.float32 and probs.shape == (40, 4)
    assert torch.equal(probs, la.predict(x))


def test_errors(brute) -> None:
    net = brute.mlp()
    x, y = brute.classification_data()
    with pytest.raises(ValueError, match="structure='block'"):
        Laplace(net, structure="block")
    with pytest.raises(ValueError, match="last nn\\.Linear"):
        Laplace(nn.Sequential(net, nn.Softmax(-1)), "classification", "last_layer").fit(x, y)
    with pytest.raises(ValueError, match="no"):
        Laplace(nn.Sequential(nn.Tanh()), "classification", "last_layer")
    with pytest.raises(ValueError, match="one prior precision per layer"):
        Laplace(net, "classification", "all", "kfac", prior_precision=torch.rand(115, dtype=DT) + 1)
    with pytest.raises(RuntimeError, match="fit"):
        Laplace(net).log_evidence()
    la = Laplace(net, "classification", "last_layer", "diag").fit(x, y)
    updated = Laplace(net, "classification", "last_layer", "diag").fit(x, y, prior=la.posterior())
    with pytest.raises(ValueError, match="earlier posterior"):
        updated.optimize_prior_precision()
    with pytest.raises(ValueError, match="regression"):
        la.optimize_prior_precision(tune_sigma_noise=True)
    with pytest.raises(ValueError, match="covers"):
        Laplace(net, "classification", "all", "diag").fit(x, y, prior=la.posterior())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_cuda_matches_cpu(brute, structure: str) -> None:
    """The same fit on CUDA (float64) gives the CPU evidence and probit predictive to 1e-8 relative."""
    net = brute.mlp(seed=14)
    x, y = brute.classification_data(seed=14)
    cpu = Laplace(net, "classification", "all", structure).fit(x, y)
    gpu = Laplace(brute.mlp(seed=14).cuda(), "classification", "all", structure).fit(x.cuda(), y.cuda())
    assert brute.rel(gpu.log_evidence(), cpu.log_evidence()) < 1e-8
    assert brute.rel(gpu.predict(x.cuda()).cpu(), cpu.predict(x)) < 1e-8
    samples = gpu.predictive_samples(x.cuda(), 3, generator=torch.Generator("cuda").manual_seed(0))
    assert samples.device.type == "cuda"


def test_all_weights_samples_are_of_the_linearised_network(brute) -> None:
    """All-weights samples are softmax(f + J(θ_s − θ*)): their mean matches Monte Carlo over N(f, J H⁻¹ Jᵀ) per item
    (the functional posterior, checked against dense Jacobians elsewhere) within 5 standard errors."""
    net = brute.mlp(seed=3)
    x, y = brute.classification_data(seed=3)
    la = Laplace(net, "classification", "all", "kfac", prior_precision=0.5).fit(x, y)
    f_mean, f_cov = la.functional_posterior(x[:6])
    torch.manual_seed(0)
    ref = torch.softmax(MultivariateNormal(f_mean, f_cov).sample((40_000,)), -1)
    samples = la.predictive_samples(x[:6], 2_000, generator=torch.Generator().manual_seed(1))
    se = torch.sqrt(samples.var(0) / samples.shape[0] + ref.var(0) / ref.shape[0])
    assert bool(((samples.mean(0) - ref.mean(0)).abs() <= 5 * se + 1e-12).all())


@pytest.mark.parametrize("classes", [1, 2, 3, 10])
def test_softmax_hessian_square_root_has_its_rank_in_columns(classes: int) -> None:
    """``L[N, C, C − 1]`` with ``L Lᵀ = diag(p) − ppᵀ`` to 1e-14 in float64, from flat logits to one class at
    probability 1 − 1e-26 (the last class, where the reflection is built, and another); one zero column for C = 1."""
    from bayes_models.laplace._common import hessian_sqrt

    g = torch.Generator().manual_seed(classes)
    logits = torch.cat([torch.randn(20, classes, generator=g, dtype=DT) * s for s in (0.01, 1.0, 10.0)])
    confident = torch.zeros(2, classes, dtype=DT)
    confident[0, -1] = confident[1, 0] = 60.0
    logits = torch.cat([logits, confident])
    root = hessian_sqrt(logits, "classification")
    p = torch.softmax(logits, dim=-1)
    hessian = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    assert root.shape == (62, classes, max(classes - 1, 1))
    assert float((root @ root.mT - hessian).abs().max()) < 1e-14
