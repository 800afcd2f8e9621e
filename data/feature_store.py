"""On-disk feature store: one dataset as memory-mappable ``.npy`` arrays plus JSON metadata, never pickles.

Layout of a store folder (the campaign keeps it at ``workspace/datasets/<name>/``)::

    features.npy   float32 (or float16) [n_train + n_test, *feature_shape], train rows first
    targets.npy    int64 [n_train + n_test], -1 = unknown (train rows only)
    ids.npy        unicode [n_train + n_test], unique item ids
    meta.json      name, source, classes, n_train, n_test, feature_shape, is_image, dtype,
                   format_version, content_hash

A store is written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written store. ``content_hash`` (SHA-256 over the arrays and every metadata field except ``source``)
makes re-writing the same dataset a no-op, which keeps retried import tasks idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.datasets import Dataset, DatasetError

FORMAT_VERSION = 1
META_KEYS = ("name", "source", "classes", "n_train", "n_test", "feature_shape", "is_image", "dtype")
_DTYPES = ("float32", "float16")


class FeatureStoreError(DatasetError):
    """A feature store that is missing, corrupt, or would be silently replaced; the message names the file."""


@dataclass(repr=False, eq=False)
class FeatureStore:
    """An opened store: memory-mapped, read-only arrays and their metadata.

    Rows ``0 .. n_train-1`` are the train split (labeled and unlabeled pool), the rest the test split.
    """

    directory: Path
    meta: dict[str, Any]
    features: np.ndarray
    targets: np.ndarray
    ids: np.ndarray
    _sorted_ids: np.ndarray | None = field(default=None, init=False)
    _order: np.ndarray | None = field(default=None, init=False)

    @property
    def n_train(self) -> int:
        return int(self.meta["n_train"])

    @property
    def n_test(self) -> int:
        return int(self.meta["n_test"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["feature_shape"])

    @property
    def rows_train(self) -> range:
        """Rows of the train split (use ``features[: n_train]`` for a zero-copy view)."""
        return range(self.n_train)

    @property
    def rows_test(self) -> range:
        return range(self.n_train, self.n_train + self.n_test)

    def row_of(self, item_ids: str | Any) -> np.ndarray:
        """Rows (int64, same shape as ``item_ids``) of the given item ids.

        Raises
        ------
        KeyError
            Naming the first id (in the order given) that is not in the store.
        """
        query = np.asarray(item_ids, dtype=str)
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted_ids = np.asarray(self.ids[self._order])
        pos = np.minimum(np.searchsorted(self._sorted_ids, query), len(self._order) - 1)
        found = self._sorted_ids[pos] == query
        if not np.all(found):
            unknown = query.ravel()[~np.ravel(found)][0]
            raise KeyError(f"unknown item id {str(unknown)!r} in feature store {self.directory}")
        return self._order[pos].astype(np.int64)

    def to_dataset(self) -> Dataset:
        """Load the store back into memory as a :class:`Dataset` (features as float32)."""
        n = self.n_train
        x = np.asarray(self.features, dtype=np.float32)
        y, ids = np.asarray(self.targets), np.asarray(self.ids)
        name, source = self.meta["name"], self.meta["source"]
        return Dataset(name, source, x[:n], y[:n], x[n:], y[n:], ids[:n], ids[n:], self.classes)

    def verify(self) -> None:
        """Re-hash the arrays (reads everything) and raise :class:`FeatureStoreError` if they changed."""
        digest = _content_hash(self.meta, self.features, self.targets, self.ids)
        if digest != self.meta.get("content_hash"):
            raise FeatureStoreError(
                f"{self.directory}: content hash {digest} does not match meta.json's {self.meta.get('content_hash')}"
            )

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.directory)!r}, name={self.meta['name']!r}, n_train={self.n_train}, "
            f"n_test={self.n_test}, feature_shape={self.feature_shape}, dtype={self.meta['dtype']})"
        )


def write_feature_store(
    dataset: Dataset, directory: str | Path, *, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Write ``dataset`` to ``directory`` atomically and return the directory.

    Parameters
    ----------
    dataset : Dataset
    directory : str or Path
        Target folder; created with its parents. A temporary sibling is renamed into place.
    dtype : {"float32", "float16"}
        Storage type of the features (float16 halves the size; values must fit, ``|x| < 65504``).
    overwrite : bool
        Replace an existing store holding different content. A store with the same content hash is left
        as it is whatever this flag; a non-empty folder that is not a store is never replaced.

    Raises
    ------
    FeatureStoreError
        The folder holds another dataset (and ``overwrite`` is false) or something that is not a store, or
        the features overflow ``dtype``.
    """
    directory = Path(directory)
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        dtype = str(dtype)
    if dtype not in _DTYPES:
        raise FeatureStoreError(f"{directory}: dtype must be one of {_DTYPES}, got {dtype!r}")
    features = np.ascontiguousarray(np.concatenate([dataset.x_train, dataset.x_test]), dtype=dtype)
    if features.dtype == np.float16:
        bad = np.flatnonzero(~np.isfinite(features.reshape(len(features), -1)).all(axis=1))
        if bad.size:
            raise FeatureStoreError(f"{directory}: row {bad[0]} overflows float16; use dtype='float32'")
    targets = np.concatenate([dataset.y_train, dataset.y_test]).astype(np.int64)
    ids = np.concatenate([dataset.ids_train, dataset.ids_test]).astype(str)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": dataset.name,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "n_train": len(dataset.x_train),
        "n_test": len(dataset.x_test),
        "feature_shape": list(dataset.feature_shape),
        "is_image": dataset.is_image,
        "dtype": str(features.dtype),
    }
    meta["content_hash"] = _content_hash(meta, features, targets, ids)
    if _same_or_refuse(directory, meta["content_hash"], overwrite):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        for name, array in (("features", features), ("targets", targets), ("ids", ids)):
            with open(tmp / f"{name}.npy", "wb") as handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
        with open(tmp / "meta.json", "w") as handle:
            json.dump(meta, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _swap_in(tmp, directory, meta["content_hash"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def open_feature_store(directory: str | Path) -> FeatureStore:
    """Open a store written by :func:`write_feature_store`, memory-mapping its arrays read-only.

    Raises
    ------
    FeatureStoreError
        A file is missing, unreadable or inconsistent with ``meta.json`` (the message names the file).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    n = meta["n_train"] + meta["n_test"]
    arrays = {}
    for name in ("features", "targets", "ids"):
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise FeatureStoreError(f"{path}: cannot open: {error}") from error
    expected = {
        "features": ((n, *meta["feature_shape"]), meta["dtype"]),
        "targets": ((n,), "int64"),
        "ids": ((n,), "U"),
    }
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        got = array.dtype.kind if dtype == "U" else str(array.dtype)
        if array.shape != shape or got != dtype:
            raise FeatureStoreError(
                f"{directory / f'{name}.npy'}: expected {dtype} {shape} per meta.json, got {array.dtype} {array.shape}"
            )
    targets, n_train = arrays["targets"], meta["n_train"]
    low = np.where(np.arange(n) < n_train, -1, 0)
    bad = np.flatnonzero((targets < low) | (targets >= len(meta["classes"])))
    if bad.size:
        raise FeatureStoreError(f"{directory / 'targets.npy'}: row {bad[0]} holds invalid label {targets[bad[0]]}")
    return FeatureStore(directory, meta, arrays["features"], arrays["targets"], arrays["ids"])


# ---------------------------------------------------------------------------------------------- helpers


def _content_hash(meta: dict[str, Any], features: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> str:
    core = {key: meta[key] for key in META_KEYS if key != "source"}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode())
    for array in (features, targets, ids):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return f"sha256:{digest.hexdigest()}"


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / "meta.json"
    if not directory.is_dir():
        raise FeatureStoreError(f"{directory}: feature store folder not found")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise FeatureStoreError(f"{path}: missing; {directory} is not a feature store") from error
    except (OSError, ValueError) as error:
        raise FeatureStoreError(f"{path}: unreadable or not JSON: {error}") from error
    if not isinstance(meta, dict):
        raise FeatureStoreError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in (*META_KEYS, "format_version", "content_hash") if key not in meta]
    if missing:
        raise FeatureStoreError(f"{path}: missing keys {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise FeatureStoreError(f"{path}: format_version {meta['format_version']!r}, expected {FORMAT_VERSION}")
    if meta["dtype"] not in _DTYPES:
        raise FeatureStoreError(f"{path}: dtype {meta['dtype']!r}, expected one of {_DTYPES}")
    try:
        meta["n_train"], meta["n_test"] = int(meta["n_train"]), int(meta["n_test"])
        meta["feature_shape"] = [int(d) for d in meta["feature_shape"]]
        meta["classes"] = [str(c) for c in meta["classes"]]
    except (TypeError, ValueError) as error:
        raise FeatureStoreError(f"{path}: malformed n_train / n_test / feature_shape / classes: {error}") from error
    return meta


def _same_or_refuse(directory: Path, digest: str, overwrite: bool) -> bool:
    """True when ``directory`` already holds this content; raise when it must not be replaced."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return False
    if not (directory / "meta.json").is_file():
        raise FeatureStoreError(f"{directory}: exists and is not a feature store (no meta.json); not replacing it")
    try:
        existing = json.loads((directory / "meta.json").read_text()).get("content_hash")
    except (OSError, ValueError, AttributeError):
        existing = None  # a corrupt store: replaceable with overwrite=True
    if existing == digest:
        return True
    if not overwrite:
        raise FeatureStoreError(
            f"{directory}: holds a different feature store (content hash {existing} vs {digest}); "
            "pass overwrite=True to replace it"
        )
    return False


def _swap_in(tmp: Path, directory: Path, digest: str) -> None:
    """Rename ``tmp`` to ``directory``, replacing an empty folder or (after checks) an existing store."""
    if directory.exists() and any(directory.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        os.replace(directory, old / "store")
        try:
            os.replace(tmp, directory)
        except OSError:
            os.replace(old / "store", directory)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, directory)
    except OSError:  # another writer got there first: fine if it wrote the same content
        if not _same_or_refuse(directory, digest, overwrite=False):
            raise
