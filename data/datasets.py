"""Dataset import: bundled scikit-learn sets, ``.npz`` arrays, CSV and Parquet tables, folders of images.

Every source becomes one :class:`Dataset` of model-ready arrays:

- vectors ``[N, D]`` are standardised with the *train* statistics, ``x' = (x - mean_train) / std_train``
  (``std = 0`` is replaced by 1, so constant features become 0), kept as :attr:`Dataset.standardization` so
  that data arriving later is loaded with the same transform (``load_dataset(..., standardization=...)``);
- images ``[N, C, H, W]`` are divided by 255 when stored as ``uint8``, else kept as given (as float32); a folder
  of image files (:mod:`data.image_folder`) takes its labels from class folders and its ids from file paths;
- labels are ``int64`` indices into ``classes``, ``-1`` meaning unknown (the unlabeled pool, train only);
- ids are unique strings across train and test and derived from the source row, so an item keeps its id
  whatever the split;
- vector features keep their names (a table's columns, a bundled set's ``feature_names``, an ``.npz``'s optional
  ``feature_names``), so people see ``alcohol = 13.2`` rather than ``x0``;
- a table's free-text column (``text_column``) is kept as text for people and turned into ``text_dim`` numeric
  features for the models by the stateless pipeline of :mod:`data.text` (after the other features), so rows
  arriving later are featurised identically without any fitted state.

Problems raise :class:`DatasetError`, whose message names the source, the row / key / column and what
was expected versus found. Files are never unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import itertools
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.csv_dialect import csv_cells, csv_separator
from data.errors import DatasetError
from data.text import TEXT_DIM, TextFeatures

if TYPE_CHECKING:
    import pandas as pd

    from data.table_encoding import TableEncoding

BUNDLED = ("digits", "breast_cancer", "wine", "iris")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
FILE_SUFFIXES = (".npz", *TABLE_SUFFIXES)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "ids_train", "ids_test", "classes", "feature_names")
_SUPPORTED = f"bundled names {', '.join(BUNDLED)}, files ending in {', '.join(FILE_SUFFIXES)} or a folder of images"


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Model-ready train and test arrays of one source.

    Attributes
    ----------
    name, source : str
        Short name (bundled name or file stem) and where it came from (name or resolved path).
    x_train, x_test : np.ndarray
        float32 features, ``[N, D]`` or ``[N, C, H, W]``.
    y_train, y_test : np.ndarray
        int64 class indices into ``classes``; ``-1`` (train only) is unknown.
    ids_train, ids_test : np.ndarray
        Unicode item ids, unique across train and test.
    classes : tuple of str
        Class names.
    standardization : (mean, std) of float64 arrays ``[D]``, or None
        The transform ``x' = (x - mean) / std`` the vectors went through; None for images.
    feature_names : tuple of str, or None
        Vectors: the name of each of the ``D`` features (a table's column names, a bundled set's
        ``feature_names``, an ``.npz``'s ``feature_names``); None: unnamed (shown as ``x0 .. x{D-1}``), and
        always None for images.
    texts_train, texts_test : np.ndarray, or None
        Unicode ``[N]``: each item's text (a table's ``text_column``), None without one.
    text : TextFeatures, or None
        How the text became the last ``text.dim`` features; set exactly when the texts are.
    encoding : TableEncoding, or None
        A table's: how its feature columns became the features before any text ones (categories one-hot,
        missing numbers imputed and flagged, :mod:`data.table_encoding`); None for other sources.
    """

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ids_train: np.ndarray
    ids_test: np.ndarray
    classes: tuple[str, ...]
    standardization: tuple[np.ndarray, np.ndarray] | None = None
    feature_names: tuple[str, ...] | None = None
    texts_train: np.ndarray | None = None
    texts_test: np.ndarray | None = None
    text: TextFeatures | None = None
    encoding: TableEncoding | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        where = self.source or self.name
        _check_texts(self, where)
        if self.feature_names is not None:
            names = _check_feature_names(self.feature_names, tuple(self.x_train.shape[1:]), where)
            object.__setattr__(self, "feature_names", names)
        if self.standardization is not None:
            stats = _check_standardization(self.standardization, tuple(self.x_train.shape[1:]), where)
            object.__setattr__(self, "standardization", stats)
        for split in ("train", "test"):
            x, y, ids = (getattr(self, f"{kind}_{split}") for kind in ("x", "y", "ids"))
            if x.dtype != np.float32 or x.ndim < 2:
                raise DatasetError(f"{where}: x_{split} must be float32 [N, ...], got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise DatasetError(f"{where}: y_{split} must be int64 [{len(x)}], got {y.dtype} {y.shape}")
            if ids.dtype.kind != "U" or ids.shape != (len(x),):
                raise DatasetError(f"{where}: ids_{split} must be unicode [{len(x)}], got {ids.dtype} {ids.shape}")
            low = -1 if split == "train" else 0
            bad = np.flatnonzero((y < low) | (y >= len(self.classes)))
            if bad.size:
                raise DatasetError(
                    f"{where}: y_{split} row {bad[0]} (id {ids[bad[0]].item()!r}) is {y[bad[0]]}, "
                    f"expected {low}..{len(self.classes) - 1}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DatasetError(
                f"{where}: feature shape differs, train {self.x_train.shape[1:]} vs test {self.x_test.shape[1:]}"
            )
        _check_unique_ids(np.concatenate([self.ids_train, self.ids_test]), where)

    @property
    def is_image(self) -> bool:
        """Whether the features are images ``[N, C, H, W]``."""
        return self.x_train.ndim == 4

    @property
    def names(self) -> tuple[str, ...] | None:
        """The features' names, ``x0 .. x{D-1}`` when unnamed; None for images."""
        return None if self.is_image else self.feature_names or default_feature_names(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one item's features, ``(D,)`` or ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={len(self.x_train)}, n_test={len(self.x_test)}, "
            f"feature_shape={self.feature_shape}, n_classes={self.n_classes}, "
            f"n_unlabeled={int((self.y_train < 0).sum())})"
        )


def load_dataset(
    source: str | Path,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
    text_dim: int = TEXT_DIM,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    standardization: tuple[np.ndarray, np.ndarray] | None = None,
    allow_empty_test: bool = False,
    classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    image_channels: int | None = None,
    encoding: TableEncoding | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Import a bundled set, an ``.npz`` file, a CSV / Parquet table or a folder of images.

    Parameters
    ----------
    source : str or Path
        ``digits``, ``breast_cancer``, ``wine``, ``iris`` (scikit-learn's bundled copies, no download), a
        path ending in ``.npz``, ``.csv``, ``.parquet`` or ``.pq``, or a folder of images laid out as
        :mod:`data.image_folder` says (class folders; optional ``train/`` and ``test/``).
    label_column, id_column : str, optional
        Tables only: the label column (required) and the id column (default ``row-<i>``).
    text_column, text_dim : str, int
        Tables only: a column of free text, kept as text (:attr:`Dataset.texts_train`) and featurised into
        ``text_dim`` numbers by :class:`data.text.TextFeatures`, after the other feature columns. An empty or
        missing cell (which includes what pandas reads as missing in a CSV: ``NA``, ``null``, …) is the empty
        text, whose features are those of no words.
    test_fraction, split_seed : float, int
        Stratified split of labeled rows for bundled sets and tables without a ``split`` column.
    standardization : (mean, std), optional
        Vectors only: scale with these statistics (e.g. an earlier import's :attr:`Dataset.standardization`)
        instead of this file's train statistics, so rows arriving later live in the same feature space.
    allow_empty_test : bool
        Admit a source without test rows (data added to an existing campaign): ``test_fraction`` may then be
        0 (every row of a table without a ``split`` column goes to train) and an ``.npz`` may leave out
        ``x_test`` and ``y_test`` together.
    classes : sequence of str, optional
        Every class, in order, declared up front so that a class no labelled row has yet exists. A table's labels
        are matched to them by name (a numeric label ``2`` is the name ``"2"``); an ``.npz`` without ``classes``
        takes them; an ``.npz`` with ``classes`` and a bundled set must list the same; a folder's class folders
        must be among them.
    image_size, image_channels : optional
        Folders of images only: resize every image to ``(height, width)``, and make every image grey (1) or RGB
        (3) — by default images must share one size, and are RGB when any has colour.
    encoding : TableEncoding, optional
        Tables only: encode the columns as an earlier import did (its :attr:`Dataset.encoding`) instead of
        fitting an encoding to this file, so rows arriving later get the same features.
    progress : callable, optional
        Folders of images only: told ``(done, total)`` as the images are decoded.

    Returns
    -------
    Dataset

    Notes
    -----
    ``.npz``: keys ``x_train``, ``x_test``, ``y_test`` and optionally ``y_train`` (absent = all unknown),
    ``ids_train`` / ``ids_test`` (default ``train-<i>`` / ``test-<i>``), ``classes`` and, for vectors,
    ``feature_names`` (one per feature); any other key is an error. Features ``[N, D]`` are vectors;
    ``[N, H, W]``, ``[N, H, W, C]`` and ``[N, C, H, W]`` (C in 1, 3, 4; channels-first wins when ambiguous)
    are images. Tables: the columns other than label, id, text and ``split`` are features, named by their
    column (a category column one-hot, a number column with missing cells imputed and flagged:
    :mod:`data.table_encoding`); a ``split`` column (``train`` / ``test``) fixes the split, and rows with an
    empty label always go to train as unknown. Numeric labels ``-1`` / NaN and string labels ``""`` are unknown; without
    ``classes`` the classes are the sorted distinct known labels (numeric order for
    numbers), with ``classes`` integer labels index it and string labels are looked up by name.

    Raises
    ------
    DatasetError
        Unknown name, missing or unsupported file, or invalid content (the message says where and why).
    """
    if allow_empty_test and not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"{source}: test_fraction must be in [0, 1), got {test_fraction}")
    if not allow_empty_test and not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"{source}: test_fraction must be in (0, 1), got {test_fraction}")
    scaling = {"standardization": standardization, "allow_empty_test": allow_empty_test}
    declared = None if classes is None else tuple(str(c) for c in classes)
    text = TextFeatures(text_column, text_dim) if text_column is not None else None
    if isinstance(source, str) and source in BUNDLED:
        _no_columns(source, label_column, id_column, text_column)
        return _same_classes(_load_bundled(source, test_fraction, split_seed, **scaling), declared)
    path = Path(source).expanduser()
    if path.is_dir():
        _no_columns(str(path), label_column, id_column, text_column)
        folder = {"size": image_size, "channels": image_channels, "progress": progress}
        return _load_image_folder(path, declared, test_fraction, split_seed, folder, **scaling)
    if image_size is not None or image_channels is not None:
        raise DatasetError(f"{source}: image_size / image_channels apply to folders of images only")
    if encoding is not None and path.suffix.lower() not in TABLE_SUFFIXES:
        raise DatasetError(f"{source}: a table encoding applies to CSV and Parquet tables only")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        what = f"unsupported file extension {suffix!r}" if suffix else "unknown dataset name"
        raise DatasetError(f"{source}: {what}; expected {_SUPPORTED}")
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (or not a file); expected {_SUPPORTED}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    if suffix == ".npz":
        _no_columns(str(path), label_column, id_column, text_column)
        return _load_npz(path, declared, **scaling)
    return _load_table(path, label_column, id_column, test_fraction, split_seed, declared, text, encoding, **scaling)


def _same_classes(dataset: Dataset, declared: tuple[str, ...] | None) -> Dataset:
    """A source with its own class list: declared classes must be that list."""
    if declared is not None and declared != dataset.classes:
        raise DatasetError(
            f"{dataset.source}: declared classes {list(declared)} differ from the dataset's own {list(dataset.classes)}"
        )
    return dataset


# ---------------------------------------------------------------------------------------------- sources


def _load_bundled(name: str, test_fraction: float, seed: int, **scaling) -> Dataset:
    arrays = _bundled_arrays(name)
    x = np.asarray(arrays["data"], dtype=np.float64)
    classes = tuple(str(c) for c in arrays["target_names"])
    y = np.asarray(arrays["target"], dtype=np.int64)
    ids = _row_ids("row", len(x))
    train, test = _stratified_split(y, test_fraction, seed)
    names = tuple(str(n) for n in arrays["feature_names"]) or None
    return _assemble(
        name, name, x[train], y[train], x[test], y[test], ids[train], ids[test], classes, feature_names=names, **scaling
    )


def _bundled_arrays(name: str) -> dict[str, np.ndarray]:
    """scikit-learn's bundled set ``name`` as ``data``, ``target``, ``target_names`` and ``feature_names``, read from
    a copy kept in the user's cache per scikit-learn version (:mod:`data.user_cache`): importing scikit-learn takes
    1.3 s here, and every new workspace of the demo's digits paid it."""
    from importlib.metadata import version

    from data.user_cache import cached_file

    def from_sklearn() -> dict[str, np.ndarray]:
        from sklearn import datasets as skd

        bunch = getattr(skd, f"load_{name}")()
        return {
            "data": np.asarray(bunch.data),
            "target": np.asarray(bunch.target),
            "target_names": np.asarray([str(c) for c in bunch.target_names]),
            "feature_names": np.asarray([str(n) for n in getattr(bunch, "feature_names", ())]),
        }

    def save(path: Path) -> None:
        with path.open("wb") as file:
            np.savez(file, **from_sklearn())

    for _ in range(2):  # a damaged copy is made again once
        cached = cached_file(f"{name}-scikit-learn-{version('scikit-learn')}.npz", save)
        if cached is None:
            break
        try:
            with np.load(cached, allow_pickle=False) as archive:
                return {key: archive[key] for key in ("data", "target", "target_names", "feature_names")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            cached.unlink(missing_ok=True)
    return from_sklearn()


def _load_npz(
    path: Path, declared: tuple[str, ...] | None = None, *, allow_empty_test: bool = False, **scaling
) -> Dataset:
    where = str(path.resolve())
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it (refused) or read it as a bare .npy
        raise DatasetError(f"{where}: not a valid .npz file (a .npz is a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            no_test = allow_empty_test and "x_test" not in keys and "y_test" not in keys
            for key in ("x_train",) if no_test else ("x_train", "x_test", "y_test"):
                if key not in keys:
                    raise DatasetError(f"{where}: missing key {key!r}; found keys {keys}")
            unexpected = sorted(set(keys) - set(NPZ_KEYS))
            if unexpected:  # a misspelt y_train would otherwise silently give an unlabeled pool
                raise DatasetError(f"{where}: unexpected keys {unexpected}; known keys are {list(NPZ_KEYS)}")
            arrays = {key: archive[key] for key in keys}
    except DatasetError:
        raise
    except Exception as error:  # object arrays, truncated members, ...
        raise DatasetError(f"{where}: cannot read as .npz without pickles: {error}") from error
    x_train = arrays["x_train"]
    if "x_test" not in arrays:  # allowed above only with allow_empty_test: no test rows at all
        arrays["x_test"] = np.zeros((0, *np.shape(x_train)[1:]), dtype=x_train.dtype)
        arrays["y_test"] = np.zeros(0, dtype=np.int64)
    x_test = arrays["x_test"]
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if np.ndim(x) == 0:  # a scalar has no rows
            raise DatasetError(f"{where}: {key} must be [N, D] vectors or [N, ...] images, got a scalar")
    n_train, n_test = len(x_train), len(x_test)
    y_train = arrays.get("y_train", np.full(n_train, -1, dtype=np.int64))
    ids_train = arrays["ids_train"] if "ids_train" in arrays else _row_ids("train", n_train)
    ids_test = arrays["ids_test"] if "ids_test" in arrays else _row_ids("test", n_test)
    for key, array in (("y_train", y_train), ("ids_train", ids_train)):
        if np.ndim(array) != 1 or len(array) != n_train:
            raise DatasetError(
                f"{where}: length mismatch, x_train has {n_train} rows but {key} has shape {np.shape(array)}"
            )
    for key in ("y_test", "ids_test"):
        array = arrays["y_test"] if key == "y_test" else ids_test
        if np.ndim(array) != 1 or len(array) != n_test:
            raise DatasetError(
                f"{where}: length mismatch, x_test has {n_test} rows but {key} has shape {np.shape(array)}"
            )
    classes = declared
    if "classes" in arrays:
        classes = tuple(_as_str(arrays["classes"].ravel(), where, "classes").tolist())
        if declared is not None and declared != classes:
            raise DatasetError(f"{where}: declared classes {list(declared)} differ from its 'classes' {list(classes)}")
    y_train, y_test, classes = _encode_labels(y_train, arrays["y_test"], classes, where)
    ids_train, ids_test = _as_str(ids_train, where, "ids_train"), _as_str(ids_test, where, "ids_test")
    x_train, x_test = _image_layout(x_train, where, "x_train"), _image_layout(x_test, where, "x_test")
    names = None
    if "feature_names" in arrays:
        if x_train.ndim != 2:
            raise DatasetError(f"{where}: feature_names apply to vectors [N, D]; x_train has shape {x_train.shape}")
        names = tuple(_as_str(arrays["feature_names"], where, "feature_names").tolist())
    scaling["allow_empty_test"] = allow_empty_test
    return _assemble(
        path.stem, where, x_train, y_train, x_test, y_test, ids_train, ids_test, classes, feature_names=names, **scaling
    )


def _load_image_folder(
    path: Path,
    declared: tuple[str, ...] | None,
    frac: float,
    seed: int,
    options: dict[str, Any],
    **scaling,
) -> Dataset:
    """A folder of images (:mod:`data.image_folder`, read with ``options``): its class folders are the classes,
    unless ``declared`` lists them all (and maybe more); without train/ and test/ parts, labelled images are split
    as a table's rows."""
    from data.image_folder import read_image_folder  # here: Pillow only for folders

    folder = read_image_folder(path, **options)
    classes = folder.classes
    if declared is not None:
        unknown = [name for name in classes if name not in declared]
        if unknown:
            raise DatasetError(
                f"{folder.where}: class folder {unknown[0]!r} is not among the declared classes {list(declared)}"
            )
        classes = declared
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index.get(label, -1) for label in folder.labels.tolist()], dtype=np.int64)  # "": unknown
    if folder.is_test is None:
        train, test = _stratified_split(y, frac, seed)
    else:
        train, test = np.flatnonzero(~folder.is_test), np.flatnonzero(folder.is_test)
    x, ids = folder.pixels, folder.ids
    return _assemble(
        path.resolve().name,
        folder.where,
        x[train],
        y[train],
        x[test],
        y[test],
        ids[train],
        ids[test],
        classes,
        **scaling,
    )


_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+\s*")
_DECIMAL_POINT = re.compile(r"\s*[+-]?\d*\.\d+\s*")


def _csv_layout(path: Path, where: str) -> tuple[str, str]:
    """The separator and decimal mark of a CSV file, after checking that every row has the header's number of cells.

    The separator is the header line's (:func:`data.csv_dialect.csv_separator`). With ``;``, numbers are read with a
    decimal comma when the cells of the first rows show one (``0,25``) and none shows a decimal point. A row with
    fewer or more cells than the header — a row cut off, or a value holding the separator unquoted — is refused with
    its line: reading it would shift or invent cells. Empty lines are skipped, as pandas skips them. The file is
    streamed (:func:`_csv_records`), so the check holds one row in memory whatever the file's size.
    """
    # A decoding problem is pandas' to report; a quoted cell may be a whole document (the csv module stops at 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), path.stat().st_size))
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        header_line = handle.readline().rstrip("\r\n")
        if not header_line.strip():
            return ",", "."  # no header: pandas reports the empty file
        separator = csv_separator(header_line)
        header = csv_cells(header_line, separator)
        shown: list[str] = []  # the cells of the first rows, for the decimal mark
        for number, n_cells, record in _csv_records(handle, separator):
            if n_cells != len(header):
                raise DatasetError(
                    f"{where}: line {number} has {n_cells} cell{'s' * (n_cells != 1)} where the header has "
                    f"{len(header)} ({separator!r}-separated: {header}); a row cut off, or a value holding "
                    f"{separator!r} without quotes"
                )
            if len(shown) < 100 * len(header):
                shown.extend(record if isinstance(record, list) else record.split(separator))
    decimal = "."
    if separator == ";" and any(map(_DECIMAL_COMMA.fullmatch, shown)) and not any(map(_DECIMAL_POINT.fullmatch, shown)):
        decimal = ","
    return separator, decimal


def _csv_records(handle, separator: str) -> Iterator[tuple[int, int, str | list[str]]]:
    """``(line number, cells, the line or its cells)`` of each non-empty record after the header line. Lines are
    counted in bulk (no cell strings made: a wide numeric file has millions of cells) until one holds a quote
    character; from there the csv module reads the rest, as a quoted cell may hold separators and line breaks."""
    number = 1
    for line in handle:
        number += 1
        if '"' in line:
            reader = csv.reader(itertools.chain([line], handle), delimiter=separator)
            yield from ((number + reader.line_num - 1, len(row), row) for row in reader if row)
            return
        text = line.rstrip("\r\n")
        if text:
            yield number, text.count(separator) + 1, text


def _load_table(
    path: Path,
    label_column: str | None,
    id_column: str | None,
    frac: float,
    seed: int,
    declared: tuple[str, ...] | None = None,
    text: TextFeatures | None = None,
    encoding: TableEncoding | None = None,
    **scaling,
) -> Dataset:
    import pandas as pd  # here, not at the top: the label-store commands import this module and need no pandas

    where = str(path.resolve())
    try:
        if path.suffix.lower() == ".csv":
            separator, decimal = _csv_layout(path, where)
            frame = pd.read_csv(path, sep=separator, decimal=decimal)
        else:
            frame = pd.read_parquet(path)
    except DatasetError:
        raise
    except pd.errors.EmptyDataError as error:
        raise DatasetError(f"{where}: file is empty (no header, no rows)") from error
    except Exception as error:  # pandas / pyarrow raise many types for unreadable files
        raise DatasetError(f"{where}: cannot read table: {error}") from error
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label_column is None or label_column not in columns:
        what = (
            "no label column named (label_column: the CLI's --label-column, or dataset.label_column)"
            if label_column is None
            else f"label column {label_column!r} not found"
        )
        raise DatasetError(f"{where}: {what}; columns are {columns}")
    if id_column is not None and id_column not in columns:
        raise DatasetError(f"{where}: id column {id_column!r} not found; columns are {columns}")
    if frame.empty:
        raise DatasetError(f"{where}: no data rows (only a header with columns {columns})")
    if id_column is None:
        ids = _row_ids("row", len(frame))
    else:
        missing = np.flatnonzero(frame[id_column].isna().to_numpy())
        if missing.size:
            raise DatasetError(f"{where}: id column {id_column!r} is empty in data row {missing[0]}")
        ids = _as_str(frame[id_column].to_numpy(), where, id_column)
    _check_unique_ids(ids, where)
    texts = None
    if text is not None:
        if text.column not in columns:
            raise DatasetError(f"{where}: text column {text.column!r} not found; columns are {columns}")
        if text.column in (label_column, id_column, "split"):
            raise DatasetError(f"{where}: text column {text.column!r} is also the label, id or split column")
        texts = _text_cells(frame[text.column], ids, where, text.column)
    features_excluded = {label_column, id_column, "split", text.column if text else None}
    features = [c for c in columns if c not in features_excluded]
    if not features and text is None:
        raise DatasetError(f"{where}: no feature columns besides label/id/split; columns are {columns}")
    from data.table_encoding import TableEncoding

    encoding = encoding or TableEncoding.fit(frame, features, ids, where)
    x = encoding.transform(frame[features], ids, where)  # NaN: a missing number, imputed once the split is known
    names = encoding.feature_names
    if text is not None:
        x = np.concatenate([x, text.transform(texts)], axis=1)
        names += text.feature_names()
    labels = frame[label_column]
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    labels = labels.to_numpy(dtype=np.float64, na_value=np.nan) if numeric else labels.to_numpy(dtype=object)
    nested = next((row for row, value in enumerate(labels) if not pd.api.types.is_scalar(value)), None)
    if nested is not None:  # a list column (Parquet): one label per row is expected
        raise DatasetError(
            f"{where}: label column {label_column!r} in row {nested} (id {ids[nested].item()!r}) holds "
            f"{np.asarray(labels[nested]).tolist()!r}, expected a single label"
        )
    if declared is not None and labels.dtype.kind == "f":  # matched by name: the number 2 is the class "2"
        labels = np.array(
            ["" if not np.isfinite(v) or v == -1 else str(int(v)) if v == round(v) else str(v) for v in labels],
            dtype=object,
        )
    y, _, classes = _encode_labels(labels, labels[:0], declared, where)
    if "split" in columns and "split" not in (label_column, id_column):
        split = frame["split"].astype("string").str.strip().str.lower().to_numpy(dtype=object, na_value="")
        wrong = np.flatnonzero((split != "train") & (split != "test"))
        if wrong.size:
            row = wrong[0]
            value = "blank" if split[row] == "" else repr(str(frame["split"].iloc[row]))
            raise DatasetError(
                f"{where}: column 'split' in row {row} (id {ids[row].item()!r}) is {value}, expected 'train' or 'test'"
            )
        train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    else:
        train, test = _stratified_split(y, frac, seed)
    gaps = np.isnan(x)
    if gaps.any():  # the train rows' mean (the recorded one for rows added later): 0 once standardised
        if scaling["standardization"] is not None:
            fill = np.asarray(scaling["standardization"][0], dtype=np.float64)
        else:
            counts = (~gaps[train]).sum(axis=0)
            fill = np.divide(np.nansum(x[train], axis=0), counts, out=np.zeros(x.shape[1]), where=counts > 0)
        x = np.where(gaps, fill, x)
    optional = {"feature_names": names, "encoding": encoding}
    if texts is not None:
        optional.update(texts_train=texts[train], texts_test=texts[test], text=text)
    return _assemble(
        path.stem, where, x[train], y[train], x[test], y[test], ids[train], ids[test], classes, **scaling, **optional
    )


# ---------------------------------------------------------------------------------------------- helpers


def _assemble(
    name,
    where,
    x_train,
    y_train,
    x_test,
    y_test,
    ids_train,
    ids_test,
    classes,
    *,
    standardization,
    allow_empty_test,
    **optional,
) -> Dataset:
    """Check labels, ids and values, scale features and build the :class:`Dataset` (``optional``: its fields with
    defaults, such as ``feature_names``)."""
    if len(x_test) == 0 and not allow_empty_test:
        raise DatasetError(f"{where}: the test split is empty; at least one labeled test row is needed")
    unknown = np.flatnonzero(y_test < 0)
    if unknown.size:
        row = unknown[0]
        raise DatasetError(
            f"{where}: test labels must all be known, test row {row} (id {ids_test[row].item()!r}) is unlabeled"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{where}: feature shape differs, x_train {x_train.shape[1:]} vs x_test {x_test.shape[1:]}")
    for split, x, ids in (("train", x_train, ids_train), ("test", x_test, ids_test)):
        if x.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: x_{split} must be numeric, got dtype {x.dtype}")
        if x.dtype.kind == "f" and len(x):
            bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            if bad.size:
                raise DatasetError(f"{where}: NaN/inf in x_{split} row {bad[0]} (id {ids[bad[0]].item()!r})")
    if x_train.ndim == 4 and (x_train.dtype == np.uint8) != (x_test.dtype == np.uint8):
        raise DatasetError(f"{where}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; store both alike")
    if x_train.ndim == 4:
        if standardization is not None:
            raise DatasetError(f"{where}: images are scaled, not standardised; got a standardisation to apply")
        scale = np.float32(255.0 if x_train.dtype == np.uint8 else 1.0)
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
        x_train /= scale
        x_test /= scale
        stats = None
    else:
        if standardization is None:
            if len(x_train) == 0:
                raise DatasetError(f"{where}: the train split is empty; its statistics standardise the features")
            mean = x_train.mean(axis=0, dtype=np.float64)
            std = x_train.std(axis=0, dtype=np.float64)
            std[std == 0] = 1.0
        else:
            mean, std = _check_standardization(standardization, tuple(x_train.shape[1:]), where)
        x_train, x_test = standardize(x_train, mean, std), standardize(x_test, mean, std)
        stats = (mean, std)
    return Dataset(name, where, x_train, y_train, x_test, y_test, ids_train, ids_test, classes, stats, **optional)


def default_feature_names(n: int) -> tuple[str, ...]:
    """``x0 .. x{n-1}``: the names of unnamed features."""
    return tuple(f"x{j}" for j in range(n))


def _check_feature_names(names, feature_shape: tuple[int, ...], where: str) -> tuple[str, ...]:
    """One distinct, non-empty name per feature of a vector ``[D]``."""
    names = tuple(str(n) for n in names)
    if len(feature_shape) != 1:
        raise DatasetError(f"{where}: feature names apply to vectors [N, D]; features have shape {feature_shape}")
    if len(names) != feature_shape[0]:
        raise DatasetError(f"{where}: {len(names)} feature names for {feature_shape[0]} features")
    if "" in names:
        raise DatasetError(f"{where}: feature name {names.index('')} is empty")
    values, counts = np.unique(np.asarray(names, dtype=str), return_counts=True)
    repeated = values[counts > 1].tolist()
    if repeated:
        raise DatasetError(f"{where}: feature names must be distinct; repeated: {repeated[:5]}")
    return names


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` computed in float64, returned as float32 (the transform of every vector import)."""
    return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)


def _check_standardization(stats, feature_shape: tuple[int, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float64 arrays of ``feature_shape`` (vectors only), finite, with ``std > 0``."""
    try:
        mean, std = (np.asarray(v, dtype=np.float64) for v in stats)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{where}: standardization must be a (mean, std) pair of arrays: {error}") from error
    if len(feature_shape) != 1:
        raise DatasetError(f"{where}: only vectors [N, D] are standardised, features have shape {feature_shape}")
    if mean.shape != feature_shape or std.shape != feature_shape:
        raise DatasetError(
            f"{where}: items have features of shape {feature_shape}, the standardisation given is for "
            f"{mean.shape} (mean) / {std.shape} (std)"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise DatasetError(f"{where}: the standardisation needs finite means and finite std > 0")
    return mean, std


def _image_layout(x: np.ndarray, where: str, key: str) -> np.ndarray:
    """Vectors ``[N, D]`` stay; ``[N, H, W]``, ``[N, H, W, C]`` and ``[N, C, H, W]`` become ``[N, C, H, W]``.

    A 4-D array is channels-first when its axis 1 has 1, 3 or 4 entries, else channels-last when its last
    axis has; channels-first wins when both could be channels.
    """
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise DatasetError(
        f"{where}: {key} has shape {x.shape}; expected [N, D], [N, H, W], [N, H, W, C] or [N, C, H, W] "
        "with C in (1, 3, 4)"
    )


def _encode_labels(
    y_train: np.ndarray, y_test: np.ndarray, classes: tuple[str, ...] | None, where: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Map raw labels to int64 indices into ``classes`` (``-1`` = unknown).

    Numeric labels: ``-1`` and NaN are unknown, other values must be integers ``>= 0``; they are indices
    into ``classes`` when it is given, else ``classes`` are their sorted distinct values. String labels:
    ``""`` (or a missing value) is unknown; they are names in ``classes``, else ``classes`` are their sorted
    distinct values.
    """
    parts = {
        "y_train": _raw_labels(y_train, where, "y_train"),
        "y_test": _raw_labels(y_test, where, "y_test"),
    }
    known = {key: (y != "") if y.dtype.kind == "U" else (y >= 0) for key, y in parts.items()}
    kinds = {y.dtype.kind for key, y in parts.items() if known[key].any()}
    if len(kinds) > 1:
        raise DatasetError(f"{where}: y_train and y_test mix integer and string labels")
    is_str = kinds == {"U"}
    if is_str:  # a part without any known label (e.g. all -1) is just unknown strings
        parts = {key: y if y.dtype.kind == "U" else np.full(len(y), "") for key, y in parts.items()}
    if classes is None:
        table = np.unique(np.concatenate([y[known[key]] for key, y in parts.items()]))
        classes, order = tuple(str(v) for v in table.tolist()), np.arange(len(table))
    elif len(set(classes)) != len(classes):
        raise DatasetError(f"{where}: classes contain duplicates: {list(classes)}")
    else:
        table = np.asarray(classes, dtype=str) if is_str else None
        order = np.argsort(table) if is_str else None
        table = table[order] if is_str else None
    out = {}
    for key, y in parts.items():
        rows = np.flatnonzero(known[key])
        encoded = np.full(len(y), -1, dtype=np.int64)
        if table is None:  # integer class indices into the given classes
            bad = rows[y[rows] >= len(classes)]
            if bad.size:
                raise DatasetError(
                    f"{where}: {key} row {bad[0]} is {y[bad[0]]}, expected a class index 0..{len(classes) - 1}"
                )
            encoded[rows] = y[rows]
        elif rows.size:
            pos = np.minimum(np.searchsorted(table, y[rows]), len(table) - 1)
            bad = rows[table[pos] != y[rows]]
            if bad.size:
                raise DatasetError(f"{where}: {key} row {bad[0]} is {y[bad[0]].item()!r}, not one of {list(classes)}")
            encoded[rows] = order[pos]
        out[key] = encoded
    return out["y_train"], out["y_test"], classes


def _raw_labels(y: np.ndarray, where: str, key: str) -> np.ndarray:
    """Labels as int64 (``-1`` unknown) or unicode (``""`` unknown)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{where}: {key} must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "O":
        import pandas as pd

        y = np.array(["" if pd.isna(v) else str(v).strip() for v in y.tolist()], dtype=str)
    elif y.dtype.kind in "SUb":
        y = np.char.strip(_as_str(y, where, key))
    if y.dtype.kind == "f":
        known = np.isfinite(y) & (y != -1)
        bad = np.flatnonzero(np.isinf(y) | (known & ((y != np.round(y)) | (y < 0))))
        if bad.size:
            raise DatasetError(f"{where}: {key} row {bad[0]} is {y[bad[0]].item()!r}, expected an integer class")
        y = np.where(known, y, -1)
    if y.dtype.kind not in "iufU":
        raise DatasetError(f"{where}: {key} must hold integer or string labels, got dtype {y.dtype}")
    if y.dtype.kind == "U":
        return y
    y = y.astype(np.int64)
    bad = np.flatnonzero(y < -1)
    if bad.size:
        raise DatasetError(f"{where}: {key} row {bad[0]} is {y[bad[0]]}, expected a class >= 0 or -1 (unknown)")
    return y


def _as_str(values: np.ndarray, where: str, key: str) -> np.ndarray:
    """A 1-D unicode array of ``values`` (bytes decoded as UTF-8, integral floats written as integers)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DatasetError(f"{where}: {key} must be 1-D, got shape {values.shape}")
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind == "f" and np.all(np.isfinite(values) & (values == np.round(values))):
        values = values.astype(np.int64)
    if values.dtype.kind == "O":
        return np.array([str(v) for v in values.tolist()], dtype=str)
    return values.astype(str)


def _row_ids(prefix: str, n: int) -> np.ndarray:
    """``prefix-00042``-style ids for rows ``0..n-1``, zero-padded to the width of ``n - 1``."""
    width = len(str(max(n - 1, 0)))
    return np.array([f"{prefix}-{i:0{width}d}" for i in range(n)], dtype=str)


def _check_unique_ids(ids: np.ndarray, where: str) -> None:
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise DatasetError(f"{where}: item id in row {empty[0]} is empty")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise DatasetError(
            f"{where}: duplicate item id {dup[0].item()!r} ({counts[counts > 1][0]} times; {dup.size} ids repeat)"
        )


def balanced_seed_rows(targets: np.ndarray, size: int, n_classes: int, seed: int) -> np.ndarray:
    """``size`` train rows with (as nearly as possible) equal counts per class, chosen by ``seed``: the initial
    labels of a simulated campaign (and of the benchmarks and examples that reproduce one)."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(targets == c)) for c in range(n_classes)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size and any(depth < len(rows) for rows in by_class):
        for c in rng.permutation(n_classes):
            if depth < len(by_class[c]) and len(chosen) < size:
                chosen.append(int(by_class[c][depth]))
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ascending) of train and test: each class sends ``round(n_c * test_fraction)`` of its rows
    (at most ``n_c - 1``) to test, chosen by a generator seeded with ``seed``; unknown labels stay in train.
    """
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y[y >= 0]):
        rows = np.flatnonzero(y == label)
        k = min(int(np.floor(len(rows) * test_fraction + 0.5)), len(rows) - 1)
        test.append(rng.permutation(rows)[:k])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test) if test else []] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _no_columns(where: str, label_column: str | None, id_column: str | None, text_column: str | None) -> None:
    if label_column is not None or id_column is not None or text_column is not None:
        raise DatasetError(f"{where}: label_column / id_column / text_column apply to CSV and Parquet tables only")


def _text_cells(values: pd.Series, ids: np.ndarray, where: str, column: str) -> np.ndarray:
    """A text column's cells as unicode ``[N]``: a missing cell (empty, NaN) is the empty text, a number its
    digits; a cell holding a list (Parquet) is refused with its row and id."""
    import pandas as pd

    cells = values.to_numpy(dtype=object)
    out = []
    for row, value in enumerate(cells):
        if not pd.api.types.is_scalar(value):
            raise DatasetError(
                f"{where}: text column {column!r} in row {row} (id {ids[row].item()!r}) holds "
                f"{type(value).__name__} {np.asarray(value).tolist()!r}, expected one text"
            )
        if pd.isna(value):
            out.append("")
        elif isinstance(value, bytes):
            out.append(value.decode("utf-8", errors="replace"))
        else:
            out.append(str(value.item() if isinstance(value, np.generic) else value))
    return np.array(out, dtype=str).reshape(len(out))


def _check_texts(dataset: Dataset, where: str) -> None:
    """Texts of both splits and the featuriser that made the last features, all or none."""
    parts = (dataset.texts_train, dataset.texts_test, dataset.text)
    if all(part is None for part in parts):
        return
    if any(part is None for part in parts):
        raise DatasetError(f"{where}: texts_train, texts_test and text are given together or not at all")
    if dataset.is_image or dataset.x_train.shape[1] < dataset.text.dim:
        raise DatasetError(
            f"{where}: text features need vectors of at least {dataset.text.dim} features, got {dataset.feature_shape}"
        )
    for split in ("train", "test"):
        texts, n = getattr(dataset, f"texts_{split}"), len(getattr(dataset, f"x_{split}"))
        if texts.dtype.kind != "U" or texts.shape != (n,):
            raise DatasetError(f"{where}: texts_{split} must be unicode [{n}], got {texts.dtype} {texts.shape}")
