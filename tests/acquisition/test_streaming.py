"""Streaming pool scoring vs exhaustive scoring, subsampling, histograms, and the chunked pool readers."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from acquisition import bald, expected_entropy, get_acquisition
from acquisition.streaming import score_pool_streaming
from bayes_models import mlp
from bayes_models.fast_head import predictive_samples_consistent
from data.pool import PoolError, iter_pool_chunks

S, N, C = 6, 90, 4


def _table() -> torch.Tensor:
    """probs[S, N, C] with exact duplicates (tied scores) among the items."""
    x = np.random.default_rng(0).gamma(0.7, size=(S, N, C))
    x[:, 10:20] = x[:, 0:10]  # ten pairs of identical items
    x[:, 30] = x[:, 40] = x[:, 50]
    return torch.from_numpy(x / x.sum(-1, keepdims=True))


TABLE = _table()
IDS = np.array([f"item-{i:03d}" for i in np.random.default_rng(1).permutation(N)])  # id order != position order


class TablePredictor:
    """``predict_samples`` looking each item's samples up by the index stored in its feature; logs batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[int] = []

    def __call__(self, x_chunk: torch.Tensor, n: int) -> torch.Tensor:
        index = x_chunk[:, 0].long()
        self.batches.append(len(index))
        self.seen += index.tolist()
        return TABLE[:, index, :]


def _chunks(chunk_size: int, rows: np.ndarray | None = None):
    rows = np.arange(N) if rows is None else rows
    for start in range(0, len(rows), chunk_size):
        part = rows[start : start + chunk_size]
        yield IDS[part].tolist(), torch.tensor(part, dtype=torch.float32)[:, None]


def _exhaustive(scores: torch.Tensor, k: int) -> list[int]:
    values = scores.tolist()
    return sorted(range(N), key=lambda i: (-values[i], IDS[i]))[:k]


@pytest.mark.parametrize("acquisition", ["bald", "predictive_entropy", "expected_entropy", "margin"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, N])
def test_streaming_top_k_equals_sorting_exhaustive_scores(acquisition, chunk_size):
    predictor = TablePredictor()
    result = score_pool_streaming(predictor, _chunks(chunk_size), k=25, acquisition=acquisition, samples=S)
    scores = get_acquisition(acquisition)(TABLE)
    expected = _exhaustive(scores, 25)
    assert result.ids == IDS[expected].tolist()
    np.testing.assert_allclose(result.scores, scores[expected].numpy(), rtol=1e-12, atol=0)
    assert result.n_scored == result.n_read == N
    assert max(predictor.batches) <= chunk_size  # never more than a chunk at a time


def test_powerbald_from_the_streams_entropies_equals_its_score_function():
    """The stream derives PowerBALD from the BALD it computes anyway: the same keys, the same Gumbel draws."""
    result = score_pool_streaming(
        TablePredictor(),
        _chunks(N),
        k=N,
        acquisition="powerbald",
        samples=S,
        generator=torch.Generator().manual_seed(5),
    )
    keys = get_acquisition("powerbald")(TABLE, generator=torch.Generator().manual_seed(5))
    expected = _exhaustive(keys, N)
    assert result.ids == IDS[expected].tolist()
    np.testing.assert_allclose(result.scores, keys[expected].numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, N])
def test_kept_probs_are_the_top_items_samples(chunk_size):
    """``keep_probs`` returns each top item's own ``probs[S, :, C]``, aligned with the ids, whatever the chunking."""
    result = score_pool_streaming(
        TablePredictor(), _chunks(chunk_size), k=12, acquisition="bald", samples=S, keep_probs=True
    )
    position = {item: i for i, item in enumerate(IDS.tolist())}
    expected = TABLE[:, [position[item] for item in result.ids]]
    assert result.probs.shape == (S, 12, C)
    assert torch.equal(result.probs, expected.to(result.probs.dtype))
    assert score_pool_streaming(TablePredictor(), _chunks(7), k=12, acquisition="bald", samples=S).probs is None


def test_ties_are_ordered_by_id():
    result = score_pool_streaming(TablePredictor(), _chunks(5), k=N, acquisition="bald", samples=S)
    rank = {item: r for r, item in enumerate(result.ids)}
    for a, b in [(i, i + 10) for i in range(10)] + [(30, 40), (40, 50)]:
        first, second = sorted([IDS[a], IDS[b]])
        assert rank[first] < rank[second]


def test_histograms_count_every_scored_item():
    result = score_pool_streaming(TablePredictor(), _chunks(8), k=3, acquisition="bald", samples=S, bins=12)
    assert result.aleatoric_hist.sum() == result.epistemic_hist.sum() == result.n_scored == N
    np.testing.assert_allclose(result.bin_edges, np.linspace(0, np.log(C), 13))
    expected_a, _ = np.histogram(expected_entropy(TABLE).numpy(), bins=result.bin_edges)
    expected_e, _ = np.histogram(bald(TABLE).numpy(), bins=result.bin_edges)
    np.testing.assert_array_equal(result.aleatoric_hist, expected_a)
    np.testing.assert_array_equal(result.epistemic_hist, expected_e)


def test_subsample_is_seeded_and_of_size_m():
    def run(seed: int, chunk_size: int):
        predictor = TablePredictor()
        result = score_pool_streaming(
            predictor,
            _chunks(chunk_size),
            k=N,
            acquisition="bald",
            samples=S,
            generator=torch.Generator().manual_seed(seed),
            subsample=20,
            pool_size=N,
        )
        return result, predictor

    result, predictor = run(3, 7)
    assert result.n_scored == 20 and result.n_read == N and len(result.ids) == len(set(result.ids)) == 20
    assert sorted(IDS[predictor.seen].tolist()) == sorted(result.ids)  # the model saw only the subsample
    assert result.aleatoric_hist.sum() == 20
    same, _ = run(3, 64)  # chunking does not change the subsample
    other, _ = run(4, 7)
    assert same.ids == result.ids and set(other.ids) != set(result.ids)
    expected = [i for i in _exhaustive(bald(TABLE), N) if IDS[i] in set(result.ids)]
    assert result.ids == IDS[expected].tolist()


def test_empty_pool_gives_an_empty_result():
    predictor = TablePredictor()
    for subsample in (None, 5):
        result = score_pool_streaming(
            predictor, iter([]), k=3, acquisition="bald", samples=S, subsample=subsample, pool_size=0
        )
        assert (result.ids, result.n_scored, result.n_read) == ([], 0, 0)
        assert len(result.scores) == 0 and result.aleatoric_hist.sum() == result.epistemic_hist.sum() == 0
    assert predictor.batches == []


def test_errors():
    with pytest.raises(ValueError, match="subsample needs pool_size"):
        score_pool_streaming(TablePredictor(), _chunks(8), k=3, acquisition="bald", samples=S, subsample=5)
    with pytest.raises(ValueError, match="yielded 90 items but pool_size is 100"):
        score_pool_streaming(TablePredictor(), _chunks(8), k=3, acquisition="bald", samples=S, pool_size=100)
    with pytest.raises(ValueError, match=r"returned shape \(6, 8, 4\) for 8 items and S=5"):
        score_pool_streaming(TablePredictor(), _chunks(8), k=3, acquisition="bald", samples=5)
    with pytest.raises(ValueError, match="unknown acquisition function"):
        score_pool_streaming(TablePredictor(), _chunks(8), k=3, acquisition="nope", samples=S)


def test_end_to_end_with_a_network_and_a_float16_pool(tmp_path):
    torch.manual_seed(0)
    net = mlp(12, 3, hidden=16)
    features = np.random.default_rng(2).normal(size=(300, 12)).astype(np.float16)
    np.save(tmp_path / "pool.npy", features)
    ids = [f"p{i}" for i in range(300)]
    predict = functools.partial(predictive_samples_consistent, net, seed=5)
    whole = bald(predict(torch.from_numpy(features.astype(np.float32)), 10))
    expected = sorted(range(300), key=lambda i: (-whole[i].item(), ids[i]))[:15]
    for chunk_size in (32, 300):
        chunks = iter_pool_chunks(tmp_path / "pool.npy", None, ids, chunk_size)
        result = score_pool_streaming(predict, chunks, k=15, acquisition="bald", samples=10)
        assert result.ids == [ids[i] for i in expected]


# ---------------------------------------------------------------------------------------------- data.pool


def _images(n: int = 23) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(n, 1, 4, 5)).astype(np.float16)


def test_pool_reads_float16_npy_and_parquet_identically(tmp_path):
    x = _images()
    np.save(tmp_path / "x.npy", x)
    flat = x.reshape(len(x), -1)
    columns = {f"f{j}": pa.array(flat[:, j]) for j in range(flat.shape[1])}
    table = pa.table({"id": [f"r{i}" for i in range(len(x))], **columns})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=6)
    listed = pa.table({"features": pa.array(list(flat), type=pa.list_(pa.float16()))})
    pq.write_table(listed, tmp_path / "list.parquet", row_group_size=4)
    rows = np.array([22, 0, 1, 2, 3, 17, 5, 6, 7, 8, 21, 9])  # scattered and consecutive runs
    ids = [f"r{r}" for r in rows]
    expected = torch.from_numpy(x[rows].astype(np.float32))
    sources = {
        "memmap": (np.load(tmp_path / "x.npy", mmap_mode="r"), {}),
        "npy path": (tmp_path / "x.npy", {}),
        "parquet": (tmp_path / "x.parquet", {"columns": list(columns), "feature_shape": (1, 4, 5)}),
        "list parquet": (tmp_path / "list.parquet", {"feature_shape": (1, 4, 5)}),
    }
    for name, (source, options) in sources.items():
        chunks = list(iter_pool_chunks(source, rows, ids, 5, **options))
        assert [len(c[0]) for c in chunks] == [5, 5, 2], name
        assert all(c[1].dtype == torch.float32 and c[1].shape[1:] == (1, 4, 5) for c in chunks), name
        assert np.concatenate([c[0] for c in chunks]).tolist() == ids, name
        assert torch.equal(torch.cat([c[1] for c in chunks]), expected), name
    whole = list(iter_pool_chunks(tmp_path / "x.npy", None, [f"r{i}" for i in range(23)], 10, dtype=torch.float16))
    assert [c[1].dtype for c in whole] == [torch.float16] * 3
    assert np.array_equal(torch.cat([c[1] for c in whole]).numpy(), x)


def test_pool_errors(tmp_path):
    x = _images(4)
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "f": [1.0, 2.0, 3.0, 4.0]}), tmp_path / "t.parquet")
    with pytest.raises(PoolError, match="row 4 is out of range for 4 rows"):
        list(iter_pool_chunks(tmp_path / "x.npy", [0, 4], ["a", "b"], 2))
    with pytest.raises(PoolError, match="got 1 ids for 2 rows"):
        list(iter_pool_chunks(x, [0, 1], ["a"], 2))
    with pytest.raises(PoolError, match="feature column 'id' is not numeric"):
        list(iter_pool_chunks(tmp_path / "t.parquet", None, list("abcd"), 2))
    with pytest.raises(PoolError, match=r"expected a \.npy or \.parquet file"):
        list(iter_pool_chunks(tmp_path / "x.csv", None, list("abcd"), 2))
    with pytest.raises(PoolError, match="chunk_size must be a positive integer"):
        list(iter_pool_chunks(x, None, list("abcd"), 0))
