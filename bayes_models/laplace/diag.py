"""Diagonal GGN Laplace: ``H = diag(GGN) + P0`` with a diagonal (isotropic, per-layer or per-weight) prior.

``diag(GGN)_p = Σ_n Σ_c ((Lᵀ J_n)_{cp})²`` with ``Λ_n = L Lᵀ``; per-example Jacobians come from ``torch.func``
(``vmap(jacrev)``), or from the closed form ``∂f_c/∂W_{cd} = a_d`` for a single ``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bayes_models.laplace._common import (
    Subnet,
    aug_to_std,
    augment,
    jacobian_chunks,
    jacobian_covariance,
    jacobians,
    per_param,
    standard_normal,
)


class DiagPrecision:
    """Diagonal precision ``H = diag(d)``, ``d[P]`` in parameter order."""

    structure = "diag"

    def __init__(self, diag: torch.Tensor) -> None:
        self.diag = diag

    def logdet(self) -> torch.Tensor:
        """``log det H = Σ_p log d_p``."""
        return self.diag.log().sum()

    def quad(self, v: torch.Tensor) -> torch.Tensor:
        """``vᵀ H v`` for ``v[..., P]``."""
        return (v**2 * self.diag).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``[n, P]`` of ``N(0, H⁻¹)``: ``ε / √d``."""
        eps = standard_normal((n, self.diag.shape[0]), generator, self.diag.device, self.diag.dtype)
        return eps / self.diag.sqrt()

    def jsj(self, jac: torch.Tensor) -> torch.Tensor:
        """``J H⁻¹ Jᵀ`` ``[N, C, C]`` for ``J[N, C, P]``."""
        return torch.einsum("ncp,p,ndp->ncd", jac, 1 / self.diag, jac)

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.diag)

    def scaled(self, factor: float) -> DiagPrecision:
        return DiagPrecision(self.diag * factor)

    def state_dict(self) -> dict[str, Any]:
        return {"structure": self.structure, "diag": self.diag.detach().clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> DiagPrecision:
        return cls(state["diag"].to(device, dtype))


def isotropic(subnet: Subnet, precision: torch.Tensor) -> DiagPrecision:
    """Prior ``P0 = diag(δ)`` from a scalar, per-layer or per-weight precision."""
    return DiagPrecision(per_param(precision, subnet.group_sizes))


def accumulate(subnet: Subnet, inp: torch.Tensor, sqrt_hess: torch.Tensor, acc: torch.Tensor | None) -> torch.Tensor:
    """Add one batch's ``diag(Σ_n J_nᵀ Λ_n J_n)`` ``[P]`` to ``acc``."""
    module = subnet.module
    if isinstance(module, nn.Linear):
        a = augment(inp, module.bias is not None)
        lam = (sqrt_hess**2).sum(-1)  # Λ_n[c, c]
        aug = torch.einsum("nc,ni->ci", lam, a**2).reshape(-1)
        diag = torch.empty_like(aug)
        diag[aug_to_std(module.out_features, module.in_features, module.bias is not None, aug.device)] = aug
    else:
        diag = inp.new_zeros(subnet.n_params)
        for rows in jacobian_chunks(inp.shape[0], sqrt_hess.shape[1], subnet.n_params):
            jl = torch.einsum("ncd,ncp->ndp", sqrt_hess[rows], jacobians(subnet, inp[rows]))
            diag += (jl**2).sum((0, 1))
    return diag if acc is None else acc + diag


def posterior_precision(curvature: torch.Tensor, prior: Any, scale: torch.Tensor) -> DiagPrecision:
    """``H = scale · diag(GGN) + P0``; the prior must be diagonal (isotropic or an earlier diag posterior)."""
    if not isinstance(prior, DiagPrecision):
        raise ValueError(f"a diag Laplace needs a diagonal prior precision, got structure {prior.structure!r}")
    return DiagPrecision(scale * curvature + prior.diag)


def curvature_spectrum(curvature: torch.Tensor, scale: torch.Tensor, group_sizes: list[int]) -> list[torch.Tensor]:
    """Per layer, the eigenvalues of the data's curvature term: its diagonal, ``scale · diag(GGN)``."""
    return list(torch.split(scale * curvature, group_sizes))


def functional_covariance(subnet: Subnet, inp: torch.Tensor, precision: Any, theta: torch.Tensor) -> torch.Tensor:
    """``J H⁻¹ Jᵀ`` ``[N, C, C]`` of the linearised outputs (per-example Jacobians, chunked)."""
    return jacobian_covariance(subnet, inp, precision, theta)
