"""Marginal-likelihood training against laplace-torch's ``marglik_training`` and against conjugate linear regression,
where the Laplace evidence is exact."""

import importlib.util
import logging
import math

import pytest
import torch
from torch import nn

from bayes_models.laplace import LaplaceClassifier, LaplaceConfig
from bayes_models.laplace.core import Laplace
from bayes_models.laplace.marglik import marglik_training
from bayes_models.linear import BayesianLinearRegression, polynomial_features
from tests.bayes_models.laplace.conftest import one_scale_probit

DT = torch.float64
HAS_LAPLACE_TORCH = importlib.util.find_spec("laplace") is not None


def _teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of a random tanh MLP teacher on 4-d inputs (3 classes), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=DT)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(2 * torch.randn(p.shape, generator=g, dtype=DT))
        return x, teacher(x).argmax(-1)


def _student(seed: int) -> nn.Module:
    """A 2-layer MLP without biases: laplace-torch puts a bias in a Kronecker block (and a prior precision) of its
    own, this code joins it to its layer's weights; without biases both factorisations are the same."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16, bias=False), nn.Tanh(), nn.Linear(16, 3, bias=False)).to(DT)


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch is not installed (`make reference` installs it)")
@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_matches_laplace_torch_marglik_training(lr_schedule: str):
    """The same network, data, schedule and seed; ``"cosine"``: laplace-torch given torch's cosine scheduler, which
    it steps after every batch, as this code does."""
    from laplace import marglik_training as reference
    from laplace.curvature import AsdlGGN
    from torch.optim.lr_scheduler import CosineAnnealingLR
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _teacher_data(300, seed=0)
    epochs, burnin, every, hyper_steps, lr = 200, 50, 10, 20, 3e-3
    ours = marglik_training(
        _student(1),
        x,
        y,
        steps=epochs,
        batch_size=300,
        lr=lr,
        burnin=burnin,
        every=every,
        hyper_steps=hyper_steps,
        lr_schedule=lr_schedule,
    )  # full batch: a step is an epoch, as in laplace-torch's schedule
    scheduler = {"scheduler_cls": CosineAnnealingLR, "scheduler_kwargs": {"T_max": epochs}}
    lap, _, neg_log_z, _ = reference(
        _student(1),
        DataLoader(TensorDataset(x, y), batch_size=300),
        backend=AsdlGGN,
        n_epochs=epochs,
        n_epochs_burnin=burnin,
        marglik_frequency=every,
        n_hypersteps=hyper_steps,
        optimizer_kwargs={"lr": lr},
        **(scheduler if lr_schedule == "cosine" else {}),
    )
    # laplace-torch returns the network of its best update; here that is the last one, so both are final networks.
    assert min(neg_log_z[hyper_steps - 1 :: hyper_steps]) == neg_log_z[-1]
    assert len(ours.log_evidence) == len(neg_log_z) // hyper_steps == 16
    delta_ref = lap.prior_precision.to(DT)
    assert torch.allclose(ours.prior_precision, delta_ref, rtol=0.05), (ours.prior_precision, delta_ref)
    log_z_ref = float(lap.log_marginal_likelihood())
    assert ours.laplace.log_evidence() == pytest.approx(log_z_ref, rel=0.05)


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch is not installed (`make reference` installs it)")
@pytest.mark.parametrize("delta", [[0.5, 2.0], [30.0, 30.0]])
def test_all_weights_kfac_evidence_and_probit_predictive_match_laplace_torch(delta):
    """The all-weights KFAC Laplace of a trained network under a layer-wise prior: log evidence (1e-8 relative) and
    the linearised logits' mean and covariance (1e-8) as laplace-torch's ``KronLaplace`` computes them (float64), and
    the probit predictive on them."""
    from laplace import KronLaplace
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _teacher_data(200, seed=2)
    x_new, _ = _teacher_data(50, seed=3)
    net = _student(4)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    precision = torch.tensor(delta, dtype=DT)
    ours = Laplace(net, subset="all", structure="kfac", prior_precision=precision).fit(x, y)
    reference = KronLaplace(net, "classification", prior_precision=precision)
    reference.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    assert ours.log_evidence() == pytest.approx(float(reference.log_marginal_likelihood()), rel=1e-8)
    f_mu, f_var = reference._glm_predictive_distribution(x_new)
    ours_mu, ours_cov = ours.functional_posterior(x_new)
    assert torch.allclose(ours_mu, f_mu, rtol=1e-8, atol=1e-10)
    assert torch.allclose(ours_cov, f_var, rtol=1e-8, atol=1e-10)
    assert torch.allclose(ours.predict(x_new, link="probit"), one_scale_probit(f_mu, f_var), rtol=0, atol=1e-12)


def _polynomial_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(60, generator=g, dtype=DT) * 2 - 1
    sigma = 0.3
    w = torch.tensor([0.5, -1.0, 0.8, 1.2], dtype=DT)
    return x, polynomial_features(x, 3, "legendre") @ w + sigma * torch.randn(60, generator=g, dtype=DT), sigma


def _marglik_polynomial(x: torch.Tensor, y: torch.Tensor, sigma: float, degree: int, hyper_evidence: str = "kfac"):
    torch.manual_seed(0)
    model = nn.Linear(degree + 1, 1, bias=False).to(DT)
    features = polynomial_features(x, degree, "legendre")
    return marglik_training(
        model,
        features,
        y[:, None],
        steps=1000,
        batch_size=len(x),
        lr=0.05,
        burnin=100,
        every=100,
        hyper_steps=50,
        prior_structure="scalar",
        likelihood="regression",
        sigma_noise=sigma,
        hyper_evidence=hyper_evidence,
    )


@pytest.mark.parametrize("hyper_evidence", ["kfac", "exact_ggn"])
def test_linear_gaussian_prior_and_evidence_match_type_ii_maximum_likelihood(hyper_evidence: str):
    """For y = Φw + ε the KFAC Laplace and the exact GGN are exact (60 items: one block of all of them): marglik
    training must reach the α that maximises the closed-form evidence (found on a grid, ±5%) and that evidence."""
    x, y, sigma = _polynomial_data(0)
    result = _marglik_polynomial(x, y, sigma, 3, hyper_evidence)
    features = polynomial_features(x, 3, "legendre")
    grid = torch.logspace(-3, 3, 1201, dtype=DT)

    def exact(alpha: float) -> float:
        return float(BayesianLinearRegression(torch.zeros(4, dtype=DT), alpha, sigma**-2).log_evidence(features, y))

    values = [exact(float(a)) for a in grid]
    best = max(range(len(grid)), key=values.__getitem__)
    assert float(result.prior_precision) == pytest.approx(float(grid[best]), rel=0.05)
    assert result.laplace.log_evidence() == pytest.approx(values[best], abs=0.05)


def test_evidence_of_marglik_training_picks_the_true_polynomial_degree():
    x, y, sigma = _polynomial_data(1)
    log_z = {d: _marglik_polynomial(x, y, sigma, d).laplace.log_evidence() for d in range(1, 7)}
    assert max(log_z, key=log_z.get) == 3, log_z


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + 0.6 * torch.randn(n, 2, generator=g), y


def test_classifier_evidence_is_under_the_trained_layerwise_prior():
    x, y = _blobs(120, 0)
    common = dict(feature_shape=(2,), n_classes=3, hidden=16, depth=1, steps=300, seed=0)
    model = LaplaceClassifier(LaplaceConfig(**common), device="cpu").fit(x, y)
    delta = model.laplace.prior_precision
    assert delta.shape == (2,) and not torch.allclose(delta, torch.ones(2))  # one per layer, moved from 1
    assert model.log_evidence() == pytest.approx(float(model.laplace.log_marginal_likelihood(delta)))
    # Last layer only: the same network and prior, the last layer's δ.
    last = LaplaceClassifier(LaplaceConfig(**common, subset="last_layer"), device="cpu").fit(x, y)
    assert float(last.laplace.prior_precision) == pytest.approx(float(delta[-1]))
    map_model = LaplaceClassifier(LaplaceConfig(**common, training="map"), device="cpu").fit(x, y)
    assert map_model.laplace.prior_precision.dim() == 0  # post-hoc scalar tuning
    assert math.isfinite(map_model.log_evidence())


def test_marglik_peak_lr_replaces_the_constant_lr_with_a_cosine_decay():
    """``marglik_peak_lr`` set: training starts at it and decays (``lr`` unused); ``None``: a constant ``lr``. The
    same peak as a constant rate gives other weights, so the decay is applied."""
    x, y = _blobs(120, 0)
    common = dict(feature_shape=(2,), n_classes=3, hidden=16, depth=1, steps=60, seed=0)

    def weights(**config) -> torch.Tensor:
        model = LaplaceClassifier(LaplaceConfig(**common, **config), device="cpu").fit(x, y)
        return torch.cat([p.detach().flatten() for p in model.network.parameters()])

    cosine = weights(marglik_peak_lr=0.05)
    assert torch.equal(cosine, weights(marglik_peak_lr=0.05, lr=0.5))
    constant = weights(marglik_peak_lr=None, lr=0.05)
    assert not torch.allclose(cosine, constant, atol=1e-3)


def test_conv_networks_fall_back_to_last_layer_map_training(caplog):
    x = torch.randn(24, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 3
    config = LaplaceConfig(feature_shape=(1, 10, 10), n_classes=3, hidden=8, steps=5, seed=0)
    with caplog.at_level(logging.WARNING, logger="bayes_models.laplace.classifier"):
        model = LaplaceClassifier(config, device="cpu").fit(x, y)
    assert model.laplace.subset == "last_layer"
    assert "falls back to last-layer" in caplog.text and "MAP training instead" in caplog.text


def test_exact_ggn_updates_leave_the_last_prior_at_its_fixed_point():
    """The last exact-GGN update converges to 1% (those before it stop at 10%): rebuilt on the final network from
    all items (the kernel of every row, as the updates' was), the fixed point ``γ_l / ‖θ_l‖²`` is within 1% of
    every returned ``δ_l``, and the last history entry is the evidence estimate there."""
    from bayes_models.laplace._common import Subnet
    from bayes_models.laplace.kernel import SubsetEvidence

    x, y = _blobs(60, 1)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 3))
    result = marglik_training(
        network, x, y, steps=200, batch_size=30, lr=0.01, burnin=50, every=50, hyper_evidence="exact_ggn"
    )
    objective = SubsetEvidence(Subnet(network, "all"), x, likelihood="classification")
    assert objective.exact and len(result.log_evidence) == 4
    delta = result.prior_precision.double()
    _, gradient = objective.value_and_gradient(delta.log())  # −½ δ_l ‖θ_l‖² + ½ γ_l
    prior_term = delta * objective.sq_norms
    full_step = ((2 * gradient + prior_term) / prior_term).log()  # log(γ_l / ‖θ_l‖²) − log δ_l
    assert float(full_step.abs().max()) < 1e-2
    log_delta = delta.log()
    assert result.log_evidence[-1] == pytest.approx(objective.value(log_delta), rel=1e-6)
