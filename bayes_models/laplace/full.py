"""Full GGN Laplace: the dense ``P × P`` posterior precision ``H = GGN + P0`` (exact curvature; ``O(P²)`` memory).

Meant for last layers and small networks (at most :data:`MAX_PARAMS` weights). For one ``nn.Linear``,
``f = W̃ ã`` with ``W̃ = [W | b]``, the GGN is the Kronecker sum ``Σ_n Λ_n ⊗ ã_n ã_nᵀ`` (no Jacobians needed);
otherwise ``GGN = Σ_n (Lᵀ J_n)ᵀ (Lᵀ J_n)`` from per-example Jacobians (``torch.func``).
"""

from __future__ import annotations

from collections.abc import Callable
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
    standard_normal,
)
from bayes_models.laplace.diag import DiagPrecision
from bayes_models.laplace.diag import isotropic as isotropic

MAX_PARAMS = 20_000


class DensePrecision:
    """Dense precision ``H[P, P]`` in parameter order, used through its Cholesky factor ``H = L Lᵀ``.

    ``eigenvalues``, when known (``H = s·GGN + δI``: ``s λ(GGN) + δ``), give ``log det H`` without a Cholesky
    factorisation, and ``matrix`` may then be a function building it on first use, so tuning a scalar prior
    precision costs ``O(P)`` per step.
    """

    structure = "full"

    def __init__(
        self, matrix: torch.Tensor | Callable[[], torch.Tensor], eigenvalues: torch.Tensor | None = None
    ) -> None:
        self._matrix, self.eigenvalues = matrix, eigenvalues
        self._chol: torch.Tensor | None = None

    @property
    def matrix(self) -> torch.Tensor:
        if callable(self._matrix):
            self._matrix = self._matrix()
        return self._matrix

    @property
    def chol(self) -> torch.Tensor:
        if self._chol is None:
            self._chol = torch.linalg.cholesky(self.matrix)
        return self._chol

    def logdet(self) -> torch.Tensor:
        """``log det H = 2 Σ_i log L_ii`` (or ``Σ log λ_i`` when the eigenvalues are known)."""
        if self.eigenvalues is not None:
            return self.eigenvalues.log().sum()
        return 2 * self.chol.diagonal().log().sum()

    def quad(self, v: torch.Tensor) -> torch.Tensor:
        """``vᵀ H v`` for ``v[..., P]``."""
        return ((v @ self.matrix) * v).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``[n, P]`` of ``N(0, H⁻¹)``: ``L⁻ᵀ ε`` has covariance ``L⁻ᵀ L⁻¹ = H⁻¹``."""
        eps = standard_normal((self.matrix.shape[0], n), generator, self.matrix.device, self.matrix.dtype)
        return torch.linalg.solve_triangular(self.chol.mT, eps, upper=True).T

    def jsj(self, jac: torch.Tensor) -> torch.Tensor:
        """``J H⁻¹ Jᵀ = (L⁻¹Jᵀ)ᵀ (L⁻¹Jᵀ)`` ``[N, C, C]`` for ``J[N, C, P]``."""
        n, c, p = jac.shape
        half = torch.linalg.solve_triangular(self.chol, jac.reshape(n * c, p).T, upper=False).reshape(p, n, c)
        return torch.einsum("pnc,pnd->ncd", half, half)

    def to_dense(self) -> torch.Tensor:
        return self.matrix

    def scaled(self, factor: float) -> DensePrecision:
        return DensePrecision(self.matrix * factor)

    def state_dict(self) -> dict[str, Any]:
        return {"structure": self.structure, "matrix": self.matrix.detach().clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> DensePrecision:
        return cls(state["matrix"].to(device, dtype))


def linear_ggn(a: torch.Tensor, sqrt_hess: torch.Tensor, bias: bool) -> torch.Tensor:
    """``Σ_n Λ_n ⊗ ã_n ã_nᵀ`` for ``f = W̃ ã``, returned in parameter order ``[W.flatten(), b]``."""
    a = augment(a, bias)
    lam = sqrt_hess @ sqrt_hess.mT
    c, i = lam.shape[1], a.shape[1]
    aug = torch.einsum("nce,ni,nj->ciej", lam, a, a).reshape(c * i, c * i)
    order = torch.argsort(aug_to_std(c, i - bias, bias, a.device))  # std position -> aug position
    return aug[order][:, order]


def accumulate(
    subnet: Subnet, inp: torch.Tensor, sqrt_hess: torch.Tensor, acc: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """Add one batch's ``Σ_n J_nᵀ Λ_n J_n`` ``[P, P]`` to ``acc["ggn"]``."""
    if subnet.n_params > MAX_PARAMS:
        raise ValueError(
            f"structure='full' over {subnet.n_params} weights needs a {subnet.n_params}² matrix; "
            f"use subset='last_layer' or structure='diag'/'kfac' (limit {MAX_PARAMS})"
        )
    module = subnet.module
    if isinstance(module, nn.Linear):
        ggn = linear_ggn(inp, sqrt_hess, module.bias is not None)
    else:
        ggn = inp.new_zeros(subnet.n_params, subnet.n_params)
        for rows in jacobian_chunks(inp.shape[0], sqrt_hess.shape[1], subnet.n_params):
            jl = torch.einsum("ncd,ncp->ndp", sqrt_hess[rows], jacobians(subnet, inp[rows])).flatten(0, 1)
            ggn += jl.T @ jl
    return {"ggn": ggn if acc is None else acc["ggn"] + ggn}


def posterior_precision(curvature: dict[str, torch.Tensor], prior: Any, scale: torch.Tensor) -> DensePrecision:
    """``H = scale · GGN + P0`` (any prior structure, made dense).

    For an isotropic prior ``δI`` the eigenvalues of the GGN (computed once, cached in ``curvature``) give
    ``λ(H) = scale · λ(GGN) + δ``.
    """
    ggn = curvature["ggn"]
    if isinstance(prior, DiagPrecision):
        delta = prior.diag
        if bool((delta.detach() == delta.detach()[0]).all()):
            eigenvalues = scale * _ggn_eigenvalues(curvature) + delta[0]
            return DensePrecision(lambda: scale * ggn + torch.diag(delta), eigenvalues)
        return DensePrecision(scale * ggn + torch.diag(delta))
    return DensePrecision(scale * ggn + prior.to_dense())


def curvature_spectrum(
    curvature: dict[str, torch.Tensor], scale: torch.Tensor, group_sizes: list[int]
) -> list[torch.Tensor]:
    """The eigenvalues of the data's curvature term ``scale · GGN``, one spectrum over all weights (not one per group:
    the layers share the GGN's eigenbasis): under a prior ``δ I`` the posterior's are these ``+ δ``."""
    return [scale * _ggn_eigenvalues(curvature)]


def _ggn_eigenvalues(curvature: dict[str, torch.Tensor]) -> torch.Tensor:
    """The GGN's eigenvalues, computed once and kept in ``curvature`` (prior tuning asks for them at every ``δ``)."""
    if "_eigenvalues" not in curvature:
        curvature["_eigenvalues"] = torch.linalg.eigvalsh(curvature["ggn"]).clamp(min=0)
    return curvature["_eigenvalues"]


def functional_covariance(subnet: Subnet, inp: torch.Tensor, precision: Any, theta: torch.Tensor) -> torch.Tensor:
    """``J H⁻¹ Jᵀ`` ``[N, C, C]`` of the linearised outputs (per-example Jacobians, chunked)."""
    return jacobian_covariance(subnet, inp, precision, theta)
