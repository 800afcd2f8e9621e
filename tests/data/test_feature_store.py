"""Feature store: exact round trip, memory maps, id lookup, atomic idempotent writes, corruption errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data import Dataset, FeatureStoreError, load_dataset, open_feature_store, write_feature_store
from data import feature_store as fs


def _images(n_train: int = 9, n_test: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    y_train = rng.integers(-1, 3, n_train)
    return Dataset(
        name="tiny",
        source="/somewhere/tiny.npz",
        x_train=rng.random((n_train, 1, 4, 5), dtype=np.float32),
        y_train=y_train.astype(np.int64),
        x_test=rng.random((n_test, 1, 4, 5), dtype=np.float32),
        y_test=rng.integers(0, 3, n_test).astype(np.int64),
        ids_train=np.array([f"tr-{i}" for i in range(n_train)]),
        ids_test=np.array([f"te-{i}" for i in range(n_test)]),
        classes=("a", "b", "c"),
    )


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    d = load_dataset("iris")
    out = write_feature_store(d, tmp_path / "datasets" / "iris")
    assert out == tmp_path / "datasets" / "iris"
    assert sorted(p.name for p in out.iterdir()) == ["features.npy", "ids.npy", "meta.json", "targets.npy"]
    store = open_feature_store(out)
    assert isinstance(store.features, np.memmap) and not store.features.flags.writeable
    assert isinstance(store.ids, np.memmap) and store.ids.dtype.kind == "U"
    assert (store.n_train, store.n_test, store.classes) == (len(d.x_train), len(d.x_test), d.classes)
    assert store.meta["feature_shape"] == [4] and store.meta["is_image"] is False
    assert store.meta["source"] == "iris" and store.meta["dtype"] == "float32"
    np.testing.assert_array_equal(store.features[store.rows_train], d.x_train)
    np.testing.assert_array_equal(store.features[store.n_train :], d.x_test)
    np.testing.assert_array_equal(store.targets[store.rows_test], d.y_test)
    back = store.to_dataset()
    for field in ("x_train", "y_train", "x_test", "y_test", "ids_train", "ids_test"):
        np.testing.assert_array_equal(getattr(back, field), getattr(d, field))
    assert (back.name, back.source, back.classes) == (d.name, d.source, d.classes)
    store.verify()
    assert _leftovers(tmp_path / "datasets") == []


def test_images_and_float16(tmp_path):
    d = _images()
    store = open_feature_store(write_feature_store(d, tmp_path / "s", dtype="float16"))
    assert store.features.dtype == np.float16 and store.features.shape == (12, 1, 4, 5)
    assert store.meta["is_image"] is True and store.feature_shape == (1, 4, 5)
    np.testing.assert_allclose(store.to_dataset().x_train, d.x_train, atol=1e-3)
    np.testing.assert_array_equal(store.targets[:9], d.y_train)  # -1 stays unknown
    for bad in ("float64", "garbage"):
        with pytest.raises(FeatureStoreError, match="dtype must be one of"):
            write_feature_store(d, tmp_path / "t", dtype=bad)


def test_row_of_is_vectorised_and_names_the_unknown_id(tmp_path):
    d = _images()
    store = open_feature_store(write_feature_store(d, tmp_path / "s"))
    np.testing.assert_array_equal(store.row_of(["te-2", "tr-0", "tr-8"]), [11, 0, 8])
    assert store.row_of(np.array([["tr-3", "te-0"]])).shape == (1, 2)
    assert store.row_of([]).shape == (0,) and store.row_of("tr-4") == 4
    np.testing.assert_array_equal(store.ids[store.row_of(d.ids_test)], d.ids_test)
    with pytest.raises(KeyError, match=r"unknown item id 'tr-99'"):
        store.row_of(["tr-1", "tr-99", "zz"])


def test_rewriting_same_content_is_a_no_op_and_different_content_needs_overwrite(tmp_path):
    target = tmp_path / "s"
    write_feature_store(_images(), target)
    stamp = (target / "features.npy").stat().st_mtime_ns
    write_feature_store(_images(), target)  # same content: nothing rewritten
    assert (target / "features.npy").stat().st_mtime_ns == stamp
    with pytest.raises(FeatureStoreError, match=r"holds a different feature store .*overwrite=True"):
        write_feature_store(_images(seed=1), target)
    np.testing.assert_array_equal(open_feature_store(target).features[:9], _images().x_train)
    write_feature_store(_images(seed=1), target, overwrite=True)
    np.testing.assert_array_equal(open_feature_store(target).features[:9], _images(seed=1).x_train)
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "precious.txt").write_text("keep me")
    with pytest.raises(FeatureStoreError, match="is not a feature store"):
        write_feature_store(_images(), tmp_path / "s", overwrite=True)
    assert (tmp_path / "s" / "precious.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert open_feature_store(write_feature_store(_images(), tmp_path / "empty")).n_train == 9


def test_a_failing_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    calls = []
    real_save = np.save

    def failing_save(handle, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(fs.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_feature_store(_images(), tmp_path / "s")
    assert not (tmp_path / "s").exists() and _leftovers(tmp_path) == []
    # a failed overwrite keeps the old store intact
    monkeypatch.setattr(fs.np, "save", real_save)
    write_feature_store(_images(), tmp_path / "s")
    calls.clear()
    monkeypatch.setattr(fs.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_feature_store(_images(seed=2), tmp_path / "s", overwrite=True)
    open_feature_store(tmp_path / "s").verify()
    np.testing.assert_array_equal(open_feature_store(tmp_path / "s").ids[:2], ["tr-0", "tr-1"])
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda d: (d / "meta.json").write_text("{not json"), r"meta\.json: unreadable or not JSON"),
        (lambda d: (d / "meta.json").unlink(), r"meta\.json: missing; .* is not a feature store"),
        (lambda d: _edit_meta(d, n_train=None), r"meta\.json: missing keys \['n_train'\]"),
        (lambda d: _edit_meta(d, format_version=99), r"meta\.json: format_version 99, expected 1"),
        (
            lambda d: _edit_meta(d, n_test=5),
            r"features\.npy: expected float32 \(14, 1, 4, 5\) per meta\.json",
        ),
        (lambda d: (d / "ids.npy").unlink(), r"ids\.npy: missing from the feature store"),
        (lambda d: _truncate(d / "features.npy"), r"features\.npy: cannot open"),
        (lambda d: np.save(d / "targets.npy", np.full(12, 7)), r"targets\.npy: row 0 holds invalid label 7"),
    ],
    ids=["bad-json", "no-meta", "missing-key", "version", "shape", "no-ids", "truncated", "bad-label"],
)
def test_corrupt_store_errors_name_the_file(tmp_path, damage, pattern):
    target = write_feature_store(_images(), tmp_path / "s")
    damage(target)
    with pytest.raises(FeatureStoreError, match=pattern):
        open_feature_store(target)


def test_missing_store_and_tampered_content(tmp_path):
    with pytest.raises(FeatureStoreError, match=r"nowhere: feature store folder not found"):
        open_feature_store(tmp_path / "nowhere")
    target = write_feature_store(_images(), tmp_path / "s")
    features = np.load(target / "features.npy", mmap_mode="r+")
    features[0, 0, 0, 0] += 1
    features.flush()
    del features
    with pytest.raises(FeatureStoreError, match=r"content hash .* does not match"):
        open_feature_store(target).verify()


def _edit_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (directory / "meta.json").write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def test_feature_names_are_kept_and_a_store_written_without_them_still_opens(tmp_path):
    d = load_dataset("iris")
    directory = write_feature_store(d, tmp_path / "iris")
    store = open_feature_store(directory)
    assert store.feature_names == d.feature_names and store.to_dataset().feature_names == d.feature_names
    store.verify()
    assert open_feature_store(write_feature_store(_images(), tmp_path / "img")).feature_names is None

    # A store of the format before names were kept: no feature_names key, its content hash as it was then.
    meta = json.loads((directory / "meta.json").read_text())
    del meta["feature_names"]
    meta["content_hash"] = fs._content_hash(meta, store.features, store.targets, store.ids)
    assert meta["content_hash"] != store.meta["content_hash"]  # the names are part of a new store's hash
    (directory / "meta.json").write_text(json.dumps(meta))
    old = open_feature_store(directory)
    assert old.feature_names == ("x0", "x1", "x2", "x3") and old.to_dataset().feature_names is None
    old.verify()
