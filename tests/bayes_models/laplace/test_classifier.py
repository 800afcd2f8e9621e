"""The Laplace model family: MAP + post-hoc Laplace behind the common interface, and its belief update."""

import dataclasses
import importlib.util
import math

import pytest
import torch

from bayes_models.laplace import GaussianBelief, LaplaceClassifier, LaplaceConfig
from tests.bayes_models.laplace.conftest import one_scale_probit


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + 0.6 * torch.randn(n, 2, generator=g), y


HAS_LAPLACE_TORCH = importlib.util.find_spec("laplace") is not None
CONFIG = LaplaceConfig(feature_shape=(2,), n_classes=3, hidden=16, depth=1, steps=300, seed=0)
TRAINED = dataclasses.replace(CONFIG, predictive_prior="trained")
"""The predictive under the trained prior's last-layer precision (not re-tuned)."""


def test_fit_predict_evidence_and_round_trip():
    x, y = _blobs(120, 0)
    model = LaplaceClassifier(CONFIG, device="cpu").fit(x, y)
    x_test, y_test = _blobs(200, 1)
    probs = model.predictive_samples(x_test, 30, seed=4)
    assert probs.shape == (30, 200, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(30, 200), atol=1e-5)
    assert (probs.mean(0).argmax(-1) == y_test).float().mean() > 0.9  # well separated blobs
    probit = model.predict(x_test)
    assert probit.shape == (200, 3) and torch.allclose(probit.sum(-1), torch.ones(200), atol=1e-5)
    assert (probit.argmax(-1) == probs.mean(0).argmax(-1)).float().mean() > 0.95  # two predictives, one posterior
    log_z = model.log_evidence()
    assert math.isfinite(log_z) and log_z < 0  # a probability of discrete labels: log Z ≤ 0
    restored = LaplaceClassifier.from_state_dict(model.state_dict(), device="cpu")
    assert restored.log_evidence() == log_z
    assert torch.equal(restored.predictive_samples(x_test, 30, seed=4), probs)


def test_belief_update_accumulates_precision():
    x, y = _blobs(200, 2)
    first = LaplaceClassifier(CONFIG, device="cpu").fit(x[:100], y[:100])
    prior = first.posterior()
    second = LaplaceClassifier(CONFIG, device="cpu", network=first.network).fit(x[100:], y[100:], prior=prior)
    posterior = second.posterior()
    assert isinstance(posterior, GaussianBelief) and posterior.structure == "kfac"
    # More data can only add curvature: the new precision dominates the old one (trace and log det grow).
    old, new = prior.precision.to_dense(), posterior.precision.to_dense()
    assert torch.trace(new) > torch.trace(old)
    assert torch.logdet(new) > torch.logdet(old)


def test_a_stated_prior_is_trained_under_and_its_evidence_is_the_dense_one():
    """A stated prior std per layer group is used as given (not tuned): ``δ_l = 1/std_l²``, and ``log Z`` equals the
    dense float64 Laplace evidence of the trained network under that prior (model in float32: rel. 1e-4)."""
    import copy

    from tests.bayes_models.laplace.conftest import ggn, log_evidence, log_lik, params_of, rel

    x, y = _blobs(60, 5)
    config = LaplaceConfig(
        (2,), 3, hidden=6, depth=2, steps=200, subset="all", structure="full", prior_std=0.5,
        layer_prior_std=(("head", 2.0), ("head.4", 4.0)),
    )  # fmt: skip
    model = LaplaceClassifier(config, device="cpu").fit(x, y)
    layers = {"features.0": 0.5**-2, "head.1": 2.0**-2, "head.4": 4.0**-2}
    assert model.laplace.prior_precision.tolist() == list(layers.values())

    network = copy.deepcopy(model.network).double().eval()
    _, theta = params_of(network)
    delta = torch.cat([torch.full((p.numel(),), layers[n.rsplit(".", 1)[0]]) for n, p in network.named_parameters()])
    prior = torch.diag(delta.double())
    post = ggn(network, x.double(), "classification") + prior
    reference = log_evidence(log_lik(network, x.double(), y, "classification"), theta, prior, post)
    assert rel(model.log_evidence(), reference) < 1e-4

    tight = LaplaceClassifier(dataclasses.replace(config, prior_std=0.05, layer_prior_std=()), device="cpu").fit(x, y)
    assert params_of(tight.network)[1].norm() < 0.5 * theta.norm()  # the prior shapes the fit
    with pytest.raises(ValueError, match=r"prior std must be positive, got \[\('head', -1\.0\)\]"):
        LaplaceConfig((2,), 3, layer_prior_std=(("head", -1.0),))


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch is not installed (`make reference` installs it)")
@pytest.mark.parametrize(("predictive", "structure"), [("last_layer_kfac", "kron"), ("last_layer_full", "full")])
def test_predictive_is_the_last_layer_laplace_under_the_trained_prior(predictive, structure):
    """After marglik training, ``predict`` is the last-layer Laplace under the trained last-layer precision: the same
    as laplace-torch's ``Laplace(subset_of_weights="last_layer", hessian_structure=structure)`` on a float64 copy of
    the network (its linearised logits' mean and covariance 1e-5: our model is float32; then the probit link on
    them, and MC within 5 standard errors of 20,000 draws each). The layers
    have no biases: laplace-torch gives a bias a Kronecker block of its own, this code joins it to its layer's."""
    import copy

    from laplace import Laplace as Reference
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bayes_models.architectures import SplitNet

    x, y = _blobs(150, 7)
    x_test, _ = _blobs(40, 8)
    torch.manual_seed(0)
    network = SplitNet(nn.Sequential(nn.Linear(2, 16, bias=False), nn.Tanh()), nn.Linear(16, 3, bias=False))
    config = dataclasses.replace(TRAINED, predictive=predictive)
    model = LaplaceClassifier(config, device="cpu", network=network).fit(x, y)
    delta_last = model.laplace.prior_precision[-1]  # layer-wise: [features.0, head]
    laplace = model.predictive_laplace
    assert (laplace.subset, laplace.structure) == ("last_layer", predictive.removeprefix("last_layer_"))
    assert torch.equal(laplace.prior_precision, delta_last.reshape(1).to(laplace.prior_precision))

    reference = Reference(
        copy.deepcopy(model.network).double().eval(), "classification", subset_of_weights="last_layer",
        hessian_structure=structure, prior_precision=float(delta_last),
    )  # fmt: skip
    reference.fit(DataLoader(TensorDataset(x.double(), y), batch_size=50))
    f_mu, f_var = reference._glm_predictive_distribution(x_test.double())
    ours_mu, ours_cov = model.predictive_laplace.functional_posterior(x_test)
    assert torch.allclose(ours_mu.double(), f_mu, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours_cov.double(), f_var, rtol=1e-5, atol=1e-5)
    assert torch.allclose(model.predict(x_test, link="probit").double(), one_scale_probit(f_mu, f_var), atol=1e-5)

    ours = model.predictive_samples(x_test, 20_000, seed=1).double()
    torch.manual_seed(2)
    ref = torch.softmax(torch.distributions.MultivariateNormal(f_mu, f_var).sample((20_000,)), -1)
    se = torch.sqrt(ours.var(0) / 20_000 + ref.var(0) / 20_000)
    assert bool(((ours.mean(0) - ref.mean(0)).abs() <= 5 * se + 1e-6).all())
    assert torch.allclose(model.predict(x_test, "mc", n_samples=20_000, seed=1).double(), ours.mean(0), atol=1e-6)
    assert torch.equal(model.predict(x_test), model.predict(x_test, link="probit"))  # the default link


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch is not installed (`make reference` installs it)")
def test_retuned_predictive_prior_maximises_the_last_layer_evidence():
    """``predictive_prior="retuned"`` (the default): after marglik training the last-layer predictive's precision
    maximises that Laplace's own log Z — within 0.5% of laplace-torch's ``optimize_prior_precision`` on a float64
    copy of the network started from the trained ``δ_L`` (both Adam on ``log δ``), and ``log Z`` is lower at 0.8×
    and 1.25× it (brute force); a stated prior is not re-tuned."""
    import copy

    from laplace import Laplace as Reference
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bayes_models.architectures import SplitNet

    x, y = _blobs(150, 7)
    torch.manual_seed(0)
    network = SplitNet(nn.Sequential(nn.Linear(2, 16, bias=False), nn.Tanh()), nn.Linear(16, 3, bias=False))
    model = LaplaceClassifier(CONFIG, device="cpu", network=network).fit(x, y)
    trained_last = float(model.laplace.prior_precision[-1])
    predictive = model.predictive_laplace
    retuned = float(predictive.prior_precision)
    assert abs(retuned / trained_last - 1) > 0.05  # re-tuning moved it

    reference = Reference(
        copy.deepcopy(model.network).double().eval(), "classification", subset_of_weights="last_layer",
        hessian_structure="kron", prior_precision=trained_last,
    )  # fmt: skip
    reference.fit(DataLoader(TensorDataset(x.double(), y), batch_size=50))
    reference.optimize_prior_precision(method="marglik", n_steps=300, lr=0.1)
    assert retuned == pytest.approx(float(reference.prior_precision), rel=5e-3)
    log_z = predictive.log_evidence()
    for factor in (0.8, 1.25):
        predictive.prior_precision = torch.tensor(factor * retuned)
        assert predictive.log_evidence() < log_z
    stated = dataclasses.replace(CONFIG, prior_std=0.5)
    stated_model = LaplaceClassifier(stated, device="cpu").fit(x, y)
    assert float(stated_model.predictive_laplace.prior_precision) == pytest.approx(4.0)


def test_predictive_option_and_round_trip():
    """``predictive="evidence"`` predicts with the evidence's all-weights KFAC (the behaviour before the option); the
    last-layer one (under the trained prior) survives a state-dict round trip; bad options name the key."""

    x, y = _blobs(120, 0)
    x_test, _ = _blobs(30, 1)
    default = LaplaceClassifier(TRAINED, device="cpu").fit(x, y)
    evidence = LaplaceClassifier(dataclasses.replace(TRAINED, predictive="evidence"), device="cpu").fit(x, y)
    assert evidence.predictive_laplace is None and default.log_evidence() == evidence.log_evidence()
    # the default's posterior is the evidence's all-weights KFAC posterior with the backbone held fixed: its block of
    # the (layer-block-diagonal) precision, exactly
    last = default.predictor().posterior().precision.to_dense()
    assert torch.equal(default.laplace.posterior().precision.to_dense()[-last.shape[0] :, -last.shape[0] :], last)
    assert torch.equal(evidence.predict(x_test, link="probit"), evidence.laplace.predict(x_test, link="probit"))
    assert not torch.allclose(default.predict(x_test, link="probit"), evidence.predict(x_test, link="probit"))
    restored = LaplaceClassifier.from_state_dict(default.state_dict(), device="cpu")
    assert torch.equal(restored.predict(x_test), default.predict(x_test))
    with pytest.raises(
        ValueError, match=r"predictive='kfac'; expected one of 'last_layer_kfac', 'last_layer_full', 'evidence'"
    ):
        LaplaceConfig((2,), 3, predictive="kfac")
