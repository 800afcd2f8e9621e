"""KFAC Laplace: one Kronecker-factored block per ``nn.Linear`` layer (Ritter et al. 2018; Martens & Grosse 2015).

For a layer ``s = W̃ ã`` (``W̃ = [W | b]``, ``ã = [a, 1]``) the GGN block is ``Σ_n G_n ⊗ ã_n ã_nᵀ`` with
``G_n = B_nᵀ Λ_n B_n``, ``B_n = ∂f_n/∂s_n``. KFAC replaces the sum of products by the product of means:

    ``GGN_l ≈ N · E[G] ⊗ E[ã ãᵀ] = (Σ_n G_n) ⊗ (Σ_n ã_n ã_nᵀ) / N``   (exact for N = 1 and for linear-Gaussian models)

Blocks store the sums ``G``, ``A`` and the count ``n``; the posterior precision of a block is
``H_l = scale · G ⊗ A / n + δ I`` (``scale = 1/σ²`` for regression). With the eigendecompositions
``G = Q_G diag(λ_G) Q_Gᵀ`` and ``A = Q_A diag(λ_A) Q_Aᵀ`` the prior is added exactly in the eigenbasis
(laplace-torch's ``KronDecomposed``): ``H_l = (Q_G ⊗ Q_A) diag(scale λ_G ⊗ λ_A / n + δ) (Q_G ⊗ Q_A)ᵀ``, so
``log det H_l = Σ_{ij} log(scale λ_G,i λ_A,j / n + δ)`` and sampling is a rotation of scaled white noise.

A belief update merges factor sums and counts: the result is the KFAC of the union of the data sets (Ritter et al.).
``G_n`` is built by back-propagating the ``C`` columns of ``L`` (``Λ_n = L Lᵀ``) to every layer output;
``B_n`` is never formed. Layers other than ``nn.Linear`` (e.g. ``Conv2d``) are not covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bayes_models.laplace._common import Subnet, aug_to_std, augment, eval_mode, per_group, standard_normal


@dataclass
class KronBlock:
    """``scale · G ⊗ A / n + δ I`` on ``W̃ = [W | b]`` flattened row-major; ``G[O, O]``, ``A[I, I]``, ``I = in + bias``.

    ``G`` and ``A`` are sums over the ``n`` examples seen (``n = 0``: a pure prior block, ``δ I``).
    """

    A: torch.Tensor
    G: torch.Tensor
    n: float
    delta: torch.Tensor
    scale: torch.Tensor | float = 1.0
    bias: bool = True
    _eig: tuple[torch.Tensor, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return self.G.shape[0] * self.A.shape[0]

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Q_G, Q_A, D[O, I])`` with ``D = scale λ_G λ_Aᵀ / n + δ``, the eigenvalues of the block."""
        if self._eig is None and self.n == 0:  # a pure prior block: no factors to decompose
            eye_g, eye_a = (torch.eye(m.shape[0], device=m.device, dtype=m.dtype) for m in (self.G, self.A))
            self._eig = (eye_g.new_zeros(eye_g.shape[0]), eye_g, eye_a.new_zeros(eye_a.shape[0]), eye_a)
        if self._eig is None:
            lam_g, q_g = _eigh(self.G)
            lam_a, q_a = _eigh(self.A)
            self._eig = (lam_g.clamp(min=0), q_g, lam_a.clamp(min=0), q_a)
        lam_g, q_g, lam_a, q_a = self._eig
        return q_g, q_a, self.scale * lam_g[:, None] * lam_a[None, :] / max(self.n, 1) + self.delta

    def to_matrix(self, v: torch.Tensor) -> torch.Tensor:
        """``[..., W.flatten(), b]`` → ``W̃[..., O, I]``."""
        o, i = self.G.shape[0], self.A.shape[0] - self.bias
        w = v[..., : o * i].reshape(*v.shape[:-1], o, i)
        return torch.cat([w, v[..., o * i :].unsqueeze(-1)], dim=-1) if self.bias else w

    def from_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """``W̃[..., O, I]`` → ``[..., W.flatten(), b]``."""
        if not self.bias:
            return w.flatten(-2)
        return torch.cat([w[..., :-1].flatten(-2), w[..., -1]], dim=-1)

    def to_dense(self) -> torch.Tensor:
        aug = self.scale * torch.kron(self.G, self.A) / max(self.n, 1)
        aug = aug + self.delta * torch.eye(self.size, device=aug.device, dtype=aug.dtype)
        order = torch.argsort(aug_to_std(self.G.shape[0], self.A.shape[0] - self.bias, self.bias, aug.device))
        return aug[order][:, order]


class KronPrecision:
    """Block-diagonal precision, one :class:`KronBlock` per ``nn.Linear`` layer, in parameter order."""

    structure = "kfac"

    def __init__(self, blocks: list[KronBlock]) -> None:
        self.blocks = blocks

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(v, [b.size for b in self.blocks], dim=-1))

    def logdet(self) -> torch.Tensor:
        """``Σ_l Σ_ij log(scale λ_G,i λ_A,j / n + δ)`` (``size · log δ`` for a pure prior block)."""
        return sum(b.size * torch.log(b.delta) if b.n == 0 else b.spectrum()[2].log().sum() for b in self.blocks)

    def quad(self, v: torch.Tensor) -> torch.Tensor:
        """``vᵀ H v = Σ_l scale/n · ⟨G W̃ A, W̃⟩ + δ ‖W̃‖²`` for ``v[..., P]``."""
        total = 0.0
        for b, part in zip(self.blocks, self._split(v), strict=True):
            w = b.to_matrix(part)
            if b.n > 0:
                total = total + b.scale * ((b.G @ w @ b.A) * w).sum((-2, -1)) / b.n
            total = total + b.delta * (w**2).sum((-2, -1))
        return total

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``[n, P]`` of ``N(0, H⁻¹)``: ``W̃ = Q_G (E ⊘ √D) Q_Aᵀ`` with ``E`` white noise."""
        parts = []
        for b in self.blocks:
            q_g, q_a, d = b.spectrum()
            eps = standard_normal((n, *d.shape), generator, d.device, d.dtype)
            parts.append(b.from_matrix(q_g @ (eps / d.sqrt()) @ q_a.T))
        return torch.cat(parts, dim=-1)

    def jsj(self, jac: torch.Tensor) -> torch.Tensor:
        """``J H⁻¹ Jᵀ`` ``[N, C, C]``: with ``T_c = Q_Gᵀ J̃_c Q_A``, ``Σ_ij T_c,ij T_d,ij / D_ij`` per block."""
        out = 0.0
        for b, part in zip(self.blocks, self._split(jac), strict=True):
            q_g, q_a, d = b.spectrum()
            t = q_g.T @ b.to_matrix(part) @ q_a
            out = out + torch.einsum("ncij,ndij->ncd", t / d, t)
        return out

    def to_dense(self) -> torch.Tensor:
        return torch.block_diag(*[b.to_dense() for b in self.blocks])

    def scaled(self, factor: float) -> KronPrecision:
        return KronPrecision(
            [KronBlock(b.A, b.G, b.n, b.delta * factor, b.scale * factor, b.bias) for b in self.blocks]
        )

    def state_dict(self) -> dict[str, Any]:
        blocks = [
            {
                "A": b.A.detach().clone(),
                "G": b.G.detach().clone(),
                "n": float(b.n),
                "delta": torch.as_tensor(b.delta, dtype=b.A.dtype).detach().clone(),
                "scale": torch.as_tensor(b.scale, dtype=b.A.dtype).detach().clone(),
                "bias": bool(b.bias),
            }
            for b in self.blocks
        ]
        return {"structure": self.structure, "blocks": blocks}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> KronPrecision:
        def load(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype)

        return cls(
            [
                KronBlock(load(b["A"]), load(b["G"]), b["n"], load(b["delta"]), load(b["scale"]), b["bias"])
                for b in state["blocks"]
            ]
        )


def linear_layers(subnet: Subnet) -> list[nn.Linear]:
    """The layers KFAC covers; any other module owning weights raises ``NotImplementedError``."""
    for name, module, _ in subnet.groups:
        if not isinstance(module, nn.Linear):
            raise NotImplementedError(
                f"KFAC is implemented for nn.Linear layers only; layer {name!r} is {type(module).__name__} "
                "(use structure='diag', or subset='last_layer')"
            )
    return [module for _, module, _ in subnet.groups]


def isotropic(subnet: Subnet, precision: torch.Tensor) -> KronPrecision:
    """Prior ``δ_l I`` per layer (zero Kronecker factors) from a scalar or per-layer precision."""
    deltas = per_group(precision, subnet.group_sizes)
    blocks = []
    for layer, delta in zip(linear_layers(subnet), deltas, strict=True):
        bias, like = layer.bias is not None, layer.weight
        a = like.new_zeros(layer.in_features + bias, layer.in_features + bias)
        blocks.append(KronBlock(a, like.new_zeros(layer.out_features, layer.out_features), 0.0, delta, 1.0, bias))
    return KronPrecision(blocks)


def backprop(
    subnet: Subnet, inp: torch.Tensor, columns: torch.Tensor | None, theta: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per ``nn.Linear`` layer: its augmented input ``ã[N, I]`` and ``g[K, N, O] = B_nᵀ v_{n,k}``, the output
    vectors ``v = columns[:, :, k]`` (``[N, C]``; identity columns when ``None``) back-propagated to the layer's
    output ``s`` (``B_n = ∂f_n/∂s_n``). One backward pass per column; no per-example Jacobian is formed."""
    layers = linear_layers(subnet)
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {id(m): [] for m in layers}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[id(module)].append((args[0], output))

    handles = [m.register_forward_hook(hook) for m in layers]
    weights = subnet.unflatten(subnet.vector() if theta is None else theta)
    params = {name: w.detach().clone().requires_grad_() for name, w in weights.items()}
    try:
        with torch.enable_grad(), eval_mode(subnet.module):
            out = functional_call(subnet.module, params, (inp,))
    finally:
        for handle in handles:
            handle.remove()
    for layer in layers:
        calls = seen[id(layer)]
        if len(calls) != 1 or calls[0][0].dim() != 2:
            raise NotImplementedError(
                f"KFAC needs each nn.Linear called once per forward on [N, features] inputs; {layer} was called "
                f"{len(calls)} times" + (f" on shape {tuple(calls[0][0].shape)}" if calls else "")
            )
    if columns is None:
        columns = torch.eye(out.shape[1], device=out.device, dtype=out.dtype).expand(*out.shape, out.shape[1])
    outputs = [seen[id(m)][0][1] for m in layers]
    grads = [out.new_zeros(columns.shape[2], *s.shape) for s in outputs]
    for k in range(columns.shape[2]):
        # vᵀ∂f/∂s as the gradient of the scalar Σ f ⊙ v (the same numbers): torch checks a ``grad_outputs`` tensor's
        # shape with torch.fx's symbolic shapes, whose first use imports sympy (0.5 s in every process that fits)
        with torch.enable_grad():  # a caller's no_grad would leave the product without a graph
            projected = (out * columns[:, :, k]).sum()
        column = torch.autograd.grad(projected, outputs, retain_graph=True, allow_unused=True)
        for g, gk in zip(grads, column, strict=True):
            if gk is not None:
                g[k] = gk.detach()
    inputs = [augment(seen[id(m)][0][0].detach(), m.bias is not None) for m in layers]
    return list(zip(inputs, grads, strict=True))


def accumulate(
    subnet: Subnet, inp: torch.Tensor, sqrt_hess: torch.Tensor, acc: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Add one batch's factor sums ``A_l = Σ ã ãᵀ``, ``G_l = Σ_n B_nᵀ Λ_n B_n = Σ_{n,k} g g ᵀ`` and count to ``acc``."""
    batch = [
        {"A": a.T @ a, "G": torch.einsum("kno,knp->op", g, g), "n": float(inp.shape[0])}
        for a, g in backprop(subnet, inp, sqrt_hess)
    ]
    if acc is None:
        return batch
    return [{key: old[key] + new[key] for key in ("A", "G", "n")} for old, new in zip(acc, batch, strict=True)]


def functional_covariance(
    subnet: Subnet, inp: torch.Tensor, precision: KronPrecision, theta: torch.Tensor
) -> torch.Tensor:
    """``J H⁻¹ Jᵀ`` ``[N, C, C]`` without Jacobians: a layer's ``J̃_c = B_c ãᵀ`` is rank one, so with
    ``u_c = Q_Gᵀ B_c`` and ``w = Q_Aᵀ ã`` its term is ``Σ_i u_ci u_di Σ_j w_j² / D_ij``."""
    cov = 0.0
    for (a, g), block in zip(backprop(subnet, inp, None, theta), precision.blocks, strict=True):
        q_g, q_a, d = block.spectrum()
        u = g.transpose(0, 1) @ q_g  # [N, C, O]
        cov = cov + torch.einsum("nci,ndi,ni->ncd", u, u, ((a @ q_a) ** 2) @ (1 / d).T)
    return cov


def posterior_precision(curvature: list[dict[str, Any]], prior: Any, scale: torch.Tensor) -> KronPrecision:
    """``H_l = scale · G_l ⊗ A_l / n_l + P0_l``: factors of a KFAC prior (an earlier posterior) are merged."""
    if not isinstance(prior, KronPrecision):
        raise ValueError(f"a KFAC Laplace needs a KFAC or isotropic prior precision, got structure {prior.structure!r}")
    blocks = []
    for c, p in zip(curvature, prior.blocks, strict=True):
        if c["A"].shape != p.A.shape or c["G"].shape != p.G.shape:
            raise ValueError(f"prior block {tuple(p.G.shape)}⊗{tuple(p.A.shape)} does not fit the layer")
        if p.n == 0:
            blocks.append(_data_block(c, p.delta, scale, p.bias))
        else:
            merged_g = p.scale * p.G + scale * c["G"]
            blocks.append(KronBlock(p.A + c["A"], merged_g, p.n + c["n"], p.delta, 1.0, p.bias))
    return KronPrecision(blocks)


def curvature_spectrum(
    curvature: list[dict[str, Any]], scale: torch.Tensor, group_sizes: list[int]
) -> list[torch.Tensor]:
    """Per layer (a block per group), the eigenvalues ``scale · λ_G,i λ_A,j / n`` of the data's curvature term,
    flattened: ``log det`` of the posterior under an isotropic prior is ``Σ_l Σ log(λ + δ_l)``."""
    return [_data_block(c, c["A"].new_zeros(()), scale).spectrum()[2].flatten() for c in curvature]


def _data_block(curvature: dict[str, Any], delta: torch.Tensor, scale: torch.Tensor, bias: bool = True) -> KronBlock:
    """A layer's data block under the prior ``δ I``, its factors' eigendecomposition computed once and kept in
    ``curvature`` for the next call (prior tuning asks for it at every ``δ``)."""
    block = KronBlock(curvature["A"], curvature["G"], curvature["n"], delta, scale, bias, curvature.get("_eig"))
    block.spectrum()
    curvature["_eig"] = block._eig
    return block


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition in float64, cast back: float32 ``eigh`` of rank-deficient factors (e.g. MNIST's always-zero
    border pixels) was seen to return NaN with multi-threaded MKL."""
    values, vectors = torch.linalg.eigh(matrix.detach().to(torch.float64))
    if not (torch.isfinite(values).all() and torch.isfinite(vectors).all()):
        raise FloatingPointError(f"eigh of a {tuple(matrix.shape)} Kronecker factor is not finite")
    return values.to(matrix.dtype), vectors.to(matrix.dtype)


def covers(network: nn.Module) -> bool:
    """Whether an all-weights KFAC covers ``network``: every module owning trainable weights is an ``nn.Linear``."""
    return all(isinstance(module, nn.Linear) for _, module, _ in Subnet(network, "all").groups)
