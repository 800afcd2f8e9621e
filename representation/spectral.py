r"""Laplacian-eigenmap features of the unlabelled pool (Belkin & Niyogi 2003), with a Nyström map for new items.

Pool-based active learning always holds the pool's inputs; their neighbourhood graph says which items are alike
before any label exists. This module turns that graph into a low-dimensional feature map that the Bayesian head
is trained on:

1. PCA of the flattened inputs to ``pca_dim`` components (denoises pixels, makes distances cheap);
2. the ``neighbors``-nearest-neighbour graph with self-tuning Gaussian weights
   :math:`w_{ij} = \exp(-d_{ij}^2 / (\sigma_i \sigma_j))`, :math:`\sigma_i` the distance to the i-th item's
   ``neighbors``-th neighbour (Zelnik-Manor & Perona 2004), symmetrised with ``max``;
3. the ``dim`` leading eigenvectors :math:`v` of :math:`A = D^{-1/2} W D^{-1/2}` (eigenvalues :math:`\lambda`),
   turned into random-walk eigenvectors :math:`\psi = D^{-1/2} v` (so that :math:`D^{-1} W \psi = \lambda\psi`);
4. each item's row :math:`\psi_i` scaled to unit length: the feature.

An item outside the fitted pool (the test split, data ingested later) is mapped by the Nyström extension of the
same eigen-equation, :math:`\psi(x) = \frac{1}{\lambda} \sum_j w(x, j) \psi_j / \sum_j w(x, j)` over its
``neighbors`` nearest pool items, then normalised like the rest. Its label never enters the fit, and neither do
its inputs: the map is fitted on the pool alone, so test metrics stay those of an inductive model.

torch + numpy + scipy only; the fitted state is plain arrays (``state_dict``), saved without pickles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.sparse.linalg import eigsh

DISTANCE_CHUNK = 2048


@dataclass(frozen=True)
class SpectralConfig:
    dim: int = 20
    """Eigenvectors kept (the feature's length), the constant one included."""
    neighbors: int = 10
    pca_dim: int = 50
    seed: int = 0
    dense_limit: int = 4000
    """Up to this many pool items the eigenproblem is solved densely (exact for a graph of several components,
    whose eigenvalue 1 repeats); beyond, by Lanczos (``eigsh``) on the sparse matrix."""


@dataclass(frozen=True)
class NeighborGraph:
    """``index[N, k]`` and squared distances ``sq_dist[N, k]`` of each query's ``k`` nearest reference items."""

    index: torch.Tensor
    sq_dist: torch.Tensor


def nearest_neighbors(
    query_N_D: torch.Tensor, reference_M_D: torch.Tensor, k: int, *, exclude_self: bool = False
) -> NeighborGraph:
    """Exact k-nearest neighbours by squared Euclidean distance, in chunks of :data:`DISTANCE_CHUNK` queries.

    ``exclude_self`` (query = reference) drops each item from its own list. Ties go to the lower index.
    """
    ref_sq = (reference_M_D * reference_M_D).sum(1)
    index = torch.empty(len(query_N_D), k, dtype=torch.long)
    sq_dist = torch.empty(len(query_N_D), k, dtype=reference_M_D.dtype)
    for start in range(0, len(query_N_D), DISTANCE_CHUNK):
        q = query_N_D[start : start + DISTANCE_CHUNK]
        d = (q * q).sum(1, keepdim=True) - 2 * q @ reference_M_D.T + ref_sq
        if exclude_self:
            rows = torch.arange(len(q))
            d[rows, rows + start] = float("inf")
        values, positions = torch.topk(d, k, dim=1, largest=False, sorted=True)
        index[start : start + len(q)] = positions
        sq_dist[start : start + len(q)] = values.clamp_min(0)
    return NeighborGraph(index, sq_dist)


class SpectralEmbedding:
    """Fit on the pool with :meth:`fit`, map any items with :meth:`transform`; :meth:`embedding` is the pool's."""

    def __init__(self, config: SpectralConfig = SpectralConfig()) -> None:
        self.config = config
        self.state: dict[str, np.ndarray] | None = None

    def fit(self, x: np.ndarray) -> SpectralEmbedding:
        """Fit on ``x[N, ...]`` (any shape per item; flattened). Needs ``N > dim`` and ``N > neighbors``."""
        c = self.config
        flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1))
        n = len(flat)
        if n <= max(c.dim, c.neighbors):
            raise ValueError(
                f"a spectral embedding of dim {c.dim} with {c.neighbors} neighbours needs more than "
                f"{max(c.dim, c.neighbors)} pool items; got {n}"
            )
        mean = flat.mean(0)
        q = min(c.pca_dim, n - 1, flat.shape[1])
        with torch.random.fork_rng(devices=[]):  # a seeded sketch that leaves the caller's RNG stream alone
            torch.manual_seed(c.seed)
            _, _, basis = torch.pca_lowrank(flat - mean, q=q, center=False, niter=4)
        z = (flat - mean) @ basis
        graph = nearest_neighbors(z, z, c.neighbors, exclude_self=True)
        sigma = graph.sq_dist[:, -1].sqrt().clamp_min(1e-12)
        weights = torch.exp(-graph.sq_dist / (sigma[:, None] * sigma[graph.index]))
        rows = np.repeat(np.arange(n), c.neighbors)
        w = sparse.csr_matrix((weights.double().numpy().ravel(), (rows, graph.index.numpy().ravel())), shape=(n, n))
        w = w.maximum(w.T)
        inv_sqrt_degree = 1.0 / np.sqrt(np.asarray(w.sum(1)).ravel())
        a = sparse.diags(inv_sqrt_degree) @ w @ sparse.diags(inv_sqrt_degree)
        if n <= c.dense_limit:
            eigenvalues, vectors = np.linalg.eigh(a.toarray())
            eigenvalues, vectors = eigenvalues[-c.dim :], vectors[:, -c.dim :]
        else:
            v0 = np.random.default_rng(c.seed).standard_normal(n)
            eigenvalues, vectors = eigsh(a, k=c.dim, which="LA", v0=v0, tol=1e-6, ncv=max(4 * c.dim, 64))
        order = np.argsort(-eigenvalues)
        eigenvalues, vectors = eigenvalues[order], vectors[:, order]
        psi = vectors * inv_sqrt_degree[:, None]
        psi *= np.sign(psi[np.abs(psi).argmax(0), np.arange(c.dim)])  # a fixed sign per eigenvector
        self.state = {
            "mean": mean.numpy(),
            "basis": basis.numpy(),
            "pool_pca": z.numpy(),
            "pool_sigma": sigma.numpy(),
            "psi": psi.astype(np.float32),
            "eigenvalues": eigenvalues.astype(np.float32),
        }
        return self

    def _fitted(self) -> dict[str, np.ndarray]:
        if self.state is None:
            raise RuntimeError("call fit(pool) first")
        return self.state

    def embedding(self) -> np.ndarray:
        """The pool's features ``[N, dim]`` (unit rows), in the order it was fitted."""
        return _unit_rows(self._fitted()["psi"])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Nyström features ``[M, dim]`` of new items ``x[M, ...]`` from their nearest pool items."""
        s = self._fitted()
        flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1))
        if flat.shape[1] != s["mean"].shape[0]:
            raise ValueError(f"items have {flat.shape[1]} values each; the embedding was fitted on {len(s['mean'])}")
        z = (flat - torch.from_numpy(s["mean"])) @ torch.from_numpy(s["basis"])
        pool = torch.from_numpy(s["pool_pca"])
        graph = nearest_neighbors(z, pool, min(self.config.neighbors, len(pool)))
        sigma = graph.sq_dist[:, -1].sqrt().clamp_min(1e-12)
        log_weights = -graph.sq_dist / (sigma[:, None] * torch.from_numpy(s["pool_sigma"])[graph.index])
        weights = torch.softmax(log_weights, dim=1)  # w(x, j) / sum_j w(x, j), safe when every w underflows
        psi = torch.from_numpy(s["psi"])
        features = torch.einsum("mk,mkd->md", weights, psi[graph.index]) / torch.from_numpy(s["eigenvalues"]).clamp_min(
            1e-3
        )
        return _unit_rows(features.numpy())

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self._fitted())

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {
            key: np.asarray(state[key]) for key in ("mean", "basis", "pool_pca", "pool_sigma", "psi", "eigenvalues")
        }


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)
