"""Dataset import: each format gives model-ready arrays; each bad file names the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets as skd

from data import Dataset, DatasetError, load_dataset

REPO = Path(__file__).resolve().parents[2]
MNIST_CANDIDATES = (Path("/work/shared/data/mnist.npz"), REPO.parent / "shared" / "data" / "mnist.npz")


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(["cat", "dog"], dtype=object)[np.arange(n) % 2]
    labels[[3, 10]] = None  # unlabeled rows
    return pd.DataFrame(
        {
            "item": [f"it{i:03d}" for i in range(n)],
            "f1": rng.normal(5.0, 2.0, n),
            "f2": rng.integers(0, 10, n),
            "const": np.ones(n),
            "animal": labels,
        }
    )


def _assert_standardised(d: Dataset, raw_train: np.ndarray, raw_test: np.ndarray) -> None:
    mean, std = raw_train.mean(0), raw_train.std(0)
    std[std == 0] = 1
    np.testing.assert_allclose(d.x_train, (raw_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (raw_test - mean) / std, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ bundled


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "iris"])
def test_bundled_sets_are_split_stratified_and_standardised_with_train_stats(name):
    d = load_dataset(name, test_fraction=0.25, split_seed=3)
    bunch = getattr(skd, f"load_{name}")()
    n, dim = bunch.data.shape
    assert (d.name, d.source, d.is_image, d.feature_shape) == (name, name, False, (dim,))
    assert d.classes == tuple(str(c) for c in bunch.target_names) and d.n_classes == len(bunch.target_names)
    assert d.x_train.dtype == d.x_test.dtype == np.float32
    assert d.y_train.dtype == d.y_test.dtype == np.int64 and d.ids_train.dtype.kind == "U"
    assert len(d.x_train) + len(d.x_test) == n
    rows_train = np.array([int(i.split("-")[1]) for i in d.ids_train])
    rows_test = np.array([int(i.split("-")[1]) for i in d.ids_test])
    assert sorted([*rows_train, *rows_test]) == list(range(n))  # ids name the source row
    np.testing.assert_array_equal(d.y_train, bunch.target[rows_train])
    np.testing.assert_array_equal(d.y_test, bunch.target[rows_test])
    _assert_standardised(d, bunch.data[rows_train], bunch.data[rows_test])
    for c in range(d.n_classes):  # stratified: each class sends round(n_c / 4) rows to test
        n_c = int((bunch.target == c).sum())
        assert (d.y_test == c).sum() == int(np.floor(n_c * 0.25 + 0.5))


def test_a_bundled_set_is_read_from_the_user_cache_without_importing_scikit_learn(tmp_path, monkeypatch, fresh_python):
    """The first import of a bundled set keeps scikit-learn's arrays in the user's cache; a new process then reads
    them without importing scikit-learn (1.3 s here), and gets what scikit-learn gives. A damaged copy is made
    again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = load_dataset("wine")
    cached = next((tmp_path / "beliefloop").glob("wine-scikit-learn-*.npz"))
    code = (
        "import sys\nfrom data import load_dataset\nd = load_dataset('wine')\n"
        "print('sklearn' in sys.modules, list(d.feature_names), d.classes, float(d.x_train.sum()))"
    )
    out = fresh_python(code)
    bunch = skd.load_wine()
    expected = [str(n) for n in bunch.feature_names], tuple(str(c) for c in bunch.target_names)
    imported, loaded = out.strip().split(" ", 1)
    assert imported == "False"  # scikit-learn not imported
    assert loaded == f"{expected[0]} {expected[1]} {float(first.x_train.sum())}"
    cached.write_bytes(b"damaged")
    again = load_dataset("wine")
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert again.feature_names == first.feature_names and np.load(cached)["data"].shape == bunch.data.shape


def test_bundled_split_is_deterministic_and_ids_are_stable_across_splits():
    a, b = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(a.ids_train, b.ids_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.ids_train[0] == "row-0000" and all(len(i) == 8 for i in a.ids_train)  # 1797 rows: 4 digits
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(a.ids_test, other.ids_test)
    half = load_dataset("digits", test_fraction=0.5)
    raw = skd.load_digits().target
    for d in (a, other, half):  # an id always denotes the same source row, whatever the split
        np.testing.assert_array_equal(d.y_test, raw[[int(i[4:]) for i in d.ids_test]])


def test_unknown_bundled_name():
    with pytest.raises(DatasetError, match=r"mnist_fashion: unknown dataset name.*digits.*\.npz"):
        load_dataset("mnist_fashion")


def test_bad_test_fraction():
    with pytest.raises(DatasetError, match="test_fraction"):
        load_dataset("iris", test_fraction=1.0)


# ------------------------------------------------------------------------------------------ npz


def test_npz_uint8_images_get_a_channel_and_are_scaled(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 5, 6), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    y_train = np.array([3, 7, -1, 3, 7, -1, 3, 7, 3, 7, 3, 7])
    path = _npz(tmp_path / "imgs.npz", x_train=x_train, x_test=x_test, y_train=y_train, y_test=[7, 3, 3, 7])
    d = load_dataset(path)
    assert (d.name, d.source, d.is_image, d.feature_shape) == ("imgs", str(path.resolve()), True, (1, 5, 6))
    assert d.x_train.dtype == np.float32 and d.x_train.shape == (12, 1, 5, 6)
    np.testing.assert_allclose(d.x_train[:, 0], x_train / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x_test[:, 0], x_test / 255.0, rtol=1e-6)
    assert d.classes == ("3", "7")  # sorted known labels, remapped to indices
    np.testing.assert_array_equal(d.y_train, [0, 1, -1, 0, 1, -1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(d.y_test, [1, 0, 0, 1])
    assert d.ids_train[0] == "train-00" and d.ids_test[-1] == "test-3"
    again = load_dataset(path)
    np.testing.assert_array_equal(again.ids_train, d.ids_train)
    np.testing.assert_array_equal(again.x_train, d.x_train)


def test_npz_channels_last_images_move_channels_first(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (6, 8, 9, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    path = _npz(tmp_path / "rgb.npz", x_train=x_train, x_test=x_test, y_test=[0, 1])
    d = load_dataset(path)
    assert d.feature_shape == (3, 8, 9) and d.x_train.flags.c_contiguous
    np.testing.assert_allclose(d.x_train[4, 2, 7, 1], x_train[4, 7, 1, 2] / 255.0, rtol=1e-6)


def test_npz_float_channels_first_images_are_kept_as_given(tmp_path):
    x_train = np.random.default_rng(2).normal(size=(5, 1, 4, 4))
    path = _npz(tmp_path / "f.npz", x_train=x_train, x_test=x_train[:2], y_test=[1, 0])
    d = load_dataset(path)
    np.testing.assert_array_equal(d.x_train, x_train.astype(np.float32))


def test_npz_without_y_train_is_an_unlabeled_pool_with_given_ids_and_classes(tmp_path):
    x = np.random.default_rng(3).normal(3.0, 2.0, (10, 4))
    path = _npz(
        tmp_path / "vec.npz",
        x_train=x[:7],
        x_test=x[7:],
        y_test=np.array(["b", "a", "b"]),
        ids_train=np.array([f"u{i}" for i in range(7)]),
        ids_test=np.array(["t0", "t1", "t2"]),
        classes=np.array(["b", "a", "c"]),
    )
    d = load_dataset(path)
    assert d.classes == ("b", "a", "c") and not d.is_image and d.feature_shape == (4,)
    np.testing.assert_array_equal(d.y_train, np.full(7, -1))
    np.testing.assert_array_equal(d.y_test, [0, 1, 0])
    assert list(d.ids_test) == ["t0", "t1", "t2"] and d.ids_train[6] == "u6"
    _assert_standardised(d, x[:7], x[7:])


def test_npz_integer_labels_index_given_classes(tmp_path):
    x = np.zeros((4, 2))
    path = _npz(tmp_path / "c.npz", x_train=x, x_test=x, y_test=[0, 2, 1, 2], classes=np.array(["x", "y", "z"]))
    assert list(load_dataset(path).y_test) == [0, 2, 1, 2]
    bad = _npz(tmp_path / "c3.npz", x_train=x, x_test=x, y_test=[0, 3, 1, 2], classes=np.array(["x", "y", "z"]))
    with pytest.raises(DatasetError, match=r"c3\.npz: y_test row 1 is 3, expected a class index 0\.\.2"):
        load_dataset(bad)


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        (
            {"x_train": np.zeros((3, 2)), "y_test": [0]},
            r"missing key 'x_test'; found keys \['x_train', 'y_test'\]",
        ),
        (
            {"x_train": np.zeros((3, 2)), "y_train": [0, 1], "x_test": np.zeros((1, 2)), "y_test": [0]},
            r"length mismatch, x_train has 3 rows but y_train has shape \(2,\)",
        ),
        (
            {"x_train": np.zeros((3, 2)), "x_test": np.zeros((2, 2)), "y_test": [0, 1, 1]},
            r"length mismatch, x_test has 2 rows but y_test has shape \(3,\)",
        ),
        (
            {"x_train": np.zeros((3, 2)), "x_test": np.zeros((1, 3)), "y_test": [0]},
            r"feature shape differs, x_train \(2,\) vs x_test \(3,\)",
        ),
        (
            {"x_train": np.array([[0, 1], [1, np.nan], [2, 2]]), "x_test": np.zeros((1, 2)), "y_test": [0]},
            r"NaN/inf in x_train row 1 \(id 'train-1'\)",
        ),
        (
            {"x_train": np.zeros((2, 2)), "x_test": np.zeros((3, 2)), "y_test": [0, -1, 1]},
            r"test labels must all be known, test row 1 \(id 'test-1'\) is unlabeled",
        ),
        (
            {
                "x_train": np.zeros((2, 2)),
                "x_test": np.zeros((1, 2)),
                "y_test": [0],
                "ids_test": ["a"],
                "ids_train": ["b", "a"],
            },
            r"duplicate item id 'a'",
        ),
        (
            {"x_train": np.zeros((2, 2)), "x_test": np.zeros((1, 2)), "y_test": [0.5]},
            r"y_test row 0 is 0\.5, expected an integer class",
        ),
        (
            {"x_train": np.zeros((2, 2)), "x_test": np.zeros((1, 2)), "y_test": ["z"], "classes": ["a", "b"]},
            r"y_test row 0 is 'z', not one of \['a', 'b'\]",
        ),
        (
            {"x_train": np.zeros((2, 5, 5, 5)), "x_test": np.zeros((1, 5, 5, 5)), "y_test": [0]},
            r"x_train has shape \(2, 5, 5, 5\); expected",
        ),
        (
            {"x_train": np.zeros((2, 2)), "x_test": np.zeros((1, 2)), "y_test": [0], "y_trian": [0, 1]},
            r"unexpected keys \['y_trian'\]; known keys are",
        ),
        (  # found by benchmarks/fuzz.py: was a TypeError
            {"x_train": np.float32(0), "x_test": np.zeros((0, 1)), "y_test": np.zeros(0, dtype=np.int64)},
            r"x_train must be \[N, D\] vectors or \[N, ...\] images, got a scalar",
        ),
    ],
    ids=[
        "missing-key",
        "length-train",
        "length-test",
        "shape",
        "nan-row",
        "unlabeled-test",
        "duplicate-id",
        "float-label",
        "unknown-class",
        "bad-image-shape",
        "misspelt-key",
        "scalar-features",
    ],
)
def test_bad_npz_names_file_and_problem(tmp_path, arrays, pattern):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=re.escape(f"{path.resolve()}: ") + pattern):
        load_dataset(path)


def test_npz_with_pickled_object_arrays_is_refused(tmp_path):
    path = _npz(
        tmp_path / "obj.npz",
        x_train=np.zeros((2, 2)),
        x_test=np.zeros((1, 2)),
        y_test=np.array([0], dtype=object),
    )
    with pytest.raises(DatasetError, match=r"obj\.npz: cannot read as \.npz without pickles"):
        load_dataset(path)


@pytest.mark.parametrize("bare_npy", [False, True], ids=["text", "bare-npy"])
def test_npz_not_a_zip(tmp_path, bare_npy):
    path = tmp_path / "junk.npz"
    with path.open("wb") as handle:
        if bare_npy:
            np.save(handle, np.zeros(3))
        else:
            handle.write(b"hello")
    with pytest.raises(DatasetError, match=r"junk\.npz: not a valid \.npz file") as info:
        load_dataset(path)
    assert "pickle" not in str(info.value)


def test_column_options_are_rejected_for_npz(tmp_path):
    path = _npz(tmp_path / "v.npz", x_train=np.zeros((2, 2)), x_test=np.zeros((1, 2)), y_test=[0])
    with pytest.raises(DatasetError, match="CSV and Parquet tables only"):
        load_dataset(path, label_column="y")


def test_mnist_npz_imports_as_images():
    path = next((p for p in MNIST_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip(f"shared MNIST file absent (looked in {[str(p) for p in MNIST_CANDIDATES]})")
    d = load_dataset(path)
    assert d.name == "mnist" and d.is_image and d.feature_shape == (1, 28, 28)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.x_train.min() >= 0.0 and d.x_train.max() == 1.0
    assert d.classes == tuple(str(i) for i in range(10)) and (d.y_train >= 0).all()
    assert d.ids_train[59999] == "train-59999" and d.ids_test[0] == "test-0000"


# ------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_table_import_with_ids_unlabeled_rows_and_stratified_split(tmp_path, suffix):
    frame = _table()
    path = tmp_path / f"animals{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    d = load_dataset(path, label_column="animal", id_column="item", test_fraction=0.25, split_seed=5)
    assert d.name == "animals" and d.classes == ("cat", "dog") and d.feature_shape == (3,)
    assert d.feature_names == d.names == ("f1", "f2", "const")  # the columns' names, in the file's order
    assert {"it003", "it010"} <= set(d.ids_train)  # unlabeled rows stay in the train pool
    assert (d.y_train == -1).sum() == 2 and (d.y_test >= 0).all()
    assert (d.y_test == 0).sum() == (d.y_test == 1).sum() == 5  # 19 labeled per class: round(19 / 4)
    rows_train = [int(i[2:]) for i in d.ids_train]
    rows_test = [int(i[2:]) for i in d.ids_test]
    raw = frame[["f1", "f2", "const"]].to_numpy(float)
    _assert_standardised(d, raw[rows_train], raw[rows_test])
    expected = frame["animal"].map({"cat": 0, "dog": 1}).fillna(-1).to_numpy()
    np.testing.assert_array_equal(d.y_train, expected[rows_train])
    again = load_dataset(path, label_column="animal", id_column="item", test_fraction=0.25, split_seed=5)
    np.testing.assert_array_equal(again.ids_test, d.ids_test)


def test_csv_default_ids_and_split_column(tmp_path):
    frame = _table(12).drop(columns="item")
    frame["split"] = ["train"] * 9 + ["test", " TEST", "test"]
    frame.loc[10, "animal"] = "cat"  # row 3 stays unlabeled, in train
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    d = load_dataset(path, label_column="animal")
    assert list(d.ids_test) == ["row-09", "row-10", "row-11"] and d.ids_train[0] == "row-00"
    assert d.feature_shape == (3,)  # 'split' is not a feature
    assert d.y_train[3] == -1 and d.ids_train[3] == "row-03"


def test_parquet_nullable_integer_labels_keep_numeric_order(tmp_path):
    path = tmp_path / "nullable.parquet"
    labels = pd.array([10, 2, None, 10, 2, 10, 2, 2], dtype="Int64")
    pd.DataFrame({"x": np.arange(8.0), "y": labels}).to_parquet(path)
    d = load_dataset(path, label_column="y")
    assert d.classes == ("2", "10") and (d.y_train == -1).sum() == 1


def test_csv_integer_labels_with_blanks(tmp_path):
    path = tmp_path / "ints.csv"
    path.write_text("x,y\n1,10\n2,2\n3,\n4,10\n5,2\n6,10\n7,2\n8,2\n")
    d = load_dataset(path, label_column="y")
    assert d.classes == ("2", "10")  # numeric order, not string order
    assert (d.y_train == -1).sum() == 1


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        (
            "a,b,y\n1,2,c\n",
            {},
            r"no label column named \(label_column: the CLI's --label-column, or dataset.label_column\); "
            r"columns are \['a', 'b', 'y'\]",
        ),
        ("a,b,y\n1,2,c\n", {"label_column": "label"}, r"label column 'label' not found; columns are"),
        ("a,b,y\n1,2,c\n", {"label_column": "y", "id_column": "id"}, r"id column 'id' not found"),
        (
            "a,b,y\n1,2,c\n1,x,d\n",
            {"label_column": "y"},
            r"feature column 'b' holds numbers, but row 1 \(id 'row-1'\) holds 'x'",
        ),
        ("a,b,y\n1,2,c\n1,inf,d\n", {"label_column": "y"}, r"inf in row 1 \(id 'row-1'\), column 'b'"),
        ("a,b,y\n1,2,c\n1,3,d\n", {"label_column": "y", "id_column": "a"}, r"duplicate item id '1'"),
        ("a,y,split\n1,c,train\n2,,test\n", {"label_column": "y"}, r"test row 0 \(id 'row-1'\) is unlabeled"),
        ("a,y,split\n1,c,train\n2,d,val\n", {"label_column": "y"}, r"column 'split' in row 1 .* is 'val'"),
        ("a,y,split\n1,c,train\n2,d,\n", {"label_column": "y"}, r"column 'split' in row 1 .* is blank, expected"),
        ("a,y,split\n1,c,train\n2,d,7\n", {"label_column": "y"}, r"column 'split' in row 1 .* is '7', expected"),
        ("a,b,y\n", {"label_column": "y"}, r"no data rows"),
        ("", {"label_column": "y"}, r"file is empty"),
        ("a,y\n1,\n2,\n", {"label_column": "y"}, r"test split is empty"),
        ("a,b,y\n1,2,c\n1,3\n", {"label_column": "y"}, r"line 3 has 2 cells where the header has 3 \(','-sep"),
        ("a,b,y\n1,2,c\n\n1,2,3,d\n", {"label_column": "y"}, r"line 4 has 4 cells where the header has 3"),
        ('a,b,y\n1,2,"c, d"\n1\n', {"label_column": "y"}, r"line 3 has 1 cell where the header has 3"),
        ('a;b;y\n1;2;"c; d"\n1;2\n', {"label_column": "y"}, r"line 3 has 2 cells where the header has 3 \(';'-sep"),
    ],
    ids=[
        "no-label-column",
        "missing-label-column",
        "missing-id-column",
        "number-typo",
        "inf",
        "duplicate-id",
        "unlabeled-test",
        "bad-split",
        "blank-split",
        "numeric-split",
        "header-only",
        "empty",
        "nothing-labeled",
        "row-cut-off",
        "row-too-long",
        "quoted-then-short",
        "semicolon-short",
    ],
)
def test_bad_csv_names_file_and_problem(tmp_path, text, kwargs, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=pattern) as info:
        load_dataset(path, **kwargs)
    assert "bad.csv" in str(info.value)


@pytest.mark.parametrize(("separator", "decimal"), [(";", ","), (";", "."), ("\t", "."), ("|", ".")])
def test_a_csv_saved_with_another_separator_or_decimal_comma_reads_as_the_comma_file(tmp_path, separator, decimal):
    """Spreadsheets save CSV with ';' (and a decimal comma) where the comma is the decimal mark; tab and bar too."""
    frame = _table()
    frame.loc[4, "animal"] = "big, fluffy cat"  # a quoted cell holding the comma
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "other.csv", index=False, sep=separator, decimal=decimal)
    expected = load_dataset(tmp_path / "comma.csv", label_column="animal", id_column="item")
    got = load_dataset(tmp_path / "other.csv", label_column="animal", id_column="item")
    assert got.feature_names == expected.feature_names and got.classes == expected.classes
    np.testing.assert_array_equal(got.ids_train, expected.ids_train)
    np.testing.assert_array_equal(got.x_train, expected.x_train)
    np.testing.assert_array_equal(got.y_test, expected.y_test)


def test_a_quoted_text_cell_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """The row check reads quoted cells with the csv module, whose default limit is 128 KiB a cell."""
    document = "word " * 40_000  # 200,000 characters
    rows = [f'{i},"{document if i == 1 else "short"}",{"ab"[i % 2]}' for i in range(8)]
    path = tmp_path / "notes.csv"
    path.write_text("id,note,y\n" + "\n".join(rows) + "\n")
    d = load_dataset(path, label_column="y", id_column="id", text_column="note")
    texts = dict(zip(map(str, d.ids_train), d.texts_train, strict=True)) | dict(
        zip(map(str, d.ids_test), d.texts_test, strict=True)
    )
    assert texts["1"] == document


def test_bad_parquet_names_file(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["1.5", "p", "2.5"], "y": ["c", "d", "c"]}).to_parquet(path)
    with pytest.raises(DatasetError, match=r"bad\.parquet: feature column 'b' holds numbers, but row 1 .* 'p'"):
        load_dataset(path, label_column="y")
    path.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet: cannot read table"):
        load_dataset(path, label_column="y")


def test_parquet_list_labels_name_file_column_and_row(tmp_path):
    path = tmp_path / "lists.parquet"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [["a"], ["a"], ["b", "c"]]}).to_parquet(path)
    pattern = r"lists\.parquet: label column 'y' in row 0 \(id 'row-0'\) holds \['a'\], expected a single label"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(path, label_column="y")


# ------------------------------------------------------------------------------------------ files


def test_unsupported_extension_and_missing_file(tmp_path):
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DatasetError, match=r"data\.xlsx: unsupported file extension '\.xlsx'.*\.npz, \.csv"):
        load_dataset(odd)
    with pytest.raises(DatasetError, match=r"nope\.npz: file not found"):
        load_dataset(tmp_path / "nope.npz")
    empty = tmp_path / "zero.npz"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"zero\.npz: file is empty"):
        load_dataset(empty)


def test_dataset_constructor_validates(tmp_path):
    x = np.zeros((2, 3), np.float32)
    ids = np.array(["a", "b"])
    with pytest.raises(DatasetError, match=r"y_test row 1 \(id 'd'\) is 5, expected 0\.\.1"):
        Dataset("n", "s", x, np.array([0, -1]), x, np.array([0, 5]), ids, np.array(["c", "d"]), ("p", "q"))
    with pytest.raises(DatasetError, match="x_train must be float32"):
        Dataset("n", "s", x.astype(float), np.array([0, -1]), x, np.array([0, 1]), ids, ids, ("p", "q"))


def test_declared_classes_name_classes_no_labelled_row_has(tmp_path):
    """``classes`` declared up front: a table's labels are matched by name (numbers too), the order is the
    declared one, and a label outside them, or a source with another list of its own, is refused."""
    table = tmp_path / "t.csv"
    table.write_text("a,y,split\n1,b,train\n2,,train\n3,b,test\n4,c,train\n5,c,test\n")
    d = load_dataset(table, label_column="y", classes=["a", "b", "c"])
    assert d.classes == ("a", "b", "c") and d.y_train.tolist() == [1, -1, 2] and d.y_test.tolist() == [1, 2]
    numbers = tmp_path / "n.csv"
    numbers.write_text("a,y\n1,7\n2,\n3,7\n4,9\n5,9\n")
    d = load_dataset(numbers, label_column="y", classes=["9", "8", "7"])  # by name, not as indices
    assert d.classes == ("9", "8", "7") and sorted(np.concatenate([d.y_train, d.y_test]).tolist()) == [-1, 0, 0, 2, 2]
    with pytest.raises(DatasetError, match=r"row 3 is 'c', not one of \['a', 'b'\]"):
        load_dataset(table, label_column="y", classes=["a", "b"])
    with pytest.raises(DatasetError, match=r"declared classes \['x'\] differ from the dataset's own"):
        load_dataset("iris", classes=["x"])
    own = tmp_path / "own.npz"
    np.savez(own, x_train=np.zeros((2, 1)), x_test=np.zeros((1, 1)), y_test=np.array([0]), classes=np.array(["p"]))
    with pytest.raises(DatasetError, match=r"declared classes \['p', 'q'\] differ from its 'classes' \['p'\]"):
        load_dataset(own, classes=["p", "q"])
    bare = tmp_path / "bare.npz"
    np.savez(bare, x_train=np.zeros((2, 1)), x_test=np.zeros((1, 1)), y_test=np.array([1]))
    assert load_dataset(bare, classes=["p", "q"]).classes == ("p", "q")  # integer labels index the declared list


# ------------------------------------------------------------------------------------------ feature names


def test_bundled_sets_keep_their_feature_names():
    assert load_dataset("iris").feature_names == tuple(skd.load_iris().feature_names)
    assert load_dataset("wine").names[:2] == ("alcohol", "malic_acid")


def test_npz_feature_names_are_optional_and_checked(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    arrays = {"x_train": x, "x_test": x[:2], "y_test": np.array([0, 1])}
    unnamed = load_dataset(_npz(tmp_path / "a.npz", **arrays))
    assert unnamed.feature_names is None and unnamed.names == ("x0", "x1", "x2")
    named = load_dataset(_npz(tmp_path / "b.npz", **arrays, feature_names=np.array(["len", "width", "mass"])))
    assert named.names == ("len", "width", "mass")
    with pytest.raises(DatasetError, match=r"c\.npz: 2 feature names for 3 features"):
        load_dataset(_npz(tmp_path / "c.npz", **arrays, feature_names=np.array(["len", "width"])))
    with pytest.raises(DatasetError, match=r"d\.npz: feature names must be distinct; repeated: \['w'\]"):
        load_dataset(_npz(tmp_path / "d.npz", **arrays, feature_names=np.array(["w", "w", "mass"])))
    images = {"x_train": np.zeros((4, 2, 2), np.uint8), "x_test": np.zeros((1, 2, 2), np.uint8), "y_test": [0]}
    with pytest.raises(DatasetError, match=r"e\.npz: feature_names apply to vectors"):
        load_dataset(_npz(tmp_path / "e.npz", **images, feature_names=np.array(["a", "b", "c", "d"])))
