"""On-disk feature store: one dataset as memory-mappable ``.npy`` arrays plus JSON metadata, never pickles.

Layout of a store folder (the campaign keeps it at ``workspace/datasets/<name>/``)::

    features.npy   float32 (or float16) [n, *feature_shape], n = n_train + n_test + n_appended: train rows
                   first, then test rows, then rows appended later (data ingested into a campaign)
    targets.npy    int64 [n], -1 = unknown (train and appended rows only)
    ids.npy        unicode [n], unique item ids
    meta.json      name, source, classes, n_train, n_test, feature_shape, is_image, dtype,
                   format_version, content_hash; n_appended and standardization (vectors: the original
                   import's train mean and std, which every appended row must have gone through; null for
                   images) where present; feature_names (vectors: one name per feature) where known — a
                   store written before names were kept opens with ``x0 .. x{D-1}``; text (a table's text
                   column: how it became the last features, :class:`data.text.TextFeatures`) where set;
                   encoding (a table's: how its columns became the features, :class:`data.table_encoding.TableEncoding`)
                   where set
    texts.npy      with ``text`` only: uint8, the items' texts as UTF-8, one after the other
    text_offsets.npy  with ``text`` only: int64 [n + 1], item ``i``'s text is bytes ``offsets[i]:offsets[i+1]``
                   (compact whatever the lengths, memory-mapped, appended to like the other arrays)

``rows_train`` / ``rows_test`` describe the original import only; which rows a campaign uses, and in which
split, is the label store's ``items`` table. A store is written into a temporary sibling folder and renamed
into place, so a crash never leaves a half-written store; :func:`append_rows` and :func:`extend_classes`
rewrite it the same way. A rewrite killed between moving the old store aside and renaming the new one in is
rolled back by the next open or write (:func:`recover_store`). ``content_hash`` (SHA-256 over the arrays and
every metadata field except ``source``) makes re-writing the same dataset a no-op, which keeps retried import
tasks idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.datasets import Dataset, DatasetError, default_feature_names
from data.faults import kill_point
from data.table_encoding import TableEncoding
from data.text import TextFeatures

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends are then not serialised between processes
    fcntl = None

FORMAT_VERSION = 1
META_KEYS = ("name", "source", "classes", "n_train", "n_test", "feature_shape", "is_image", "dtype")
HASHED_IF_SET = ("feature_names", "text", "encoding")
"""Metadata added after the first stores: hashed when set, so that the hashes of older stores stay valid."""
_DTYPES = ("float32", "float16")


class FeatureStoreError(DatasetError):
    """A feature store that is missing, corrupt, or would be silently replaced; the message names the file."""


class FeatureStoreMissing(FeatureStoreError):
    """An array file of an existing store (its ``meta.json`` is there) is missing or unreadable."""


@dataclass(frozen=True, repr=False, eq=False)
class Texts:
    """Items' texts as one UTF-8 byte array and ``[n + 1]`` offsets: item ``i`` is ``utf8[offsets[i]:offsets[i+1]]``."""

    utf8: np.ndarray
    offsets: np.ndarray

    @classmethod
    def encode(cls, texts: Sequence[str] | np.ndarray) -> Texts:
        encoded = [str(t).encode("utf-8") for t in np.asarray(texts, dtype=str).reshape(-1).tolist()]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> str:
        return bytes(self.utf8[int(self.offsets[row]) : int(self.offsets[row + 1])]).decode("utf-8")

    def decode(self, rows: Sequence[int] | range | np.ndarray) -> np.ndarray:
        """The texts of ``rows`` as a unicode array."""
        return np.array([self[int(r)] for r in rows], dtype=str).reshape(len(rows))

    def __add__(self, other: Texts) -> Texts:
        """These texts followed by ``other``'s."""
        return Texts(
            np.concatenate([self.utf8, other.utf8]),
            np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
        )


@dataclass(repr=False, eq=False)
class FeatureStore:
    """An opened store: memory-mapped, read-only arrays and their metadata.

    Rows ``0 .. n_train-1`` are the original import's train split (labeled and unlabeled pool), the next
    ``n_test`` its test split, and the last ``n_appended`` rows were appended later (:func:`append_rows`).
    """

    directory: Path
    meta: dict[str, Any]
    features: np.ndarray
    targets: np.ndarray
    ids: np.ndarray
    texts: Texts | None = None
    """The items' texts when the store has a text column (``meta["text"]``), else None."""
    _sorted_ids: np.ndarray | None = field(default=None, init=False)
    _order: np.ndarray | None = field(default=None, init=False)

    @property
    def n_train(self) -> int:
        return int(self.meta["n_train"])

    @property
    def n_test(self) -> int:
        return int(self.meta["n_test"])

    @property
    def n_appended(self) -> int:
        return int(self.meta.get("n_appended", 0))

    @property
    def standardization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` (float64 ``[D]``) that standardised the vectors; None for images or an older store."""
        stats = self.meta.get("standardization")
        if stats is None:
            return None
        return np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """Vectors: each feature's name (``x0 .. x{D-1}`` for a store written without names); None for images."""
        if self.meta["is_image"]:
            return None
        names = self.meta.get("feature_names")
        return tuple(names) if names is not None else default_feature_names(self.feature_shape[0])

    @property
    def text_features(self) -> TextFeatures | None:
        """How the store's text column became its last features; None without one."""
        text = self.meta.get("text")
        return None if text is None else TextFeatures.from_json(text)

    @property
    def table_encoding(self) -> TableEncoding | None:
        """How a table's columns became the features (before any text ones); None for other sources and for
        stores written before it was recorded (their columns were all numbers)."""
        encoding = self.meta.get("encoding")
        return None if encoding is None else TableEncoding.from_json(encoding)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["feature_shape"])

    @property
    def rows_train(self) -> range:
        """Rows of the train split (use ``features[: n_train]`` for a zero-copy view)."""
        return range(self.n_train)

    @property
    def rows_test(self) -> range:
        """Rows of the original import's test split (a campaign's test items: the label store's ``items``)."""
        return range(self.n_train, self.n_train + self.n_test)

    @property
    def rows_appended(self) -> range:
        return range(self.n_train + self.n_test, len(self.ids))

    def row_of(self, item_ids: str | Any) -> np.ndarray:
        """Rows (int64, same shape as ``item_ids``) of the given item ids.

        Raises
        ------
        KeyError
            Naming the first id (in the order given) that is not in the store.
        """
        query = np.asarray(item_ids, dtype=str)
        rows = self.lookup(query)
        if (rows < 0).any():
            unknown = query.ravel()[np.ravel(rows) < 0][0]
            raise KeyError(f"unknown item id {str(unknown)!r} in feature store {self.directory}")
        return rows

    def lookup(self, item_ids: str | Any) -> np.ndarray:
        """Rows (int64, same shape as ``item_ids``) of the given item ids, ``-1`` for ids not in the store."""
        query = np.asarray(item_ids, dtype=str)
        if len(self.ids) == 0:
            return np.full(query.shape, -1, dtype=np.int64)
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted_ids = np.asarray(self.ids[self._order])
        pos = np.minimum(np.searchsorted(self._sorted_ids, query), len(self._order) - 1)
        found = self._sorted_ids[pos] == query
        return np.where(found, self._order[pos], -1).astype(np.int64)

    def to_dataset(self) -> Dataset:
        """Load the original import back into memory as a :class:`Dataset` (features as float32).

        Appended rows are left out: they belong to no split of the import (see the label store's items).
        """
        n, end = self.n_train, self.n_train + self.n_test
        x = np.asarray(self.features[:end], dtype=np.float32)
        y, ids = np.asarray(self.targets[:end]), np.asarray(self.ids[:end])
        name, source = self.meta["name"], self.meta["source"]
        stats, names = self.standardization, self.meta.get("feature_names")
        names = tuple(names) if names is not None else None
        texts = {}
        if self.texts is not None:
            texts = {
                "texts_train": self.texts.decode(range(n)),
                "texts_test": self.texts.decode(range(n, end)),
                "text": self.text_features,
            }
        return Dataset(
            name,
            source,
            x[:n],
            y[:n],
            x[n:],
            y[n:],
            ids[:n],
            ids[n:],
            self.classes,
            stats,
            names,
            **texts,
            encoding=self.table_encoding,
        )

    def verify(self) -> None:
        """Re-hash the arrays (reads everything) and raise :class:`FeatureStoreError` if they changed."""
        digest = _content_hash(self.meta, self.features, self.targets, self.ids, self.texts)
        if digest != self.meta.get("content_hash"):
            raise FeatureStoreError(
                f"{self.directory}: content hash {digest} does not match meta.json's {self.meta.get('content_hash')}"
            )

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.directory)!r}, name={self.meta['name']!r}, n_train={self.n_train}, "
            f"n_test={self.n_test}, n_appended={self.n_appended}, feature_shape={self.feature_shape}, "
            f"dtype={self.meta['dtype']})"
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
        "n_appended": 0,
        "standardization": _stats_json(dataset.standardization),
        "feature_names": None if dataset.feature_names is None else list(dataset.feature_names),
        "text": None if dataset.text is None else dataset.text.to_json(),
        "encoding": None if dataset.encoding is None else dataset.encoding.to_json(),
    }
    texts = None if dataset.text is None else Texts.encode(np.concatenate([dataset.texts_train, dataset.texts_test]))
    meta["content_hash"] = _content_hash(meta, features, targets, ids, texts)
    recover_store(directory)  # a store that a killed rewrite left aside is the one in place, not this import
    if _same_or_refuse(directory, meta["content_hash"], overwrite):
        return directory
    _write_and_swap(directory, meta, features, targets, ids, texts)
    return directory


def append_rows(
    directory: str | Path,
    x: np.ndarray,
    targets: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    texts: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """Append items after the existing rows, rewriting the store atomically; return their rows (int64).

    ``x`` must already be model-ready, i.e. transformed like the original import (vectors standardised with
    the store's :attr:`FeatureStore.standardization`, images scaled to floats). Appends are serialised by a
    lock file beside the store; readers keep the arrays they opened until they open the store again.

    Parameters
    ----------
    directory : str or Path
        An existing store.
    x : np.ndarray
        ``[M, *feature_shape]`` features, stored in the store's dtype.
    targets : np.ndarray
        ``[M]`` class indices into the store's classes, ``-1`` = unknown.
    ids : sequence of str
        ``[M]`` new item ids, distinct from each other and from every id in the store.
    texts : sequence of str, optional
        ``[M]`` the items' texts: required exactly when the store has a text column, whose featuriser
        (:class:`data.text.TextFeatures`, stateless) must have made the last features of ``x``.

    Raises
    ------
    FeatureStoreError
        Duplicate or empty ids (the message names the first), wrong shapes, labels out of range, non-finite
        features or a float16 overflow.
    """
    directory = Path(directory)
    ids = np.asarray(ids, dtype=str).reshape(-1)
    targets = np.asarray(targets)
    with _locked(directory):
        _restore_aside(directory)
        store = _open_store(directory)
        shape = (len(ids), *store.feature_shape)
        x = np.asarray(x)
        if x.shape != shape:
            raise FeatureStoreError(f"{directory}: rows to append must have shape {shape}, got {x.shape}")
        if targets.shape != (len(ids),) or targets.dtype.kind not in "iu":
            raise FeatureStoreError(
                f"{directory}: targets to append must be integers [{len(ids)}], got {targets.dtype} {targets.shape}"
            )
        bad = np.flatnonzero((targets < -1) | (targets >= len(store.classes)))
        if bad.size:
            raise FeatureStoreError(
                f"{directory}: appended item {str(ids[bad[0]])!r} has label {targets[bad[0]]}, "
                f"expected -1..{len(store.classes) - 1}"
            )
        if (texts is None) != (store.texts is None):
            raise FeatureStoreError(
                f"{directory}: the store {'has' if store.texts is not None else 'has no'} text column; rows to "
                f"append {'need' if store.texts is not None else 'must not have'} texts"
            )
        new_texts = None if texts is None else Texts.encode(texts)
        if new_texts is not None and len(new_texts) != len(ids):
            raise FeatureStoreError(f"{directory}: {len(new_texts)} texts for {len(ids)} rows to append")
        _refuse_duplicates(directory, store, ids)
        rows = np.arange(len(store.ids), len(store.ids) + len(ids), dtype=np.int64)
        if not len(ids):
            return rows
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the item
            new = x.astype(store.meta["dtype"])
        bad = np.flatnonzero(~np.isfinite(new.reshape(len(new), -1)).all(axis=1))
        if bad.size:
            why = "overflows float16; the store holds float16" if np.isfinite(x[bad[0]]).all() else "is not finite"
            raise FeatureStoreError(f"{directory}: appended item {str(ids[bad[0]])!r} {why}")
        features = np.concatenate([store.features, new])
        all_targets = np.concatenate([store.targets, targets.astype(np.int64)])
        all_ids = np.concatenate([store.ids, ids])
        meta = {key: value for key, value in store.meta.items() if key != "content_hash"}
        meta["n_appended"] = store.n_appended + len(ids)
        all_texts = None if new_texts is None else store.texts + new_texts
        meta["content_hash"] = _content_hash(meta, features, all_targets, all_ids, all_texts)
        _write_and_swap(directory, meta, features, all_targets, all_ids, all_texts)
    return rows


def extend_classes(directory: str | Path, new_classes: Sequence[str]) -> tuple[str, ...]:
    """Append the names in ``new_classes`` that the store does not know to its classes; return all classes.

    Existing class indices keep their meaning (new classes go last), so stored targets stay valid. Names the
    store already knows are ignored, which makes a repeated call a no-op.
    """
    directory = Path(directory)
    with _locked(directory):
        _restore_aside(directory)
        store = _open_store(directory)
        classes = list(store.classes)
        for name in (str(c) for c in new_classes):
            if not name:
                raise FeatureStoreError(f"{directory}: a class name must not be empty")
            if name not in classes:
                classes.append(name)
        if len(classes) == len(store.classes):
            return store.classes
        meta = {key: value for key, value in store.meta.items() if key != "content_hash"}
        meta["classes"] = classes
        features, targets, ids = (np.asarray(a) for a in (store.features, store.targets, store.ids))
        texts = None if store.texts is None else Texts(np.asarray(store.texts.utf8), np.asarray(store.texts.offsets))
        meta["content_hash"] = _content_hash(meta, features, targets, ids, texts)
        _write_and_swap(directory, meta, features, targets, ids, texts)
    return tuple(classes)


def open_feature_store(directory: str | Path) -> FeatureStore:
    """Open a store written by :func:`write_feature_store`, memory-mapping its arrays read-only; a store whose
    rewrite was killed half-way is first rolled back (:func:`recover_store`).

    Raises
    ------
    FeatureStoreError
        A file is missing, unreadable or inconsistent with ``meta.json`` (the message names the file).
    """
    recover_store(directory)
    return _open_store(Path(directory))


def _open_store(directory: Path) -> FeatureStore:
    meta = _read_meta(directory)
    n = meta["n_train"] + meta["n_test"] + meta["n_appended"]
    arrays = {}
    for name in ("features", "targets", "ids"):
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FeatureStoreMissing(f"{path}: missing from the feature store {directory}") from None
        except (OSError, ValueError) as error:
            raise FeatureStoreMissing(f"{path}: cannot open: {error}") from error
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
    rows = np.arange(n)
    low = np.where((rows >= n_train) & (rows < n_train + meta["n_test"]), 0, -1)  # test labels must be known
    bad = np.flatnonzero((targets < low) | (targets >= len(meta["classes"])))
    if bad.size:
        raise FeatureStoreError(f"{directory / 'targets.npy'}: row {bad[0]} holds invalid label {targets[bad[0]]}")
    texts = _open_texts(directory, n) if meta["text"] is not None else None
    return FeatureStore(directory, meta, arrays["features"], arrays["targets"], arrays["ids"], texts)


def _open_texts(directory: Path, n: int) -> Texts:
    """The memory-mapped texts of a store with a text column, checked against its ``n`` rows."""
    arrays = {}
    for name in ("texts", "text_offsets"):
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FeatureStoreMissing(
                f"{path}: missing from the feature store {directory} (meta.json has text)"
            ) from None
        except (OSError, ValueError) as error:
            raise FeatureStoreMissing(f"{path}: cannot open: {error}") from error
    utf8, offsets = arrays["texts"], arrays["text_offsets"]
    if utf8.dtype != np.uint8 or utf8.ndim != 1:
        raise FeatureStoreError(f"{directory / 'texts.npy'}: expected uint8 [bytes], got {utf8.dtype} {utf8.shape}")
    if offsets.dtype != np.int64 or offsets.shape != (n + 1,):
        raise FeatureStoreError(
            f"{directory / 'text_offsets.npy'}: expected int64 ({n + 1},), got {offsets.dtype} {offsets.shape}"
        )
    if offsets[0] != 0 or offsets[-1] != len(utf8) or (np.diff(offsets) < 0).any():
        raise FeatureStoreError(
            f"{directory / 'text_offsets.npy'}: offsets must rise from 0 to the {len(utf8)} bytes of texts.npy"
        )
    return Texts(utf8, offsets)


# ---------------------------------------------------------------------------------------------- helpers


def _content_hash(
    meta: dict[str, Any], features: np.ndarray, targets: np.ndarray, ids: np.ndarray, texts: Texts | None = None
) -> str:
    core = {key: meta[key] for key in META_KEYS if key != "source"}
    core.update({key: meta[key] for key in HASHED_IF_SET if meta.get(key) is not None})
    digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode())
    extra = () if texts is None else (texts.utf8, texts.offsets)
    for array in (features, targets, ids, *extra):
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
        meta["n_appended"] = int(meta.get("n_appended", 0))
        meta["feature_shape"] = [int(d) for d in meta["feature_shape"]]
        meta["classes"] = [str(c) for c in meta["classes"]]
    except (TypeError, ValueError) as error:
        raise FeatureStoreError(
            f"{path}: malformed n_train / n_test / n_appended / feature_shape / classes: {error}"
        ) from error
    if min(meta["n_train"], meta["n_test"], meta["n_appended"]) < 0:
        raise FeatureStoreError(f"{path}: negative n_train / n_test / n_appended")
    stats = meta.setdefault("standardization", None)
    if stats is not None:
        size = int(np.prod(meta["feature_shape"]))
        try:
            ok = all(len(stats[key]) == size for key in ("mean", "std")) and len(meta["feature_shape"]) == 1
        except (TypeError, KeyError):
            ok = False
        if not ok:
            raise FeatureStoreError(f"{path}: standardization must be null or {{mean, std}} of {size} numbers each")
    text = meta.setdefault("text", None)
    if text is not None:
        try:
            features = TextFeatures.from_json(text)
        except (TypeError, KeyError, ValueError) as error:
            raise FeatureStoreError(f"{path}: text must be null or the settings of a text column: {error}") from error
        if len(meta["feature_shape"]) != 1 or meta["feature_shape"][0] < features.dim:
            raise FeatureStoreError(
                f"{path}: text of {features.dim} features, but features are {meta['feature_shape']}"
            )
    names = meta.setdefault("feature_names", None)
    if names is not None:
        shape = meta["feature_shape"]
        if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)) or len(shape) != 1:
            raise FeatureStoreError(f"{path}: feature_names must be null or a list of names of vector features")
        if len(names) != shape[0] or len(set(names)) != len(names):
            raise FeatureStoreError(f"{path}: feature_names must be {shape[0]} distinct names, got {len(names)}")
    return meta


def _stats_json(stats: tuple[np.ndarray, np.ndarray] | None) -> dict[str, list[float]] | None:
    """``{"mean": [...], "std": [...]}`` (JSON floats round-trip float64 exactly) or None."""
    if stats is None:
        return None
    mean, std = stats
    return {"mean": np.asarray(mean, dtype=np.float64).tolist(), "std": np.asarray(std, dtype=np.float64).tolist()}


def _refuse_duplicates(directory: Path, store: FeatureStore, ids: np.ndarray) -> None:
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise FeatureStoreError(f"{directory}: appended item {empty[0]} has an empty id")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise FeatureStoreError(f"{directory}: item id {values[counts > 1][0].item()!r} appears twice among the rows")
    known = store.lookup(ids) >= 0
    if known.any():
        raise FeatureStoreError(
            f"{directory}: item id {ids[known][0].item()!r} is already in the store "
            f"({int(known.sum())} of {len(ids)} ids are); not appending"
        )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one store (``.<name>.lock`` beside it) so that concurrent appends are not lost."""
    if fcntl is None or not directory.parent.is_dir():
        yield
        return
    with open(directory.parent / f".{directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover_store(directory: str | Path) -> None:
    """Undo a rewrite killed between its two renames (the old store moved aside, the new one not yet in place).

    With no store at ``directory`` (no ``meta.json``), the store moved aside goes back (the killed rewrite is
    lost, as if it had never started), and the killed writer's temporary folders go. Runs under the writers'
    lock, so it never touches the folders of a live writer; costs one ``stat`` when the store is in place, and
    changes nothing when no store was moved aside.
    """
    directory = Path(directory)
    if (directory / "meta.json").exists() or not any(directory.parent.glob(f".{directory.name}.old-*")):
        return
    with _locked(directory):
        _restore_aside(directory)


def _restore_aside(directory: Path) -> None:
    """:func:`recover_store`'s work, for a caller holding the writers' lock."""
    if (directory / "meta.json").exists() or (directory.exists() and any(directory.iterdir())):
        return  # a store is in place, or a folder that is something else: left as it is
    aside = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    saved = [holder / "store" for holder in aside if (holder / "store" / "meta.json").is_file()]
    if not saved:
        return
    if directory.exists():
        directory.rmdir()  # empty
    os.replace(saved[-1], directory)
    for leftover in [*aside, *directory.parent.glob(f".{directory.name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _write_and_swap(
    directory: Path,
    meta: dict[str, Any],
    features: np.ndarray,
    targets: np.ndarray,
    ids: np.ndarray,
    texts: Texts | None = None,
) -> None:
    """Write the arrays and ``meta.json`` into a temporary sibling folder, then rename it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    arrays = [("features", features), ("targets", targets), ("ids", ids)]
    if texts is not None:
        arrays += [("texts", texts.utf8), ("text_offsets", texts.offsets)]
    try:
        for name, array in arrays:
            with open(tmp / f"{name}.npy", "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
        with open(tmp / "meta.json", "w") as handle:
            json.dump(meta, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _swap_in(tmp, directory, meta["content_hash"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        kill_point("feature_store_swap")
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
