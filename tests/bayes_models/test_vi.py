"""Mean-field VI (Bayes by Backprop) against independent float64 computations.

Monte Carlo comparisons use 3 standard errors for a scalar; for k coordinates at once the bound is Bonferroni-
corrected (``z_bound(k)``) so that the whole comparison keeps the false-alarm rate of one 3-SE test (0.27%).
"""

import io
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import distributions as D
from torch import nn
from torch.nn import functional as F

from bayes_models.architectures import SplitNet
from bayes_models.vi import BayesLinear, MeanFieldVI, VIConfig, _fixed_weights, gaussian_kl, softplus_inverse

F64 = torch.float64


def z_bound(k: int) -> float:
    """Per-coordinate bound for k simultaneous comparisons: 3.0 for k = 1."""
    return float(norm.ppf(1 - 0.0027 / (2 * k)))


def random_layer(seed: int, in_features: int = 4, out_features: int = 3) -> BayesLinear:
    """float64 layer with random μ, σ ∈ [0.2, 1.5] and a random per-weight Gaussian prior."""
    g = torch.Generator().manual_seed(seed)
    layer = BayesLinear(in_features, out_features).to(F64)
    with torch.no_grad():
        for part in ("weight", "bias"):
            mu = getattr(layer, f"{part}_mu")
            mu.copy_(torch.randn(mu.shape, generator=g, dtype=F64))
            getattr(layer, f"{part}_rho").copy_(
                softplus_inverse(0.2 + 1.3 * torch.rand(mu.shape, generator=g, dtype=F64))
            )
            layer.set_gaussian_prior(
                0.5 * torch.randn(mu.shape, generator=g, dtype=F64),
                0.5 + 1.5 * torch.rand(mu.shape, generator=g, dtype=F64),
                name=part,
            )
    return layer


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 2, generator=g), y


# ---- the layer: KL, local reparameterisation, gradients ----------------------------------------------------------


def test_gaussian_kl_closed_form_matches_distributions_and_monte_carlo():
    layer = random_layer(0)
    closed = float(layer.kl().detach())
    reference = 0.0
    for part, (mu, sigma) in layer.variational().items():
        q = D.Normal(mu.detach(), sigma.detach())
        p = D.Normal(getattr(layer, f"prior_{part}_mu"), getattr(layer, f"prior_{part}_sigma"))
        reference += float(D.kl_divergence(q, p).sum())
    assert closed == pytest.approx(reference, abs=1e-12)
    mu, sigma = layer.weight_mu.detach(), layer.weight_sigma.detach()
    assert float(gaussian_kl(mu, sigma, mu, sigma)) == 0.0

    # Monte Carlo: mean over w ~ q of log q(w) − log p(w), with its standard error
    g = torch.Generator().manual_seed(1)
    per_sample = torch.zeros(100_000, dtype=F64)
    for part, (mu, sigma) in layer.variational().items():
        q = D.Normal(mu.detach(), sigma.detach())
        p = D.Normal(getattr(layer, f"prior_{part}_mu"), getattr(layer, f"prior_{part}_sigma"))
        w = mu.detach() + sigma.detach() * torch.randn(100_000, *mu.shape, generator=g, dtype=F64)
        per_sample += (q.log_prob(w) - p.log_prob(w)).flatten(1).sum(1)
    se = float(per_sample.std() / math.sqrt(per_sample.numel()))
    assert abs(float(per_sample.mean()) - closed) < 3 * se


def test_scale_mixture_prior_and_its_monte_carlo_kl():
    layer = random_layer(2)
    pi, s1, s2 = 0.3, 1.5, 0.1
    layer.set_scale_mixture_prior(pi, s1, s2)
    mixture = D.MixtureSameFamily(
        D.Categorical(torch.tensor([pi, 1 - pi], dtype=F64)), D.Normal(0.0, torch.tensor([s1, s2], dtype=F64))
    )
    w = torch.linspace(-4, 4, 101, dtype=F64)
    torch.testing.assert_close(layer.log_prior(w, "weight"), mixture.log_prob(w), rtol=0, atol=1e-12)

    # the layer's 1-sample estimator, repeated, against an independent large-sample estimate
    with torch.random.fork_rng():
        torch.manual_seed(3)
        estimates = torch.stack([layer.kl(n_samples=1).detach() for _ in range(3000)])
    g = torch.Generator().manual_seed(4)
    reference = torch.zeros(100_000, dtype=F64)
    for mu, sigma in layer.variational().values():
        q = D.Normal(mu.detach(), sigma.detach())
        draws = q.mean + q.stddev * torch.randn(100_000, *mu.shape, generator=g, dtype=F64)
        reference += (q.log_prob(draws) - mixture.log_prob(draws)).flatten(1).sum(1)
    se = math.sqrt(estimates.var() / estimates.numel() + reference.var() / reference.numel())
    assert abs(float(estimates.mean() - reference.mean())) < 3 * se
    assert layer.kl().requires_grad


def test_local_reparameterisation_matches_weight_sampling_moments():
    layer = random_layer(5)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    mu_w, sigma_w = layer.weight_mu.detach(), layer.weight_sigma.detach()
    mean = x @ mu_w.T + layer.bias_mu.detach()
    var = (x**2) @ (sigma_w**2).T + layer.bias_sigma.detach() ** 2
    moments = layer.preactivation_moments(x)
    torch.testing.assert_close(moments[0], mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moments[1], var, rtol=1e-12, atol=1e-12)

    k = 20_000
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(7)
        layer.train()
        local = layer(x.expand(k, *x.shape))  # fresh pre-activation noise per draw and item
        w, b = layer.sample_weights(k)
        sampled = torch.einsum("ni,koi->kno", x, w) + b[:, None, :]
    bound = z_bound(4 * mean.numel())
    for draws in (local, sampled):
        assert ((draws.mean(0) - mean).abs() / (var / k).sqrt()).max() < bound
        # pre-activations are Gaussian under both schemes: SE of a sample variance is var·sqrt(2/(k−1))
        assert ((draws.var(0) - var).abs() / (var * math.sqrt(2 / (k - 1)))).max() < bound
    layer.eval()
    torch.testing.assert_close(layer(x), mean, rtol=1e-12, atol=1e-12)


def _grad(layer: BayesLinear, loss: torch.Tensor) -> torch.Tensor:
    params = [layer.weight_mu, layer.bias_mu, layer.weight_rho, layer.bias_rho]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _group_mean_gradients(layer: BayesLinear, loss_of_draws, groups: int, per_group: int) -> torch.Tensor:
    """``groups`` i.i.d. gradients, each the mean of ``per_group`` single-draw reparameterised gradients."""
    return torch.stack([_grad(layer, loss_of_draws(per_group)) for _ in range(groups)])


def _z(estimates: torch.Tensor, reference: torch.Tensor, reference_se: torch.Tensor | float = 0.0) -> torch.Tensor:
    se = (estimates.var(0) / estimates.shape[0] + torch.as_tensor(reference_se) ** 2).sqrt()
    return (estimates.mean(0) - reference).abs() / se


def test_elbo_gradient_estimator_is_unbiased():
    layer = random_layer(8, in_features=3, out_features=2)
    g = torch.Generator().manual_seed(9)
    x, y, n_train = torch.randn(6, 3, generator=g, dtype=F64), torch.tensor([0, 1, 1, 0, 1, 0]), 6
    layer.train()
    bound = z_bound(16)  # 16 coordinates: weight/bias μ and ρ

    # (a) quadratic "likelihood": E[a²] = mean² + var in closed form, so the exact gradient is known
    def quadratic(draws: int) -> torch.Tensor:
        return (layer(x.expand(draws, *x.shape)) ** 2).sum((1, 2)).mean() / x.shape[0] + layer.kl() / n_train

    mean = x @ layer.weight_mu.T + layer.bias_mu
    var = (x**2) @ (layer.weight_sigma**2).T + layer.bias_sigma**2
    exact = _grad(layer, (mean**2 + var).sum() / x.shape[0] + layer.kl() / n_train)
    with torch.random.fork_rng():
        torch.manual_seed(10)
        estimates = _group_mean_gradients(layer, quadratic, groups=40, per_group=250)
    assert _z(estimates, exact).max() < bound

    # (b) the ELBO's own loss, NLL_mean + KL / N: local reparameterisation vs a large weight-sampling estimate
    def local_elbo(draws: int) -> torch.Tensor:
        logits = layer(x.expand(draws, *x.shape))
        return F.cross_entropy(logits.reshape(-1, 2), y.repeat(draws)) + layer.kl() / n_train

    def weight_sampled_elbo(draws: int) -> torch.Tensor:
        w, b = layer.sample_weights(draws)
        logits = torch.einsum("ni,koi->kno", x, w) + b[:, None, :]
        return F.cross_entropy(logits.reshape(-1, 2), y.repeat(draws)) + layer.kl() / n_train

    with torch.random.fork_rng():
        torch.manual_seed(11)
        estimates = _group_mean_gradients(layer, local_elbo, groups=40, per_group=250)
        reference = _group_mean_gradients(layer, weight_sampled_elbo, groups=40, per_group=2500)
    reference_se = reference.std(0) / math.sqrt(reference.shape[0])
    assert _z(estimates, reference.mean(0), reference_se).max() < bound


# ---- the model ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bayesian", "prior"), [("head", "gaussian"), ("all", "scale_mixture")])
def test_vi_learns_toy_problem_and_logs_kl(bayesian, prior):
    x, y = blobs(300, seed=0)
    x_test, y_test = blobs(300, seed=1)
    config = VIConfig((2,), 3, hidden=16, bayesian=bayesian, prior=prior, steps=250, lr=1e-2, seed=0)
    model = MeanFieldVI(config, device="cpu")
    elbo_before = model.elbo(x, y, n_samples=64, seed=1)
    model.fit(x, y)

    probs = model.predictive_samples(x_test, 64, seed=2)
    assert probs.shape == (64, 300, 3)
    assert (probs.mean(0).argmax(-1) == y_test).double().mean() > 0.8  # chance is 1/3
    for key in ("nll", "kl", "loss"):
        assert len(model.history[key]) == config.steps and np.isfinite(model.history[key]).all()
    assert min(model.history["kl"]) > 0
    assert np.mean(model.history["loss"][-50:]) < np.mean(model.history["loss"][:50])

    assert MeanFieldVI.evidence_is_bound and "lower bound" in MeanFieldVI.log_evidence.__doc__
    elbo = model.log_evidence()
    assert math.isfinite(elbo) and elbo > elbo_before
    assert elbo == pytest.approx(model.elbo(x, y, n_samples=config.elbo_samples, seed=config.seed))
    assert elbo < 0

    posterior = model.posterior()
    assert set(posterior) == {f"{name}.{part}" for name in model.layers for part in ("weight", "bias")}
    assert all((sigma > 0).all() for _, sigma in posterior.values())
    if bayesian == "head":
        assert all(name.startswith("head.") for name in model.layers)
    else:
        assert any(name.startswith("features.") for name in model.layers)


def _gauss_hermite_log_evidence(x: np.ndarray, y: np.ndarray, prior_std: float) -> float:
    """log ∫ Π_i softmax(w x_i)_{y_i} N(w; 0, s² I) dw for w = (w0, w1): the likelihood depends on d = w1 − w0 only,
    d ~ N(0, 2 s²), so the integral is one-dimensional (probabilists' Gauss–Hermite, 200 nodes)."""
    t, weights = np.polynomial.hermite_e.hermegauss(200)
    d = math.sqrt(2) * prior_std * t
    signs = np.where(y == 1, 1.0, -1.0)
    log_lik = -np.logaddexp(0.0, -signs[None, :] * d[:, None] * x[None, :]).sum(1)
    return float(
        np.log(np.sum(weights * np.exp(log_lik - log_lik.max()))) + log_lik.max() - 0.5 * math.log(2 * math.pi)
    )


def test_elbo_is_below_the_exact_log_evidence():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(20, 1, generator=g)
    y = (torch.rand(20, generator=g) < torch.sigmoid(1.5 * x[:, 0])).long()
    network = SplitNet(nn.Identity(), nn.Linear(1, 2, bias=False))
    config = VIConfig((1,), 2, prior_std=1.0, steps=600, batch_size=20, lr=0.03, elbo_samples=20_000)
    model = MeanFieldVI(config, device="cpu", network=network).fit(x, y)
    log_z = _gauss_hermite_log_evidence(x[:, 0].double().numpy(), y.numpy(), prior_std=1.0)

    # independent ELBO: E_q Σ_i log p(y_i | x_i, w) by sampling q, minus KL from torch.distributions
    mu, sigma = (t.double() for t in model.posterior()["head.weight"])
    w = mu + sigma * torch.randn(20_000, 2, 1, generator=g, dtype=F64)
    log_lik = torch.log_softmax(torch.einsum("ni,koi->kno", x.double(), w), -1)
    per_sample = log_lik.gather(-1, y.expand(20_000, -1)[..., None]).squeeze(-1).sum(1)
    kl = float(D.kl_divergence(D.Normal(mu, sigma), D.Normal(0.0, 1.0)).sum())
    elbo, se = float(per_sample.mean()) - kl, float(per_sample.std() / math.sqrt(per_sample.numel()))

    assert model.log_evidence() == pytest.approx(elbo, abs=4 * se + 1e-4)
    # its two parts, each against the independent one: the KL in closed form, the expected log likelihood by MC
    parts = model.elbo_terms
    assert parts.kl == pytest.approx(kl, rel=1e-5) and parts.elbo == model.log_evidence()
    assert parts.expected_log_lik == pytest.approx(float(per_sample.mean()), abs=4 * se + 1e-4)
    assert elbo <= log_z + 3 * se  # a lower bound ...
    assert elbo > log_z - 1.0  # ... and a close one on this well-specified problem


def test_belief_update_with_own_posterior_is_the_prior_without_data():
    x, y = blobs(100, seed=3)
    config = VIConfig((2,), 3, hidden=8, steps=60, lr=1e-2)
    model = MeanFieldVI(config, device="cpu").fit(x, y)
    posterior = model.posterior()

    model.fit(x[:0], y[:0], prior=posterior)  # no new data: q = prior, KL(q‖q) = 0, ELBO = log p(∅) = 0
    assert model.prior_from_posterior
    assert float(model.kl().detach()) == 0.0
    assert model.log_evidence() == 0.0
    assert model.history == {"nll": [], "kl": [], "loss": []}
    for name, (mu, sigma) in model.posterior().items():
        torch.testing.assert_close(mu, posterior[name][0], rtol=0, atol=0)
        torch.testing.assert_close(sigma, posterior[name][1], rtol=1e-6, atol=0)

    backbone = {k: v.clone() for k, v in model.network.features.state_dict().items()}
    model.fit(*blobs(100, seed=4), prior=posterior)  # new data moves q away from the prior
    assert model.history["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert model.history["kl"][-1] > 1e-3
    for key, value in model.network.features.state_dict().items():  # the prior was conditioned on this backbone
        assert torch.equal(value, backbone[key]), key
    for layer in model.layers.values():
        torch.testing.assert_close(layer.prior_weight_mu, posterior[f"{_name(model, layer)}.weight"][0])

    with pytest.raises(ValueError, match="missing"):
        model.fit(x, y, prior={k: v for k, v in posterior.items() if not k.endswith("bias")})
    before = model.posterior()
    bad = {k: (mu, -sigma if k.endswith("bias") else sigma) for k, (mu, sigma) in posterior.items()}
    with pytest.raises(ValueError, match="positive"):
        model.fit(x, y, prior=bad)
    assert all(torch.equal(before[k][1], v[1]) for k, v in model.posterior().items())  # nothing half-applied


def _name(model: MeanFieldVI, layer: BayesLinear) -> str:
    return next(name for name, m in model.layers.items() if m is layer)


@pytest.mark.parametrize("bayesian", ["head", "all"])
def test_predictive_samples_are_seeded_and_share_weights_across_items(bayesian):
    x, _ = blobs(7, seed=5)
    model = MeanFieldVI(VIConfig((2,), 3, hidden=8, bayesian=bayesian, init_std=0.3), device="cpu")
    state = torch.random.get_rng_state()
    probs = model.predictive_samples(torch.cat([x, x]), 20, seed=1, batch_size=3)  # chunks cut through duplicates
    assert torch.equal(torch.random.get_rng_state(), state)
    assert probs.shape == (20, 14, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20, 14))
    torch.testing.assert_close(probs[:, :7], probs[:, 7:], rtol=0, atol=1e-6)  # one weight draw per sample
    assert torch.equal(probs, model.predictive_samples(torch.cat([x, x]), 20, seed=1, batch_size=3))
    assert not torch.allclose(probs, model.predictive_samples(torch.cat([x, x]), 20, seed=2))
    assert probs.std(0).max() > 1e-3  # samples differ
    # the draws depend on the seed only: a pool scored in chunks sees one set of posterior samples
    torch.testing.assert_close(model.predictive_samples(x[2:5], 20, seed=1), probs[:, 2:5], rtol=0, atol=1e-6)


def test_vectorised_head_equals_per_sample_passes():
    model = MeanFieldVI(VIConfig((2,), 3, hidden=8, init_std=0.3), device="cpu")
    x, _ = blobs(5, seed=6)
    layers = list(model.layers.values())
    assert len(layers) == 2  # depth 2: the hidden-to-hidden layer and the output layer are in the head
    with torch.no_grad():
        samples = {layer: layer.sample_weights(6) for layer in layers}
        hidden = model.network.features(x)
        with _fixed_weights(samples):
            batched = model.network.head(hidden.expand(6, *hidden.shape))
        for s in range(6):
            with _fixed_weights({layer: (w[s], b[s]) for layer, (w, b) in samples.items()}):
                torch.testing.assert_close(batched[s], model.network.head(hidden), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_with_weights_only_load():
    x, y = blobs(60, seed=7)
    model = MeanFieldVI(VIConfig((2,), 3, hidden=8, steps=20, prior="scale_mixture"), device="cpu").fit(x, y)
    updated = MeanFieldVI(VIConfig((2,), 3, hidden=8, steps=20), device="cpu").fit(x, y)
    updated.fit(x, y, prior=updated.posterior())
    for original in (model, updated):
        kls = []
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        buffer.seek(0)
        loaded = MeanFieldVI.from_state_dict(torch.load(buffer, weights_only=True), device="cpu")
        assert torch.equal(loaded.predictive_samples(x, 5, seed=3), original.predictive_samples(x, 5, seed=3))
        assert loaded.log_evidence() == original.log_evidence()
        for m in (loaded, original):  # same prior (mixture or posterior): same KL for the same draws
            with torch.random.fork_rng():
                torch.manual_seed(4)
                kls.append(float(m.kl(10).detach()))
        assert kls[0] == pytest.approx(kls[1], rel=1e-6)
        assert [m.mixture for m in loaded.layers.values()] == [m.mixture for m in original.layers.values()]


def test_priors_and_config_are_validated():
    config = VIConfig((2,), 3, hidden=8, layer_priors=(("head.1", 0.5, 2.0),))
    layer = MeanFieldVI(config, device="cpu").layers["head.1"]
    assert float(layer.prior_weight_mu.unique()) == 0.5 and float(layer.prior_weight_sigma.unique()) == 2.0
    with pytest.raises(ValueError, match=r"layer group\(s\) \['head\.9'\] that match no layer"):
        MeanFieldVI(VIConfig((2,), 3, layer_priors=(("head.9", 0.0, 1.0),)), device="cpu")
    with pytest.raises(ValueError, match=r"prior std must be positive, got \[\('head', -1\.0\)\]"):
        VIConfig((2,), 3, layer_priors=(("head", 0.0, -1.0),))
    with pytest.raises(ValueError, match="0 < mixture_pi < 1"):
        VIConfig((2,), 3, prior="scale_mixture", mixture_pi=1.5)
    # a group is a dotted prefix; the most specific group covering a layer wins, the rest keep prior_std
    groups = (("head", 0.0, 0.5), ("head.4", 0.1, 3.0))
    model = MeanFieldVI(VIConfig((2,), 3, hidden=8, depth=2, bayesian="all", layer_priors=groups), device="cpu")
    stds = {name: float(layer.prior_weight_sigma.unique()) for name, layer in model.layers.items()}
    assert stds == {"features.0": 1.0, "head.1": 0.5, "head.4": 3.0}
    with pytest.raises(ValueError, match="bayesian"):
        VIConfig((2,), 3, bayesian="some")
    with pytest.raises(ValueError, match="prior"):
        VIConfig((2,), 3, prior="laplace")
    with pytest.raises(ValueError, match="no Linear layer"):
        MeanFieldVI(VIConfig((2,), 3), device="cpu", network=SplitNet(nn.Linear(2, 4), nn.Identity()))
    with pytest.raises(RuntimeError, match="fit"):
        MeanFieldVI(VIConfig((2,), 3), device="cpu").log_evidence()


def test_construction_and_fit_leave_the_global_rng_alone_and_repeat():
    x, y = blobs(50, seed=8)
    state = torch.random.get_rng_state()
    a = MeanFieldVI(VIConfig((2,), 3, hidden=8, steps=15), device="auto").fit(x, y)
    b = MeanFieldVI(VIConfig((2,), 3, hidden=8, steps=15), device="auto").fit(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), q in zip(a.network.state_dict().items(), b.network.state_dict().values(), strict=True):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q), name
    assert a.history == b.history


def test_scale_mixture_kl_matches_a_numerical_integral():
    """The Monte Carlo KL(q ‖ π N(0, σ1²) + (1 − π) N(0, σ2²)) over reparameterised weights against the integral
    Σ_j ∫ q_j(w) [log q_j(w) − log p(w)] dw by the trapezoid rule on μ_j ± 12 σ_j (200,001 nodes, float64)."""
    layer = random_layer(21, in_features=2, out_features=2)
    pi, s1, s2 = 0.25, 1.0, 0.05
    layer.set_scale_mixture_prior(pi, s1, s2)
    integral = 0.0
    for part, (mu, sigma) in layer.variational().items():
        for m, s in zip(mu.detach().flatten().tolist(), sigma.detach().flatten().tolist(), strict=True):
            w = torch.linspace(m - 12 * s, m + 12 * s, 200_001, dtype=F64)
            log_q = -0.5 * ((w - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
            integrand = log_q.exp() * (log_q - layer.log_prior(w, part))
            integral += float(torch.trapezoid(integrand, w))
    with torch.random.fork_rng():
        torch.manual_seed(22)
        batches = torch.stack([layer.kl(n_samples=20_000).detach() for _ in range(20)])
    mc, se = float(batches.mean()), float(batches.std() / math.sqrt(batches.numel()))
    assert abs(mc - integral) < 4 * se and se < 2e-3 * abs(integral)
