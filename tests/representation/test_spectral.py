"""Laplacian eigenmaps against a dense float64 reference, and the Nyström map's behaviour on new items."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from representation import SpectralConfig, SpectralEmbedding, nearest_neighbors


def _blobs(n_per: int, centers: np.ndarray, seed: int, scale: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + scale * rng.standard_normal((n_per, centers.shape[1])) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(len(centers)), n_per)


def _dense_reference(z: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and random-walk eigenvectors by brute force: full distance matrix, argsort, dense eigh."""
    d2 = cdist(z, z, "sqeuclidean")
    np.fill_diagonal(d2, np.inf)
    neighbours = np.argsort(d2, axis=1, kind="stable")[:, :k]
    sigma = np.sqrt(np.take_along_axis(d2, neighbours[:, -1:], axis=1))[:, 0]
    w = np.zeros_like(d2)
    for i, row in enumerate(neighbours):
        w[i, row] = np.exp(-d2[i, row] / (sigma[i] * sigma[row]))
    w = np.maximum(w, w.T)
    inv_sqrt = 1 / np.sqrt(w.sum(1))
    values, vectors = np.linalg.eigh(inv_sqrt[:, None] * w * inv_sqrt[None, :])
    return values[::-1][:dim], (vectors[:, ::-1][:, :dim] * inv_sqrt[:, None])


def test_eigenpairs_match_a_dense_reference():
    # PCA to the full input dimension is a rotation, so the graph is the raw points' graph.
    x, _ = _blobs(60, np.array([[0, 0, 0, 0], [2, 0, 1, 0]]), seed=0, scale=0.8)
    config = SpectralConfig(dim=5, neighbors=8, pca_dim=4)
    model = SpectralEmbedding(config).fit(x)
    values, psi = _dense_reference(x.astype(np.float64) - x.mean(0), config.neighbors, config.dim)
    np.testing.assert_allclose(model.state["eigenvalues"], values, atol=1e-5)

    # Same subspace of random-walk eigenvectors (sign- and rotation-free comparison, D-orthonormalised).
    def projector(v):
        q, _ = np.linalg.qr(v)
        return q @ q.T

    np.testing.assert_allclose(projector(model.state["psi"].astype(np.float64)), projector(psi), atol=1e-4)


def test_sparse_lanczos_path_matches_the_dense_path():
    x, _ = _blobs(150, np.array([[0, 0, 0, 0, 0], [1.5, 0, 0, 1, 0]]), seed=7, scale=0.8)
    dense = SpectralEmbedding(SpectralConfig(dim=6, neighbors=10, pca_dim=5)).fit(x)
    lanczos = SpectralEmbedding(SpectralConfig(dim=6, neighbors=10, pca_dim=5, dense_limit=100)).fit(x)
    np.testing.assert_allclose(lanczos.state["eigenvalues"], dense.state["eigenvalues"], atol=1e-5)
    np.testing.assert_allclose(np.abs(lanczos.embedding() * dense.embedding()).sum(1), 1.0, atol=1e-3)


def test_nearest_neighbors_agree_with_brute_force():
    rng = np.random.default_rng(1)
    import torch

    ref = torch.from_numpy(rng.standard_normal((300, 7)).astype(np.float32))
    query = torch.from_numpy(rng.standard_normal((50, 7)).astype(np.float32))
    graph = nearest_neighbors(query, ref, 5)
    d2 = cdist(query.numpy(), ref.numpy(), "sqeuclidean")
    expected = np.argsort(d2, axis=1)[:, :5]
    np.testing.assert_array_equal(graph.index.numpy(), expected)
    np.testing.assert_allclose(graph.sq_dist.numpy(), np.take_along_axis(d2, expected, 1), rtol=1e-4, atol=1e-4)


def test_one_label_per_cluster_generalises_through_the_nystrom_map():
    # Four separate clusters: the four leading eigenvectors (eigenvalue 1, repeated) are the cluster indicators,
    # so every pool item of a cluster gets the same unit feature, orthogonal to the other clusters'.
    centers = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]], dtype=np.float32)
    pool, pool_y = _blobs(80, centers, seed=2)
    test, test_y = _blobs(25, centers, seed=3)
    model = SpectralEmbedding(SpectralConfig(dim=4, neighbors=8, pca_dim=3)).fit(pool)
    np.testing.assert_allclose(model.state["eigenvalues"], 1.0, atol=1e-6)
    features, mapped = model.embedding(), model.transform(test)
    assert features.shape == (320, 4) and mapped.shape == (100, 4)
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)
    # One labelled pool item per cluster classifies every unseen test item (cosine 1 to its own, 0 to others).
    labelled = [0, 80, 160, 240]
    cosine = mapped @ features[labelled].T
    assert (pool_y[labelled][cosine.argmax(1)] == test_y).all()
    np.testing.assert_allclose(cosine.max(1), 1.0, atol=1e-4)


def test_a_slightly_moved_pool_item_keeps_its_feature():
    x, _ = _blobs(100, np.array([[0, 0, 0, 0], [3, 3, 0, 0]]), seed=4, scale=1.0)
    model = SpectralEmbedding(SpectralConfig(dim=4, neighbors=10, pca_dim=4)).fit(x)
    moved = x + 1e-3 * np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    cosine = (model.transform(moved) * model.embedding()).sum(1)
    assert np.median(cosine) > 0.98


def test_state_round_trip_and_errors():
    x, _ = _blobs(40, np.array([[0, 0], [4, 4]]), seed=6)
    model = SpectralEmbedding(SpectralConfig(dim=3, neighbors=5, pca_dim=2)).fit(x)
    copy = SpectralEmbedding(model.config)
    copy.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    np.testing.assert_array_equal(copy.transform(x[:7]), model.transform(x[:7]))
    with pytest.raises(ValueError, match="fitted on 2"):
        model.transform(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="needs more than 5 pool items; got 4"):
        SpectralEmbedding(SpectralConfig(dim=3, neighbors=5)).fit(x[:4])
    with pytest.raises(RuntimeError, match="fit"):
        SpectralEmbedding().transform(x)
