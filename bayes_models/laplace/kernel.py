"""The Laplace evidence's log determinant under the exact GGN, computed in the data's space (the network's
empirical NTK) instead of the weights'.

With the GGN's rows ``J̃ = L_nᵀ J_n`` (``Λ_n = L_n L_nᵀ``, one row per item and output: ``NC`` rows) and an
isotropic prior ``D`` (one precision per layer), Sylvester's determinant identity gives

    ``log det(GGN + D) − log det D = log det(I_P + D^{-1/2} J̃ᵀ J̃ D^{-1/2}) = log det(I_NC + Σ_l K_l / δ_l)``

with ``K_l = J̃_l J̃_lᵀ``. For a layer ``s = W̃ ã`` a row of ``J̃_l`` is ``g ⊗ ã`` (``g = B_nᵀ L_n e_k``, the
column back-propagated to the layer's output), so ``K_l[(n,k),(m,j)] = (ã_n·ã_m)(g_nk·g_mj)``: the ``NC × NC``
matrix costs ``O((NC)² · width)`` to build and ``O((NC)³)`` to factor, whatever the number of weights ``P``.

Why: KFAC's ``log det`` gives every one of the ``P`` weight directions curvature (products of the factors'
eigenvalues), while the GGN has rank at most ``NC``. Its Occam factor grows with width and depth where the exact
one does not, so the KFAC evidence preferred narrow, shallow networks that predict worse (``benchmarks/evidence.py``).

When the weights are fewer than the rows (a last layer on many labels) the same determinant is taken from the
dense ``P × P`` GGN instead. Above ``max_rows`` rows the items are split into consecutive blocks and the block
determinants multiplied: by Fischer's inequality ``log det M ≤ Σ_b log det M_bb``, so the evidence is then a lower
bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bayes_models.laplace import full
from bayes_models.laplace._common import Subnet, hessian_sqrt
from bayes_models.laplace.kfac import backprop

MAX_ROWS = 16_384
"""Rows (items × outputs) of one kernel block: a float64 ``MAX_ROWS²`` matrix is 2 GiB; its Cholesky ~20 s here."""


@dataclass(frozen=True)
class KernelLogDet:
    """``log det(I + Σ_l K_l / δ_l)`` and whether it is exact (one block) or an upper bound (several)."""

    value: float
    exact: bool
    blocks: int


def covered(subnet: Subnet) -> bool:
    """Whether the kernel form covers ``subnet``: every module owning its weights is an ``nn.Linear``."""
    return all(isinstance(module, nn.Linear) for _, module, _ in subnet.groups)


def layer_precisions(subnet: Subnet, precision: torch.Tensor) -> list[float] | None:
    """One prior precision per ``nn.Linear`` layer from a scalar or per-group precision; ``None`` when the
    precision varies within a layer (a per-weight prior) and the kernel form does not apply."""
    sizes = subnet.group_sizes
    if precision.numel() == 1:
        return [float(precision)] * len(sizes)
    if precision.numel() == len(sizes):
        return [float(p) for p in precision.reshape(-1)]
    if precision.numel() == subnet.n_params:
        per_layer = torch.split(precision.reshape(-1), sizes)
        if all(bool((p == p[0]).all()) for p in per_layer):
            return [float(p[0]) for p in per_layer]
    return None


@torch.no_grad()
def ggn_log_det(
    subnet: Subnet,
    x: torch.Tensor,
    theta: torch.Tensor,
    precisions: list[float],
    *,
    likelihood: str,
    scale: float = 1.0,
    max_rows: int = MAX_ROWS,
) -> KernelLogDet:
    """``log det(I + D^{-1/2} · scale · GGN · D^{-1/2})`` of ``subnet`` at weights ``theta`` on ``x[N, ...]``, in
    float64 (``precisions``: one per ``nn.Linear`` layer; ``scale = 1/σ²`` for regression)."""
    inp = subnet.inputs(x)
    out = subnet.forward(inp, theta)
    n, c = out.shape
    if subnet.n_params <= min(n * c, full.MAX_PARAMS):  # fewer weights than rows: the dense GGN is the cheaper
        return KernelLogDet(_weight_space_log_det(subnet, inp, out, precisions, likelihood, scale), True, 1)
    per_block = max(1, max_rows // c)
    starts = range(0, n, per_block)
    total = 0.0
    for start in starts:
        block = slice(start, start + per_block)
        total += _block_log_det(subnet, inp[block], out[block], theta, precisions, likelihood, scale)
    return KernelLogDet(value=total, exact=len(starts) == 1, blocks=len(starts))


def _block_log_det(
    subnet: Subnet,
    inp: torch.Tensor,
    out: torch.Tensor,
    theta: torch.Tensor,
    precisions: list[float],
    likelihood: str,
    scale: float,
) -> float:
    n, c = out.shape
    sqrt_hess = hessian_sqrt(out.double(), likelihood).to(out.dtype)
    kernel = torch.zeros(n * c, n * c, dtype=torch.float64, device=out.device)
    grid = kernel.view(n, c, n, c)
    for (a, g), delta in zip(backprop(subnet, inp, sqrt_hess, theta), precisions, strict=True):
        rows = g.transpose(0, 1).reshape(n * c, -1).double()  # [(n, k), O]
        a = a.double()
        grid.add_((rows @ rows.T).view(n, c, n, c).mul_((a @ a.T)[:, None, :, None]), alpha=scale / delta)
    kernel.diagonal().add_(1.0)
    chol, info = torch.linalg.cholesky_ex(kernel)
    if int(info) != 0:
        raise FloatingPointError(f"the {n * c}-row GGN kernel is not positive definite (Cholesky failed at {info})")
    value = 2.0 * float(chol.diagonal().log().sum())
    if not math.isfinite(value):
        raise FloatingPointError("the GGN kernel's log determinant is not finite")
    return value


def _weight_space_log_det(
    subnet: Subnet, inp: torch.Tensor, out: torch.Tensor, precisions: list[float], likelihood: str, scale: float
) -> float:
    """The same determinant from the dense ``[P, P]`` GGN: ``log det(scale · GGN + D) − log det D``."""
    ggn = full.accumulate(subnet, inp, hessian_sqrt(out, likelihood), None)["ggn"].double()
    sizes = torch.tensor(subnet.group_sizes, device=ggn.device)
    delta = torch.tensor(precisions, dtype=torch.float64, device=ggn.device).repeat_interleave(sizes)
    chol = torch.linalg.cholesky(scale * ggn + torch.diag(delta))
    return 2.0 * float(chol.diagonal().log().sum()) - float(delta.log().sum())
