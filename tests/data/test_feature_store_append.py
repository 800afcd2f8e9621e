"""Feature store growth: appended rows and classes are written atomically; the original import stays as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import FeatureStoreError, load_dataset, open_feature_store, write_feature_store
from data import feature_store as fs
from data.feature_store import append_rows, extend_classes


@pytest.fixture()
def iris_store(tmp_path) -> Path:
    return write_feature_store(load_dataset("iris"), tmp_path / "datasets" / "iris")


def _temporaries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_write_records_the_standardisation_and_to_dataset_returns_it(iris_store):
    d = load_dataset("iris")
    store = open_feature_store(iris_store)
    meta = json.loads((iris_store / "meta.json").read_text())
    assert meta["n_appended"] == 0 and set(meta["standardization"]) == {"mean", "std"}
    for got, want in zip(store.standardization, d.standardization, strict=True):
        np.testing.assert_array_equal(got, want)  # JSON floats round-trip float64 exactly
    back = store.to_dataset()
    np.testing.assert_array_equal(back.standardization[0], d.standardization[0])
    images = load_dataset(_image_npz(iris_store.parent.parent))
    assert open_feature_store(write_feature_store(images, iris_store.parent / "img")).standardization is None


def test_append_adds_rows_after_the_import_and_keeps_its_splits(iris_store):
    before = open_feature_store(iris_store)
    n, n_train, n_test = len(before.ids), before.n_train, before.n_test
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    rows = append_rows(iris_store, x, np.array([2, -1, 0]), ["new/a", "new/b", "new/c"])
    np.testing.assert_array_equal(rows, [n, n + 1, n + 2])
    store = open_feature_store(iris_store)
    assert (store.n_train, store.n_test, store.n_appended) == (n_train, n_test, 3)
    assert store.rows_train == before.rows_train and store.rows_test == before.rows_test
    assert store.rows_appended == range(n, n + 3)
    np.testing.assert_array_equal(store.features[rows], x.astype(np.float32))
    np.testing.assert_array_equal(store.targets[rows], [2, -1, 0])
    np.testing.assert_array_equal(store.row_of(["new/c", "row-000"]), [n + 2, store.row_of("row-000")])
    np.testing.assert_array_equal(store.lookup(["new/b", "nope"]), [n + 1, -1])
    np.testing.assert_array_equal(store.features[:n], before.features)
    store.verify()  # the content hash covers the appended rows
    assert len(store.to_dataset().x_test) == n_test  # the original import only
    more = append_rows(iris_store, np.zeros((1, 4)), np.array([1]), ["new/d"])
    assert more.tolist() == [n + 3] and open_feature_store(iris_store).n_appended == 4
    assert append_rows(iris_store, np.zeros((0, 4)), np.zeros(0, np.int64), []).shape == (0,)
    assert _temporaries(iris_store.parent) == []


def test_duplicate_ids_are_refused_by_name_and_nothing_is_written(iris_store):
    digest = open_feature_store(iris_store).meta["content_hash"]
    with pytest.raises(FeatureStoreError, match=r"item id 'row-007' is already in the store \(1 of 2 ids are\)"):
        append_rows(iris_store, np.zeros((2, 4)), np.array([0, 0]), ["fresh", "row-007"])
    with pytest.raises(FeatureStoreError, match=r"item id 'twice' appears twice"):
        append_rows(iris_store, np.zeros((3, 4)), np.array([0, 0, 0]), ["twice", "once", "twice"])
    with pytest.raises(FeatureStoreError, match=r"appended item 0 has an empty id"):
        append_rows(iris_store, np.zeros((1, 4)), np.array([0]), [""])
    append_rows(iris_store, np.zeros((1, 4)), np.array([0]), ["fresh"])
    with pytest.raises(FeatureStoreError, match=r"item id 'fresh' is already in the store"):
        append_rows(iris_store, np.zeros((1, 4)), np.array([0]), ["fresh"])
    assert (
        open_feature_store(iris_store).n_appended == 1 and digest != open_feature_store(iris_store).meta["content_hash"]
    )


@pytest.mark.parametrize(
    ("x", "targets", "pattern"),
    [
        (np.zeros((1, 5)), [0], r"rows to append must have shape \(1, 4\), got \(1, 5\)"),
        (np.zeros((1, 4)), [3], r"appended item 'z' has label 3, expected -1\.\.2"),
        (np.zeros((1, 4)), [-2], r"appended item 'z' has label -2"),
        (np.zeros((1, 4)), [0.5], r"targets to append must be integers"),
        (np.full((1, 4), np.nan), [0], r"appended item 'z' is not finite"),
    ],
    ids=["shape", "label-high", "label-low", "float-label", "nan"],
)
def test_bad_rows_are_refused(iris_store, x, targets, pattern):
    with pytest.raises(FeatureStoreError, match=pattern):
        append_rows(iris_store, x, np.array(targets), ["z"])
    assert open_feature_store(iris_store).n_appended == 0


def test_float16_store_refuses_an_overflowing_row(tmp_path):
    store = write_feature_store(load_dataset("iris"), tmp_path / "s", dtype="float16")
    with pytest.raises(FeatureStoreError, match=r"appended item 'big' overflows float16"):
        append_rows(store, np.full((1, 4), 1e6), np.array([0]), ["big"])
    rows = append_rows(store, np.full((1, 4), 0.5), np.array([0]), ["ok"])
    assert open_feature_store(store).features[rows].dtype == np.float16


def test_a_crash_during_the_append_leaves_the_old_store_intact(iris_store, monkeypatch):
    before = open_feature_store(iris_store)
    digest, n = before.meta["content_hash"], len(before.ids)
    real_save, calls = np.save, []

    def failing_save(handle, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # features and targets written, ids not
            raise OSError("disk full")
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(fs.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        append_rows(iris_store, np.ones((2, 4)), np.array([0, 1]), ["a", "b"])
    monkeypatch.setattr(fs.np, "save", real_save)
    store = open_feature_store(iris_store)
    assert store.meta["content_hash"] == digest and len(store.ids) == n and store.n_appended == 0
    store.verify()
    assert _temporaries(iris_store.parent) == []
    append_rows(iris_store, np.ones((2, 4)), np.array([0, 1]), ["a", "b"])  # the retry goes through
    assert open_feature_store(iris_store).n_appended == 2


def test_meta_must_account_for_the_appended_rows(iris_store):
    append_rows(iris_store, np.zeros((2, 4)), np.array([-1, 1]), ["a", "b"])
    meta = json.loads((iris_store / "meta.json").read_text())
    (iris_store / "meta.json").write_text(json.dumps({**meta, "n_appended": 1}))
    with pytest.raises(FeatureStoreError, match=r"features\.npy: expected float32 \(151, 4\) per meta\.json"):
        open_feature_store(iris_store)
    (iris_store / "meta.json").write_text(json.dumps({**meta, "n_appended": -2}))
    with pytest.raises(FeatureStoreError, match=r"negative n_train / n_test / n_appended"):
        open_feature_store(iris_store)
    legacy = {k: v for k, v in meta.items() if k not in ("n_appended", "standardization")}
    (iris_store / "meta.json").write_text(json.dumps(legacy))
    with pytest.raises(FeatureStoreError, match=r"expected float32 \(150, 4\)"):
        open_feature_store(iris_store)  # an older meta.json without n_appended means no appended rows


def test_extend_classes_appends_names_once_and_keeps_indices(iris_store):
    store = open_feature_store(iris_store)
    assert extend_classes(iris_store, ["virginica", "hybrid", "hybrid", "dwarf"]) == (*store.classes, "hybrid", "dwarf")
    assert extend_classes(iris_store, ["dwarf", "setosa"]) == (*store.classes, "hybrid", "dwarf")
    after = open_feature_store(iris_store)
    assert after.classes == (*store.classes, "hybrid", "dwarf")
    np.testing.assert_array_equal(after.targets, store.targets)
    after.verify()
    rows = append_rows(iris_store, np.zeros((1, 4)), np.array([4]), ["dwarf-1"])
    assert open_feature_store(iris_store).targets[rows].tolist() == [4]
    with pytest.raises(FeatureStoreError, match="must not be empty"):
        extend_classes(iris_store, [""])


def _image_npz(directory: Path) -> Path:
    path = directory / "img.npz"
    x = np.zeros((4, 3, 3), np.uint8)
    np.savez(path, x_train=x, x_test=x[:1], y_test=np.array([0]))
    return path


def test_an_append_killed_between_its_renames_is_rolled_back_on_open(iris_store):
    """SIGKILL after the old store went aside and before the new one took its place: no store is in place then;
    opening (or writing) it again restores the old one and removes what the killed writer left."""
    before = open_feature_store(iris_store)
    code = (
        "import sys, numpy as np; from data.feature_store import append_rows; "
        "append_rows(sys.argv[1], np.ones((2, 4)), np.array([0, 1]), ['a', 'b'])"
    )
    env = {**os.environ, "BELIEFLOOP_KILL_AT": "feature_store_swap"}
    killed = subprocess.run([sys.executable, "-c", code, str(iris_store)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not iris_store.exists() and _temporaries(iris_store.parent)  # the window the kill landed in

    store = open_feature_store(iris_store)
    assert store.meta["content_hash"] == before.meta["content_hash"] and store.n_appended == 0
    store.verify()
    assert _temporaries(iris_store.parent) == []
    append_rows(iris_store, np.ones((2, 4)), np.array([0, 1]), ["a", "b"])  # the retry goes through
    assert open_feature_store(iris_store).n_appended == 2
