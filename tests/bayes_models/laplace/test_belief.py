"""Belief updates: posterior → prior → MAP under that prior → Laplace with that prior, vs the batch fit."""

import io

import pytest
import torch
from torch import nn

from bayes_models.laplace import GaussianBelief, Laplace, map_with_gaussian_prior, prior_from_posterior

DT = torch.float64
SIGMA, ALPHA = 0.5, 2.0


def fitted(x: torch.Tensor, y: torch.Tensor, structure: str, prior: GaussianBelief | None = None) -> Laplace:
    """nn.Linear(3, 2) trained to its MAP (full-batch L-BFGS) under ``prior`` (isotropic α when None), then fitted."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2).to(DT)
    mean = torch.zeros(8, dtype=DT) if prior is None else prior.mean
    precision = ALPHA if prior is None else prior.precision
    common = {"likelihood": "regression", "sigma_noise": SIGMA}
    map_with_gaussian_prior(net, x, y, mean, precision, optimizer="lbfgs", steps=200, **common)
    return Laplace(net, subset="last_layer", structure=structure, prior_precision=ALPHA, **common).fit(x, y, prior)


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_two_step_belief_update_equals_batch_posterior(brute, structure: str) -> None:
    """Linear-Gaussian, chunks of 25 and 35: fit(chunk 2, prior=posterior 1) has the batch posterior precision
    (1e-8 rel; exact for every structure since the GGN does not depend on θ). Full and KFAC (exact for this model):
    also the batch mean (1e-6 rel) and log Z₁ + log Z₂ = log Z_batch (1e-8 rel)."""
    x, y = brute.regression_data(seed=7, n=60, c=2)
    batch = fitted(x, y, structure)
    first = fitted(x[:25], y[:25], structure)
    second = fitted(x[25:], y[25:], structure, prior_from_posterior(first.posterior()))
    post, ref = second.posterior(), batch.posterior()
    assert brute.rel(post.precision.to_dense(), ref.precision.to_dense()) < 1e-8
    if structure != "diag":
        assert brute.rel(post.mean, ref.mean) < 1e-6
        assert brute.rel(first.log_evidence() + second.log_evidence(), batch.log_evidence()) < 1e-8


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_prior_from_posterior_tempers_and_copies(brute, structure: str) -> None:
    """τ scales the precision (1e-12 rel), the copy shares no storage, and the belief survives torch.save /
    torch.load(weights_only=True) unchanged."""
    net = brute.mlp()
    x, y = brute.classification_data()
    post = Laplace(net, "classification", "last_layer", structure, prior_precision=0.5).fit(x, y).posterior()
    prior = prior_from_posterior(post, temper=0.3)
    assert brute.rel(prior.precision.to_dense(), 0.3 * post.precision.to_dense()) < 1e-12
    prior.mean += 1
    assert not torch.equal(prior.mean, post.mean)
    buffer = io.BytesIO()
    torch.save(post.state_dict(), buffer)
    buffer.seek(0)
    loaded = GaussianBelief.from_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.structure == structure and loaded.subset == "last_layer"
    assert torch.equal(loaded.mean, post.mean)
    assert torch.equal(loaded.precision.to_dense(), post.precision.to_dense())
    with pytest.raises(ValueError, match="temper"):
        prior_from_posterior(post, temper=0.0)


def test_adam_map_with_dense_prior_reaches_the_mode(brute) -> None:
    """Adam (full batch) under a dense Gaussian prior on the last layer ends where L-BFGS does (1e-4 rel), the
    backbone stays frozen, and the objective's gradient there is ~0 (1e-6)."""
    x, y = brute.classification_data(seed=8)
    nets = [brute.mlp(seed=8), brute.mlp(seed=8)]
    g = torch.Generator().manual_seed(0)
    m = torch.randn(21, 21, generator=g, dtype=DT)
    precision, mean = m @ m.T / 21 + 0.5 * torch.eye(21, dtype=DT), torch.randn(21, generator=g, dtype=DT)
    backbone = [p.detach().clone() for p in nets[0][:4].parameters()]
    losses = map_with_gaussian_prior(
        nets[0], x, y, mean, precision, subset="last_layer", steps=300, batch_size=30, lr=0.1, generator=g
    )
    map_with_gaussian_prior(nets[1], x, y, mean, precision, subset="last_layer", optimizer="lbfgs", steps=300)
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(backbone, nets[0][:4].parameters(), strict=True))
    _, adam = brute.params_of(nets[0][4])
    _, lbfgs = brute.params_of(nets[1][4])
    assert brute.rel(adam, lbfgs) < 1e-4

    theta = lbfgs.clone().requires_grad_()
    out = brute.forward(nets[1][4], theta, nets[1][:4](x).detach())
    d = theta - mean
    objective = (nn.functional.cross_entropy(out, y, reduction="sum") + 0.5 * d @ precision @ d) / 30
    (grad,) = torch.autograd.grad(objective, theta)
    assert float(grad.abs().max()) < 1e-6


def test_belief_update_of_a_network_accumulates(brute) -> None:
    """MLP, last-layer KFAC, three chunks: each update's precision exceeds the previous one's (the prior is kept
    and new curvature added: H₃ − H₂ positive semidefinite), and the block count is the total of items seen."""
    net = brute.mlp(seed=9)
    x, y = brute.classification_data(seed=9, n=45)
    prior, dense = None, None
    for chunk in range(3):
        rows = slice(15 * chunk, 15 * (chunk + 1))
        la = Laplace(net, "classification", "last_layer", "kfac", prior_precision=1.0).fit(x[rows], y[rows], prior)
        post = la.posterior()
        if dense is not None:
            assert float(torch.linalg.eigvalsh(post.precision.to_dense() - dense).min()) > -1e-10
        dense, prior = post.precision.to_dense(), prior_from_posterior(post)
    assert post.precision.blocks[0].n == 45


def test_prior_is_moved_to_the_networks_dtype(brute) -> None:
    """A float64 posterior used as the prior of a float32 copy of the network is converted (mean and precision)."""
    net = brute.mlp(seed=10)
    x, y = brute.classification_data(seed=10)
    post = Laplace(net, "classification", "last_layer", "kfac").fit(x, y).posterior()
    la = Laplace(net.float(), "classification", "last_layer", "kfac").fit(x.float(), y, prior=post)
    assert la.prior_mean.dtype == torch.float32
    assert la.posterior().precision.blocks[0].A.dtype == torch.float32
    assert la.posterior().precision.blocks[0].n == 60
