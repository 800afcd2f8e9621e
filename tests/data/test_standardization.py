"""Data arriving later is loaded in the original import's feature space: recorded statistics, pool-only files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets as skd

from data import DatasetError, load_dataset
from data.datasets import standardize


def _iris_frame(rows: np.ndarray, *, split: bool) -> pd.DataFrame:
    bunch = skd.load_iris()
    frame = pd.DataFrame(bunch.data[rows], columns=[f"f{j}" for j in range(4)])
    frame.insert(0, "id", [f"iris-{r:03d}" for r in rows])
    frame["label"] = bunch.target_names[bunch.target[rows]]
    if split:
        frame["split"] = np.where(np.arange(len(rows)) % 4 == 0, "test", "train")
    return frame


def test_bundled_import_records_its_train_statistics():
    d = load_dataset("wine", split_seed=1)
    raw = skd.load_wine().data
    train = raw[[int(i.split("-")[1]) for i in d.ids_train]]
    mean, std = d.standardization
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (13,)
    np.testing.assert_array_equal(mean, train.mean(0))
    np.testing.assert_array_equal(std, train.std(0))
    np.testing.assert_array_equal(d.x_train, standardize(train, mean, std))


def test_a_later_file_is_standardised_with_the_given_statistics_not_its_own(tmp_path):
    original = load_dataset("iris", split_seed=0)
    rows = np.array([int(i.split("-")[1]) for i in original.ids_train[:7]])
    path = tmp_path / "more.csv"
    _iris_frame(rows, split=False).to_csv(path, index=False)
    later = load_dataset(
        path,
        label_column="label",
        id_column="id",
        test_fraction=0.0,
        allow_empty_test=True,
        standardization=original.standardization,
    )
    assert len(later.x_test) == 0 and later.x_test.shape == (0, 4) and len(later.x_train) == 7
    np.testing.assert_allclose(later.x_train, original.x_train[:7], rtol=0, atol=1e-6)
    for got, want in zip(later.standardization, original.standardization, strict=True):
        np.testing.assert_array_equal(got, want)
    own = load_dataset(path, label_column="label", id_column="id", test_fraction=0.0, allow_empty_test=True)
    assert not np.allclose(own.x_train, original.x_train[:7], atol=1e-3)  # its own statistics differ


def test_npz_may_leave_out_the_test_split_only_when_allowed(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3))
    path = tmp_path / "pool.npz"
    np.savez(path, x_train=x, y_train=np.array([0, -1, 1, -1, 0]), classes=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match=r"pool\.npz: missing key 'x_test'"):
        load_dataset(path)
    stats = (np.zeros(3), np.full(3, 2.0))
    d = load_dataset(path, allow_empty_test=True, standardization=stats)
    assert d.x_test.shape == (0, 3) and d.y_test.shape == (0,) and d.ids_test.shape == (0,)
    np.testing.assert_array_equal(d.y_train, [0, -1, 1, -1, 0])
    np.testing.assert_allclose(d.x_train, x / 2, rtol=1e-6)
    half = tmp_path / "half.npz"
    np.savez(half, x_train=x, x_test=x[:2])
    with pytest.raises(DatasetError, match=r"half\.npz: missing key 'y_test'"):
        load_dataset(half, allow_empty_test=True)


def test_tables_without_split_all_go_to_train_at_test_fraction_zero(tmp_path):
    path = tmp_path / "t.csv"
    _iris_frame(np.arange(20), split=False).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"test_fraction must be in \(0, 1\), got 0.0"):
        load_dataset(path, label_column="label", id_column="id", test_fraction=0.0)
    d = load_dataset(path, label_column="label", id_column="id", test_fraction=0.0, allow_empty_test=True)
    assert (len(d.x_train), len(d.x_test)) == (20, 0)
    with pytest.raises(DatasetError, match=r"test_fraction must be in \[0, 1\), got 1.0"):
        load_dataset(path, label_column="label", id_column="id", test_fraction=1.0, allow_empty_test=True)
    split_path = tmp_path / "s.csv"
    _iris_frame(np.arange(20), split=True).to_csv(split_path, index=False)
    d = load_dataset(split_path, label_column="label", id_column="id", test_fraction=0.0, allow_empty_test=True)
    assert (len(d.x_train), len(d.x_test)) == (15, 5)  # a split column still decides


def test_unusable_statistics_are_refused_with_the_source(tmp_path):
    path = tmp_path / "t.csv"
    _iris_frame(np.arange(8), split=True).to_csv(path, index=False)
    kwargs = {"label_column": "label", "id_column": "id"}
    with pytest.raises(
        DatasetError, match=r"t\.csv: items have features of shape \(4,\), the standardisation given is for \(3,\)"
    ):
        load_dataset(path, standardization=(np.zeros(3), np.ones(3)), **kwargs)
    with pytest.raises(DatasetError, match=r"finite std > 0"):
        load_dataset(path, standardization=(np.zeros(4), np.zeros(4)), **kwargs)
    images = tmp_path / "img.npz"
    np.savez(images, x_train=np.zeros((2, 4, 4), np.uint8), x_test=np.zeros((1, 4, 4), np.uint8), y_test=[0])
    with pytest.raises(DatasetError, match=r"img\.npz: images are scaled, not standardised"):
        load_dataset(images, standardization=(np.zeros(16), np.ones(16)))
    assert load_dataset(images).standardization is None


def test_standardize_matches_the_import_bit_for_bit():
    d = load_dataset("breast_cancer")
    raw = skd.load_breast_cancer().data
    rows = [int(i.split("-")[1]) for i in d.ids_test]
    np.testing.assert_array_equal(standardize(raw[rows], *d.standardization), d.x_test)
    assert Path(d.source).name == "breast_cancer"
