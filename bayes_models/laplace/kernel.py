"""The Laplace evidence's log determinant under the exact GGN, computed in the data's space (the network's
empirical NTK) instead of the weights'.

With the GGN's rows ``J̃ = L_nᵀ J_n`` (``Λ_n = L_n L_nᵀ``, one row per item and column of ``L_n``: ``NK`` rows,
``K = C − 1`` for the softmax, whose Hessian has that rank, see :func:`._common.hessian_sqrt`) and an
isotropic prior ``D`` (one precision per layer), Sylvester's determinant identity gives

    ``log det(GGN + D) − log det D = log det(I_P + D^{-1/2} J̃ᵀ J̃ D^{-1/2}) = log det(I_NK + Σ_l K_l / δ_l)``

with ``K_l = J̃_l J̃_lᵀ``. For a layer ``s = W̃ ã`` a row of ``J̃_l`` is ``g ⊗ ã`` (``g = B_nᵀ L_n e_k``, the
column back-propagated to the layer's output), so ``K_l[(n,k),(m,j)] = (ã_n·ã_m)(g_nk·g_mj)``: the ``NK × NK``
matrix costs ``O((NK)² · width)`` to build and ``O((NK)³)`` to factor, whatever the number of weights ``P``.

Why: KFAC's ``log det`` gives every one of the ``P`` weight directions curvature (products of the factors'
eigenvalues), while the GGN has rank at most ``NK``. Its Occam factor grows with width and depth where the exact
one does not, so the KFAC evidence preferred narrow, shallow networks that predict worse (``benchmarks/evidence.py``).

When the weights are fewer than the rows (a last layer on many labels) the same determinant is taken from the
dense ``P × P`` GGN instead. Above ``max_rows`` rows the items are split into consecutive blocks and the block
determinants multiplied: by Fischer's inequality ``log det M ≤ Σ_b log det M_bb``, so the evidence is then a lower
bound.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """``log det(I + Σ_l K_l / δ_l)`` over ``blocks`` blocks of items: exact for one, an upper bound for several.
    With ``conditioned`` items, ``value`` is the determinant's increment over theirs, ``log det(I + K) −
    log det(I + K_11)``, and ``whole`` the determinant itself (equal to ``value`` without)."""

    value: float
    whole: float
    blocks: int
    conditioned: int = 0

    @property
    def exact(self) -> bool:
        return self.blocks == 1


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
    conditioned: int = 0,
) -> KernelLogDet:
    """``log det(I + D^{-1/2} · scale · GGN · D^{-1/2})`` of ``subnet`` at weights ``theta`` on ``x[N, ...]``, in
    float64 (``precisions``: one per ``nn.Linear`` layer; ``scale = 1/σ²`` for regression).

    ``conditioned = m``: less the same determinant of the first ``m`` items alone, the Occam factor of the other
    items given those (:meth:`.core.Laplace.ggn_conditional_log_evidence`). The first ``m`` items' kernel is a leading
    block of the whole, so its Cholesky factor is the whole one's leading block: the increment is the sum of the
    other rows' log pivots, at no extra cost."""
    if not 0 <= conditioned < x.shape[0]:
        raise ValueError(f"conditioned must be in [0, {x.shape[0]}) items; got {conditioned}")
    inp = subnet.inputs(x)
    out = subnet.forward(inp, theta)
    n, c = out.shape[0], hessian_sqrt(out[:1], likelihood).shape[2]  # rows per item
    if subnet.n_params <= min(n * c, full.MAX_PARAMS):  # fewer weights than rows: the dense GGN is the cheaper
        whole, first = _weight_space_log_dets(subnet, inp, out, precisions, likelihood, scale, conditioned)
        return KernelLogDet(whole - first, whole, blocks=1, conditioned=conditioned)
    per_block = max(1, max_rows // c)
    starts = range(0, n, per_block)
    whole = increment = 0.0
    for start in starts:
        block = slice(start, start + per_block)
        log_pivots = _block_log_pivots(subnet, inp[block], out[block], theta, precisions, likelihood, scale)
        whole += float(log_pivots.sum())
        increment += float(log_pivots[max(0, conditioned - start) * c :].sum())
    return KernelLogDet(increment, whole, blocks=len(starts), conditioned=conditioned)


def _layer_kernels(
    subnet: Subnet,
    inp: torch.Tensor,
    out: torch.Tensor,
    theta: torch.Tensor,
    likelihood: str,
    dtype: torch.dtype = torch.float64,
) -> Iterator[torch.Tensor]:
    """Per ``nn.Linear`` layer, ``K_l[NK, NK]`` (rows ``(n, k)``) at weights ``theta``, built in ``dtype``."""
    sqrt_hess = hessian_sqrt(out.double(), likelihood).to(out.dtype)
    n, c = sqrt_hess.shape[0], sqrt_hess.shape[2]
    for a, g in backprop(subnet, inp, sqrt_hess, theta):
        rows = g.transpose(0, 1).reshape(n * c, -1).to(dtype)  # [(n, k), O]
        a = a.to(dtype)
        yield (rows @ rows.T).view(n, c, n, c).mul_((a @ a.T)[:, None, :, None]).view(n * c, n * c)


def _block_log_pivots(
    subnet: Subnet,
    inp: torch.Tensor,
    out: torch.Tensor,
    theta: torch.Tensor,
    precisions: list[float],
    likelihood: str,
    scale: float,
) -> torch.Tensor:
    """``2 log L_ii`` per row of the Cholesky factor ``L`` of ``I + K`` (rows ``(n, k)``): they sum to its log
    determinant, and the first ``r`` of them to its leading ``r × r`` block's."""
    kernel = None
    for layer, delta in zip(_layer_kernels(subnet, inp, out, theta, likelihood), precisions, strict=True):
        kernel = layer.mul_(scale / delta) if kernel is None else kernel.add_(layer, alpha=scale / delta)
    log_pivots = 2.0 * _cholesky_plus_identity(kernel).diagonal().log()
    if not bool(log_pivots.isfinite().all()):
        raise FloatingPointError("the GGN kernel's log determinant is not finite")
    return log_pivots


def _cholesky_plus_identity(kernel: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of ``I + K`` (in place on ``kernel``); a clear error where it is not positive definite."""
    kernel.diagonal().add_(1.0)
    chol, info = torch.linalg.cholesky_ex(kernel)
    if int(info) != 0:
        raise FloatingPointError(f"the {kernel.shape[0]}-row GGN kernel is not positive definite (Cholesky: {info})")
    return chol


class SubsetEvidence:
    """The prior-dependent part of the exact-GGN ``log Z`` as a function of the layers' ``log δ``, estimated from
    ``m`` of the ``n`` items drawn at random (``rows // C`` of them for ``C`` outputs, all of them when they fit;
    the kernel has ``K`` rows per item, ``C − 1`` for the softmax):

        ``−½ Σ_l δ_l ‖θ_l‖² − ½ [L_m + (n − m) · (L_m − L_h) / (m − h)]``

    with ``L_j = log det(I + Σ_l K_l^{(j)} · scale / δ_l)`` of the first ``j`` drawn items and ``h = m // 2``: the
    ``m`` items' log determinant plus, for each of the other ``n − m``, the mean increment of the drawn second half
    given the first (exact for ``m = n``). Why: an item's increment is the log determinant of its kernel given the
    items before it, which shrinks as items are added (in expectation over their random order), so the last
    increments estimate the missing items' better than the mean over all ``m`` does. That mean, ``(n / m) L_m``
    (each block of ``m`` items as if independent of the others; Fischer's inequality bounds the determinant by it),
    overstated the Occam factor: on MNIST with 1,000 labels it tuned priors 1.5–3.6× stronger than the exact
    evidence's and left ``log Z`` ~100 nats below the exact optimum. It tunes the prior during marginal-likelihood
    training at ``O((mK)³)`` per step, whatever the width.

    ``dtype``: of the kernels (built in it) and their factorisations. float32 (the default) halves the fixed
    point's cost on CPU, and the fixed point stops at 1% anyway; the checks against finite differences use
    float64."""

    def __init__(
        self,
        subnet: Subnet,
        x: torch.Tensor,
        *,
        likelihood: str,
        scale: float = 1.0,
        rows: int = 1024,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        theta = subnet.vector()
        n = x.shape[0]
        with torch.no_grad():
            n_outputs = subnet.forward(subnet.inputs(x[:1]), theta).shape[1]
            m = min(n, max(1, rows // n_outputs))
            chosen = torch.randperm(n, generator=generator)[:m].to(x.device)
            inp = subnet.inputs(x[chosen])
            out = subnet.forward(inp, theta)
            self.kernels = torch.stack(list(_layer_kernels(subnet, inp, out, theta, likelihood, dtype))) * scale
        self.sq_norms = torch.stack([(w.double() ** 2).sum() for w in torch.split(theta, subnet.group_sizes)])
        self.items, self.total = m, n
        half = m // 2
        self.half_rows = half * (self.kernels.shape[1] // m)
        """Kernel rows of the first ``h`` drawn items (a leading block: its Cholesky factor is the whole one's)."""
        per_item = (n - m) / (m - half) if m < n else 0.0
        self.whole_weight, self.half_weight = 1.0 + per_item, per_item
        """``L_m`` and ``L_h``'s coefficients in the estimate of ``L_n`` (1 and 0: all items, the exact one)."""
        rows = self.half_rows
        self.half_kernels = self.kernels[:, :rows, :rows].contiguous() if per_item else None
        """The half block's kernels, copied once for the traces (``None`` when exact: not needed)."""

    @property
    def exact(self) -> bool:
        return self.items == self.total

    @torch.no_grad()
    def value(self, log_delta: torch.Tensor) -> float:
        """The estimate at ``log δ`` alone (one Cholesky factorisation)."""
        delta = log_delta.double().exp().expand(self.kernels.shape[0])
        return self._value(delta, self._factor(delta))

    @torch.no_grad()
    def value_and_gradient(self, log_delta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The estimate at ``log δ`` (a scalar, or one per layer) and its gradient, in closed form:
        ``∂/∂ log δ_l = −½ δ_l ‖θ_l‖² + ½ γ_l``, ``γ_l`` the layer's effective number of parameters estimated like
        the determinant, from ``γ_l^{(j)} = tr((I + K^{(j)})⁻¹ K_l^{(j)}) · scale / δ_l`` of the first ``m`` and ``h``
        items (one Cholesky and two inverses). ``γ_l^{(j)}`` grows with the items (it is the layer's weights less
        ``δ_l`` times its posterior variance), so the estimate of ``γ_l`` is at least ``γ_l^{(m)} > 0``."""
        delta, value, gamma = self._terms(log_delta)
        gradient = -0.5 * delta * self.sq_norms + 0.5 * gamma
        return value, (gradient if log_delta.dim() else gradient.sum()).to(log_delta.dtype)

    @torch.no_grad()
    def maximise(self, log_delta: torch.Tensor, iterations: int, tolerance: float = 1e-2) -> tuple[torch.Tensor, float]:
        """MacKay's fixed point ``δ_l ← γ_l / ‖θ_l‖²`` (``Σ_l γ_l / Σ_l ‖θ_l‖²`` for a scalar ``δ``), where the
        gradient above is zero, half-stepped in ``log δ`` (the full step alternates between layers, seen on MNIST),
        from ``log δ`` until a full step would move ``log δ`` less than ``tolerance`` (1%) or for ``iterations``;
        returns the last ``log δ`` and the estimate there (from the factorisation the stopping test used). Seven
        iterations were enough where 30 full steps had not converged."""
        for _ in range(iterations):
            _, value, gamma = self._terms(log_delta)
            ratio = gamma / self.sq_norms if log_delta.dim() else gamma.sum() / self.sq_norms.sum()
            step = ratio.log().to(log_delta.dtype) - log_delta
            if float(step.abs().max()) < tolerance:
                return log_delta, value
            log_delta = log_delta + 0.5 * step
        return log_delta, self.value(log_delta)

    def _factor(self, delta: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor of ``I + Σ_l K_l / δ_l``."""
        weights = (1.0 / delta).to(self.kernels.dtype)
        return _cholesky_plus_identity((weights @ self.kernels.flatten(1)).view(self.kernels.shape[1:]))

    def _value(self, delta: torch.Tensor, chol: torch.Tensor) -> float:
        log_pivots = 2.0 * chol.diagonal().log().double()  # L_j: the sum of the first j items' rows
        log_det = self.whole_weight * log_pivots.sum() - self.half_weight * log_pivots[: self.half_rows].sum()
        return float(-0.5 * (delta * self.sq_norms).sum() - 0.5 * log_det)

    def _terms(self, log_delta: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """``(δ per layer, the estimate, γ per layer)`` at ``log δ``."""
        delta = log_delta.double().exp().expand(self.kernels.shape[0])
        chol = self._factor(delta)
        traces = self.whole_weight * self._traces(self.kernels, chol)  # tr(A⁻¹ K_l)
        if self.half_kernels is not None:
            rows = self.half_rows
            traces -= self.half_weight * self._traces(self.half_kernels, chol[:rows, :rows])
        return delta, self._value(delta, chol), traces / delta

    @staticmethod
    def _traces(kernels: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
        """``tr(A⁻¹ K_l)`` per layer, ``A = chol cholᵀ``."""
        return (kernels.reshape(kernels.shape[0], -1) @ torch.cholesky_inverse(chol).flatten()).double()


def _weight_space_log_dets(
    subnet: Subnet,
    inp: torch.Tensor,
    out: torch.Tensor,
    precisions: list[float],
    likelihood: str,
    scale: float,
    conditioned: int,
) -> tuple[float, float]:
    """The same determinants from the dense ``[P, P]`` GGN: ``log det(scale · GGN + D) − log det D`` of all items
    and of the first ``conditioned`` (0 for none)."""
    sqrt_hess = hessian_sqrt(out, likelihood)
    sizes = torch.tensor(subnet.group_sizes, device=inp.device)
    delta = torch.tensor(precisions, dtype=torch.float64, device=inp.device).repeat_interleave(sizes)

    def log_det_posterior(items: slice) -> float:
        ggn = full.accumulate(subnet, inp[items], sqrt_hess[items], None)["ggn"].double()
        return 2.0 * float(torch.linalg.cholesky(scale * ggn + torch.diag(delta)).diagonal().log().sum())

    prior = float(delta.log().sum())
    first = log_det_posterior(slice(0, conditioned)) - prior if conditioned else 0.0
    return log_det_posterior(slice(None)) - prior, first
