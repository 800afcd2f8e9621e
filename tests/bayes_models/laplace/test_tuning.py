"""Prior precision tuned on a validation split's NLL, against a dense float64 probit predictive."""

import pytest
import torch

from bayes_models.laplace import Laplace, prior_from_posterior, tune_prior_on_validation
from tests.bayes_models.laplace.conftest import DT, ggn, jacobian, mlp, one_scale_probit


def _teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=DT)
    logits = 2.0 * x[:, :3] + 0.5 * torch.randn(n, 3, generator=g, dtype=DT)
    return x, logits.argmax(-1)


def _trained(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Sequential:
    net = mlp(seed=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):  # an unregularised MAP: over-confident, so the prior's scale matters
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net


def _dense_probit_nll(net, x_fit, x_val, y_val, precision: float) -> float:
    """Last-layer Laplace by hand: H = GGN + δ I over [W.flatten(), b], Σ_f = J H⁻¹ Jᵀ, MacKay's probit on the
    centred logits."""
    last, body = net[-1], net[:-1]
    with torch.no_grad():
        phi_fit, phi_val = body(x_fit), body(x_val)
    hessian = ggn(last, phi_fit, "classification") + precision * torch.eye(sum(p.numel() for p in last.parameters()))
    jac = jacobian(last, phi_val)  # [N, C, P]
    cov = torch.einsum("ncp,pq,ndq->ncd", jac, torch.linalg.inv(hessian), jac)
    with torch.no_grad():
        mean = last(phi_val)
    probs = one_scale_probit(mean, cov)
    return float(-probs.gather(1, y_val[:, None]).log().mean())


def test_validation_tuned_prior_is_no_worse_than_the_evidence_one_and_matches_the_dense_predictive():
    x, y = _teacher_data(60, 0)
    x_val, y_val = _teacher_data(40, 1)
    net = _trained(x, y)
    laplace = Laplace(net, "classification", subset="last_layer", structure="full").fit(x, y)
    delta = float(laplace.optimize_prior_precision())

    tuning = tune_prior_on_validation(laplace, x_val, y_val)
    assert tuning.scales[tuning.nlls.index(tuning.validation_nll)] == tuning.scale
    assert tuning.validation_nll <= tuning.evidence_nll
    assert float(laplace.prior_precision) == pytest.approx(tuning.scale * delta, rel=1e-12)
    for c, value in zip(tuning.scales, tuning.nlls, strict=True):  # every grid point against the dense reference
        assert value == pytest.approx(_dense_probit_nll(net, x, x_val, y_val, c * delta), rel=1e-7)
    print(
        f"evidence δ={delta:.3g}: val NLL {tuning.evidence_nll:.4f}; c*={tuning.scale:.3g}: {tuning.validation_nll:.4f}"
    )

    with pytest.raises(ValueError, match="must hold c = 1"):
        tune_prior_on_validation(laplace, x_val, y_val, scales=(0.1, 10.0))
    update = Laplace(net, "classification", subset="last_layer", structure="full")
    update.fit(x, y, prior=prior_from_posterior(laplace.posterior()))
    with pytest.raises(ValueError, match="earlier posterior"):
        tune_prior_on_validation(update, x_val, y_val)
