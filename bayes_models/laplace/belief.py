"""Belief updates: a Laplace posterior ``N(θ_prev, H_prev⁻¹)`` becomes the next round's prior.

A round that continues from the previous posterior (``DESIGN.md``, "Belief updates") does

1. ``prior = prior_from_posterior(previous.posterior())``,
2. ``map_with_gaussian_prior(network, x_new, y_new, prior.mean, prior.precision)`` (MAP under that prior),
3. ``Laplace(network, ...).fit(x_new, y_new, prior=prior)`` (``H_new = GGN_new + H_prev``).

For a linear-Gaussian model this reproduces the batch posterior exactly (full and KFAC structures); for networks
it is an approximation to be measured against retraining on everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayes_models.laplace._common import LIKELIHOODS, Subnet, check_option, eval_mode, targets
from bayes_models.laplace.diag import DiagPrecision
from bayes_models.laplace.full import DensePrecision
from bayes_models.laplace.kfac import KronPrecision
from bayes_models.training import minibatches, training_threads

Precision = DensePrecision | DiagPrecision | KronPrecision
_PRECISIONS: dict[str, Any] = {"full": DensePrecision, "diag": DiagPrecision, "kfac": KronPrecision}


@dataclass
class GaussianBelief:
    """``N(mean, precision⁻¹)`` over the weights a Laplace approximation covers (``subset``), in parameter order.

    ``precision`` keeps its structure's form: :class:`DensePrecision` (``.matrix[P, P]``), :class:`DiagPrecision`
    (``.diag[P]``) or :class:`KronPrecision` (``.blocks``: Kronecker factor sums per layer); ``.to_dense()`` on all.
    """

    mean: torch.Tensor
    precision: Precision
    subset: str

    @property
    def structure(self) -> str:
        return self.precision.structure

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.detach().clone(), "precision": self.precision.state_dict(), "subset": self.subset}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> GaussianBelief:
        mean = state["mean"].to(device, dtype or state["mean"].dtype)
        precision = precision_from_state_dict(state["precision"], mean.device, mean.dtype)
        return cls(mean, precision, state["subset"])


def precision_from_state_dict(state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Precision:
    return _PRECISIONS[state["structure"]].from_state_dict(state, device, dtype)


def prior_from_posterior(posterior: GaussianBelief, *, temper: float = 1.0) -> GaussianBelief:
    """The prior ``N(θ_prev, (τ H_prev)⁻¹)`` for the next round (``τ = temper``; ``τ < 1`` forgets old data).

    The result shares no storage with ``posterior`` (tensors are cloned and detached).
    """
    if temper <= 0:
        raise ValueError(f"temper must be positive, got {temper}")
    state = posterior.state_dict()
    copy = GaussianBelief.from_state_dict(state, posterior.mean.device, posterior.mean.dtype)
    return GaussianBelief(copy.mean, copy.precision.scaled(temper), copy.subset)


def as_precision(precision: Precision | torch.Tensor | float, n_params: int, like: torch.Tensor) -> Precision:
    """A precision object from a scalar / ``[P]`` diagonal / ``[P, P]`` matrix, or the object itself."""
    if isinstance(precision, DensePrecision | DiagPrecision | KronPrecision):
        return precision
    t = torch.as_tensor(precision, device=like.device, dtype=like.dtype)
    if t.dim() == 0:
        return DiagPrecision(t.expand(n_params))
    if t.shape == (n_params,):
        return DiagPrecision(t)
    if t.shape == (n_params, n_params):
        return DensePrecision(t)
    raise ValueError(f"prior precision of shape {tuple(t.shape)} does not fit {n_params} weights")


def map_with_gaussian_prior(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_precision: Precision | torch.Tensor | float,
    *,
    subset: str = "all",
    likelihood: str = "classification",
    sigma_noise: float = 1.0,
    optimizer: str = "adam",
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    freeze_rest: bool = True,
    generator: torch.Generator | None = None,
) -> list[float]:
    """MAP fit of ``network`` in place under the Gaussian prior ``N(μ, P⁻¹)`` on the ``subset`` weights.

    Minimises ``U(θ) = [Σ_n NLL_n(θ) + ½ (θ−μ)ᵀ P (θ−μ)] / N`` (``NLL`` = cross-entropy, or ``(y−f)²/(2σ²)``).
    ``optimizer="adam"``: ``steps`` minibatch steps (the data term estimated by the batch mean);
    ``optimizer="lbfgs"``: full-batch L-BFGS with strong-Wolfe line search for at most ``steps`` iterations
    (small problems; converges to the MAP to near machine precision). Dropout and BatchNorm stay in eval mode, as
    the Laplace approximation sees them. ``freeze_rest``: weights outside ``subset`` are not trained (otherwise
    they are trained without a prior). Returns the loss ``U`` after every step.
    """
    check_option("likelihood", likelihood, LIKELIHOODS)
    check_option("optimizer", optimizer, ("adam", "lbfgs"))
    subnet = Subnet(network, subset)
    mean = prior_mean.to(subnet.device, subnet.dtype)
    precision = as_precision(prior_precision, subnet.n_params, mean)
    ids = {id(p) for p in subnet.params}
    trained = subnet.params + ([] if freeze_rest else [p for p in network.parameters() if id(p) not in ids])
    x = x.to(subnet.device, subnet.dtype if x.dtype.is_floating_point else x.dtype)
    y = y.to(subnet.device)
    n = x.shape[0]

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = network(xb)
        yb = targets(yb, out, likelihood)
        if likelihood == "classification":
            nll = nn.functional.cross_entropy(out, yb, reduction="mean")
        else:
            nll = ((out - yb) ** 2).sum() / (2 * sigma_noise**2 * xb.shape[0])
        theta = torch.cat([p.reshape(-1) for p in subnet.params])
        return nll + 0.5 * precision.quad(theta - mean) / n

    losses: list[float] = []
    with eval_mode(network), training_threads(network, min(batch_size, n), subnet.device):
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS(
                trained, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
            )

            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = objective(x, y)
                loss.backward()
                losses.append(float(loss.detach()))
                return loss

            opt.step(closure)
            return losses
        opt = torch.optim.Adam(trained, lr=lr)
        for index in minibatches(n, batch_size, steps, generator, x.device):
            opt.zero_grad(set_to_none=True)
            loss = objective(x[index], y[index])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses
