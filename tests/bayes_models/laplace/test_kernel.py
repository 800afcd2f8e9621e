"""The exact-GGN evidence in kernel form against the dense GGN computed from autograd Jacobians."""

import pytest
import torch

from bayes_models.laplace import Laplace
from bayes_models.laplace.kernel import covered, layer_precisions

DT = torch.float64
SIZES = [40, 54, 21]  # weights of brute.mlp()'s three nn.Linear layers (with biases)


def dense_log_evidence(brute, net, x, y, likelihood: str, per_weight: torch.Tensor, sigma: float = 1.0) -> float:
    """log Z = log p(D|θ*) − ½ θ*ᵀ D θ* − ½ log det(GGN + D) + ½ log det D, all dense."""
    _, theta = brute.params_of(net)
    prior = torch.diag(per_weight)
    post = brute.ggn(net, x, likelihood, sigma) + prior
    return float(brute.log_evidence(brute.log_lik(net, x, y, likelihood, sigma), theta, prior, post))


@pytest.mark.parametrize(("structure", "n"), [("kfac", 25), ("diag", 25), ("full", 25), ("kfac", 60)])
def test_kernel_evidence_equals_the_dense_ggn_evidence(brute, structure: str, n: int) -> None:
    """Classification, all weights, one precision per layer: the kernel-form log Z (75 rows for 115 weights; 180
    rows: the weights' dense GGN instead) equals the brute-force dense-GGN log Z to 1e-10 relative whatever the
    posterior's own structure, and differs from KFAC's / the diagonal's."""
    net = brute.mlp(seed=1)
    x, y = brute.classification_data(seed=1, n=n)
    delta = torch.tensor([0.5, 2.0, 7.0], dtype=DT)
    la = Laplace(net, "classification", "all", structure, prior_precision=delta).fit(x, y)
    found = la.ggn_log_evidence(x)
    expected = dense_log_evidence(brute, net, x, y, "classification", delta.repeat_interleave(torch.tensor(SIZES)))
    assert found is not None and found.log_det.exact and found.log_det.blocks == 1
    assert brute.rel(found.log_evidence, expected) < 1e-10
    if structure == "full":
        assert brute.rel(la.log_evidence(), expected) < 1e-10
    else:
        assert abs(la.log_evidence() - expected) > 1e-3


def test_kernel_evidence_regression_and_last_layer(brute) -> None:
    """Regression with σ = 0.7 (the GGN scaled by 1/σ²), all weights and last layer only, scalar precision."""
    net = brute.mlp(seed=2, sizes=(4, 8, 6, 2))
    x, y = brute.regression_data(seed=2, n=20, d=4, c=2)
    la = Laplace(net, "regression", "all", "kfac", prior_precision=1.5, sigma_noise=0.7).fit(x, y)
    n_params = sum(p.numel() for p in net.parameters())
    expected = dense_log_evidence(brute, net, x, y, "regression", torch.full((n_params,), 1.5, dtype=DT), 0.7)
    assert brute.rel(la.ggn_log_evidence(x).log_evidence, expected) < 1e-10

    last = Laplace(net, "regression", "last_layer", "full", prior_precision=1.5, sigma_noise=0.7).fit(x, y)
    assert brute.rel(last.ggn_log_evidence(x).log_evidence, last.log_evidence()) < 1e-10


def test_blocks_give_a_lower_bound(brute) -> None:
    """Split into blocks of 8 items (16 rows: 2 per item, the rank of a 3-class softmax Hessian), the log
    determinant is at least the exact one (Fischer's inequality) and the evidence at most the exact evidence; one
    block of everything is exact again."""
    net = brute.mlp(seed=3)
    x, y = brute.classification_data(seed=3, n=30)
    la = Laplace(net, "classification", "all", "kfac", prior_precision=1.0).fit(x, y)
    exact, blocked = la.ggn_log_evidence(x), la.ggn_log_evidence(x, max_rows=16)
    assert blocked.log_det.blocks == 4 and not blocked.log_det.exact
    assert blocked.log_det.value > exact.log_det.value + 1e-6
    assert blocked.log_evidence < exact.log_evidence
    assert la.ggn_log_evidence(x, max_rows=90).log_det.exact


def test_where_the_kernel_form_does_not_apply(brute) -> None:
    """A per-weight precision that varies within a layer, a belief-update prior, or data of another size."""
    net = brute.mlp(seed=4)
    x, y = brute.classification_data(seed=4, n=12)
    varying = torch.linspace(0.5, 2.0, sum(SIZES), dtype=DT)
    la = Laplace(net, "classification", "all", "diag", prior_precision=varying).fit(x, y)
    assert layer_precisions(la.subnet, varying) is None and covered(la.subnet)
    assert la.ggn_log_evidence(x) is None
    update = Laplace(net, "classification", "all", "diag", prior_precision=1.0).fit(x, y, prior=la.posterior())
    assert update.ggn_log_evidence(x) is None
    with pytest.raises(ValueError, match="12 items"):
        la.ggn_log_evidence(x[:5])


def test_subset_evidence_value_and_gradient(brute) -> None:
    """All items: the value is log Z minus log p(D|θ*) (the prior-dependent part, 1e-10 relative), the closed-form
    gradient in log δ equals central finite differences (1e-6 relative), and MacKay's fixed point stops where the
    gradient is zero (1e-6) at a higher value, which it returns. A subset, 10 of the 30 items: the value is the
    extrapolation of the dense GGN's log determinants of the drawn items, ``L₁₀ + 20 (L₁₀ − L₅) / 5`` (1e-10), and
    its gradient the finite differences' (1e-6)."""
    from bayes_models.laplace._common import Subnet
    from bayes_models.laplace.kernel import SubsetEvidence

    net = brute.mlp(seed=5)
    x, y = brute.classification_data(seed=5, n=30)
    log_delta = torch.tensor([0.3, -0.5, 1.1], dtype=DT)
    la = Laplace(net, "classification", "all", "kfac", prior_precision=log_delta.exp()).fit(x, y)
    subnet = Subnet(net, "all")
    whole = SubsetEvidence(subnet, x, likelihood="classification", rows=90, dtype=DT)
    value, gradient = whole.value_and_gradient(log_delta)
    assert whole.exact and brute.rel(whole.value(log_delta), value) < 1e-14
    assert brute.rel(value, la.ggn_log_evidence(x).log_evidence - la.log_likelihood) < 1e-10
    eps = 1e-5
    for layer in range(3):
        step = torch.zeros(3, dtype=DT)
        step[layer] = eps
        numeric = (whole.value_and_gradient(log_delta + step)[0] - whole.value_and_gradient(log_delta - step)[0]) / (
            2 * eps
        )
        assert abs(float(gradient[layer]) - numeric) < 1e-6 * max(1.0, abs(numeric))
    _, scalar_gradient = whole.value_and_gradient(torch.tensor(0.2, dtype=DT))
    assert (
        scalar_gradient.shape == ()
        and brute.rel(float(scalar_gradient), float(whole.value_and_gradient(torch.full((3,), 0.2, dtype=DT))[1].sum()))
        < 1e-12
    )
    optimum, optimum_value = whole.maximise(log_delta, iterations=200, tolerance=1e-12)
    assert float(whole.value_and_gradient(optimum)[1].abs().max()) < 1e-6
    assert optimum_value == whole.value(optimum) and optimum_value > value
    capped, capped_value = whole.maximise(log_delta, iterations=2)  # stopped by the cap: the value is its own
    assert capped_value == whole.value(capped) and capped_value > value
    single = SubsetEvidence(subnet, x, likelihood="classification", rows=90)  # float32, marglik's default
    assert single.kernels.dtype == torch.float32
    single_optimum, _ = single.maximise(log_delta, iterations=200, tolerance=1e-5)
    assert brute.rel(single_optimum.exp(), optimum.exp()) < 1e-3
    subset = SubsetEvidence(
        subnet, x, likelihood="classification", rows=30, generator=torch.Generator().manual_seed(0), dtype=DT
    )
    assert subset.kernels.shape == (3, 20, 20) and not subset.exact  # 10 items × 2 rows
    drawn = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:10]
    first_ten, first_five = (_dense_log_det(brute, net, x[drawn[:m]], log_delta) for m in (10, 5))
    expected = _prior_term(net, log_delta) - 0.5 * (first_ten + 20 / 5 * (first_ten - first_five))
    value, gradient = subset.value_and_gradient(log_delta)
    assert brute.rel(value, expected) < 1e-10
    for layer in range(3):
        step = torch.zeros(3, dtype=DT)
        step[layer] = eps
        numeric = (subset.value(log_delta + step) - subset.value(log_delta - step)) / (2 * eps)
        assert abs(float(gradient[layer]) - numeric) < 1e-6 * max(1.0, abs(numeric))


def _dense_log_det(brute, net, x: torch.Tensor, log_delta: torch.Tensor) -> float:
    """``log det(GGN + D) − log det D`` of the items ``x`` from autograd Jacobians, one precision per layer."""
    per_weight = log_delta.exp().repeat_interleave(torch.tensor(SIZES))
    posterior = brute.ggn(net, x, "classification") + torch.diag(per_weight)
    return float(torch.linalg.slogdet(posterior)[1] - per_weight.log().sum())


def _prior_term(net, log_delta: torch.Tensor) -> float:
    """``−½ Σ_l δ_l ‖θ_l‖²``."""
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return float(-0.5 * (log_delta.exp() * torch.stack([(w**2).sum() for w in theta.split(SIZES)])).sum())


@pytest.mark.parametrize("seed", [1, 2])
def test_subset_evidence_estimates_the_log_det_closer_than_the_block_mean(brute, seed: int) -> None:
    """The log determinant of 120 items estimated from 16 drawn (20 draws): the extrapolation at the drawn second
    half's increments errs by at most 0.8 times what ``(n / m) L₁₆`` (the block bound used before) errs, on average,
    and still over-estimates on average (its increments shrink as items are added). Exact: the dense GGN of all
    120 items."""
    from bayes_models.laplace._common import Subnet
    from bayes_models.laplace.kernel import SubsetEvidence

    net = brute.mlp(seed=seed)
    x, _ = brute.classification_data(seed=seed, n=120)
    log_delta = torch.tensor([0.3, -0.5, 1.1], dtype=DT)
    exact = _dense_log_det(brute, net, x, log_delta)
    estimates, block_means = [], []
    for draw in range(20):
        generator = torch.Generator().manual_seed(draw)
        subset = SubsetEvidence(Subnet(net, "all"), x, likelihood="classification", rows=48, generator=generator)
        estimates.append(-2.0 * (subset.value(log_delta) - _prior_term(net, log_delta)))
        drawn = torch.randperm(120, generator=torch.Generator().manual_seed(draw))[:16]
        block_means.append(120 / 16 * _dense_log_det(brute, net, x[drawn], log_delta))
    error = sum(abs(e - exact) for e in estimates) / 20
    assert error < 0.8 * sum(abs(b - exact) for b in block_means) / 20
    assert sum(estimates) / 20 > exact


def _first_items(n: int, fraction: float, seed: int) -> torch.Tensor:
    """The conditioning items ``D₁`` as documented: the first ``round(fraction · n)`` of a seeded permutation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)]


@pytest.mark.parametrize(
    ("likelihood", "n", "subset"),
    [
        ("classification", 25, "all"),
        ("classification", 60, "all"),
        ("regression", 20, "all"),
        ("classification", 40, "last_layer"),
    ],
)
def test_conditional_evidence_is_log_z_less_the_conditioning_items_log_z(brute, likelihood, n, subset) -> None:
    """``log p(D₂|D₁)`` equals the brute-force dense-GGN ``log Z(D) − log Z(D₁)`` at the same weights and prior to
    1e-10 relative: through the kernel (75 rows for 115 weights; regression with σ = 0.7) and through the weights'
    dense GGN (180 rows; the last layer's 21 weights)."""
    net = brute.mlp(seed=6)
    sigma = 0.7 if likelihood == "regression" else 1.0
    if likelihood == "regression":
        x, y = brute.regression_data(seed=6, n=n, d=4, c=3)
    else:
        x, y = brute.classification_data(seed=6, n=n)
    delta = torch.tensor([0.5, 2.0, 7.0], dtype=DT) if subset == "all" else torch.tensor([3.0], dtype=DT)
    sizes = torch.tensor(SIZES if subset == "all" else SIZES[-1:])
    la = Laplace(net, likelihood, subset, "kfac", prior_precision=delta, sigma_noise=sigma).fit(x, y)
    found = la.ggn_conditional_log_evidence(x, y, conditioned=0.4, seed=3)

    first = _first_items(n, 0.4, seed=3)
    per_weight = delta.repeat_interleave(sizes)
    if subset == "all":
        whole = dense_log_evidence(brute, net, x, y, likelihood, per_weight, sigma)
        part = dense_log_evidence(brute, net, x[first], y[first], likelihood, per_weight, sigma)
    else:  # the last layer alone: its full Laplace is exact, and checked against the dense GGN elsewhere
        whole = la.ggn_log_evidence(x).log_evidence
        part = Laplace(net, likelihood, subset, "full", prior_precision=delta).fit(x[first], y[first]).log_evidence()
    assert found is not None and found.log_det.exact and found.log_det.conditioned == len(first)
    assert brute.rel(found.log_evidence, whole - part) < 1e-10
    assert brute.rel(found.log_z, whole) < 1e-10  # log Z of all items from the same factorisation
    assert abs(found.log_evidence - found.log_z) > 1.0


def test_conditional_evidence_in_blocks_and_bad_fractions(brute) -> None:
    """Blocks of 8 items (16 rows): the conditional is approximated (not exact, different value); one block of
    everything is exact again. A fraction outside (0, 1) or a single item is refused; a belief-update prior has no
    kernel form."""
    net = brute.mlp(seed=7)
    x, y = brute.classification_data(seed=7, n=30)
    la = Laplace(net, "classification", "all", "kfac", prior_precision=1.0).fit(x, y)
    exact = la.ggn_conditional_log_evidence(x, y)
    blocked = la.ggn_conditional_log_evidence(x, y, max_rows=16)
    assert exact.log_det.exact and not blocked.log_det.exact and blocked.log_det.blocks == 4
    assert abs(blocked.log_evidence - exact.log_evidence) > 1e-6
    assert brute.rel(la.ggn_conditional_log_evidence(x, y, max_rows=90).log_evidence, exact.log_evidence) < 1e-12
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match="fraction in \\(0, 1\\)"):
            la.ggn_conditional_log_evidence(x, y, conditioned=fraction)
    one = Laplace(net, "classification", "all", "kfac", prior_precision=1.0).fit(x[:1], y[:1])
    with pytest.raises(ValueError, match="at least 2 items"):
        one.ggn_conditional_log_evidence(x[:1], y[:1])
    update = Laplace(net, "classification", "all", "kfac", prior_precision=1.0).fit(x, y, prior=la.posterior())
    assert update.ggn_conditional_log_evidence(x, y) is None
