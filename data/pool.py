"""Read a pool's features chunk by chunk: ``.npy`` (memory-mapped or plain reads) or Parquet (row groups).

:func:`iter_pool_chunks` yields ``(ids_chunk, x_chunk)`` pairs for ``acquisition.streaming.score_pool_streaming``:
only one chunk of features is in memory at a time, converted to the requested torch dtype (float16 storage
becomes float32 per chunk, never for the whole pool).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["PoolError", "iter_pool_chunks"]


class PoolError(ValueError):
    """A pool file or its rows/ids that cannot be read as asked; the message names the file or the row."""


def iter_pool_chunks(
    features_memmap_or_path: np.ndarray | str | Path,
    rows: Sequence[int] | np.ndarray | range | None,
    ids: Sequence[str] | np.ndarray,
    chunk_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    columns: Sequence[str] | None = None,
    feature_shape: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(ids_chunk, x_chunk)`` for ``rows`` of a feature array, ``chunk_size`` rows at a time, in order.

    Parameters
    ----------
    features_memmap_or_path : np.ndarray or str or Path
        An array (typically ``np.load(..., mmap_mode="r")`` or ``FeatureStore.features``), or the path of a
        ``.npy`` file or a ``.parquet`` file. A ``.npy`` path is read with plain file reads for runs of
        consecutive rows, so resident memory stays at one chunk (a memmap's touched pages count as resident
        until unmapped), and through a read-only memmap for scattered rows. A Parquet file is read one row
        group at a time (the last one is kept for the next chunk).
    rows : sequence of int, optional
        Rows to read, in the order to yield them (e.g. ``FeatureStore.rows_train`` or the unlabeled pool's
        rows); ``None`` reads all rows.
    ids : sequence of str
        Item ids aligned with ``rows`` (with every row when ``rows`` is ``None``).
    chunk_size : int
        Rows per chunk (the last chunk may be shorter).
    dtype : torch.dtype
        dtype of the yielded tensors; each chunk is converted on its own.
    columns : sequence of str, optional
        Parquet only: the feature columns, in order (default: every column; all must be numeric). A single
        list-typed column holding one vector per row is also accepted.
    feature_shape : sequence of int, optional
        Reshape each chunk to ``[B, *feature_shape]`` (e.g. ``(1, 28, 28)`` for flat Parquet image rows).

    Yields
    ------
    tuple of (np.ndarray, torch.Tensor)
        ``ids_chunk`` (str array) and ``x_chunk`` ``[B, *feature_shape]`` of ``dtype``, on the CPU.

    Raises
    ------
    PoolError
        Unknown file type, rows out of range (naming the row), ids not aligned with rows, non-numeric columns.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise PoolError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(features_memmap_or_path, (str, Path)):
        path = Path(features_memmap_or_path)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            reader = _NpyReader(path)
        elif suffix in (".parquet", ".pq"):
            reader = _ParquetReader(path, columns)
        else:
            raise PoolError(f"{path}: expected a .npy or .parquet file")
    elif isinstance(features_memmap_or_path, np.ndarray):
        reader = _ArrayReader(features_memmap_or_path)
    else:
        raise PoolError(f"expected an array or a path, got {type(features_memmap_or_path).__name__}")
    try:
        rows_arr = np.arange(reader.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        rows_arr = rows_arr.reshape(-1)
        ids_arr = np.asarray(ids, dtype=np.str_).reshape(-1)
        if len(ids_arr) != len(rows_arr):
            raise PoolError(f"{reader.name}: got {len(ids_arr)} ids for {len(rows_arr)} rows")
        bad = np.flatnonzero((rows_arr < 0) | (rows_arr >= reader.n_rows))
        if bad.size:
            raise PoolError(f"{reader.name}: row {rows_arr[bad[0]]} is out of range for {reader.n_rows} rows")
        for start in range(0, len(rows_arr), int(chunk_size)):
            chunk_rows = rows_arr[start : start + chunk_size]
            x = reader.read(chunk_rows)
            if not x.dtype.isnative:  # torch reads native byte order only
                x = x.astype(x.dtype.newbyteorder("="))
            if feature_shape is not None:
                x = x.reshape(len(chunk_rows), *feature_shape)
            yield ids_arr[start : start + chunk_size], torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    finally:
        reader.close()


def _consecutive(rows: np.ndarray) -> bool:
    return len(rows) > 0 and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1))


class _ArrayReader:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.n_rows = array.shape[0]
        self.name = getattr(array, "filename", None) or "features array"

    def read(self, rows: np.ndarray) -> np.ndarray:
        if _consecutive(rows):
            return np.array(self.array[rows[0] : rows[-1] + 1])
        return np.asarray(self.array[rows])

    def close(self) -> None:
        pass


class _NpyReader:
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)  # maps, touches no data page
        except (OSError, ValueError) as error:
            raise PoolError(f"{path}: cannot open .npy file: {error}") from error
        if not isinstance(header, np.memmap) or header.ndim == 0 or not header.flags.c_contiguous:
            raise PoolError(f"{path}: expected a C-ordered array with rows, got {header.dtype} {header.shape}")
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.n_rows = self.shape[0]
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._memmap: np.ndarray | None = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        if _consecutive(rows):
            out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
            self.handle.seek(self.offset + int(rows[0]) * self.row_bytes)
            if self.handle.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise PoolError(f"{self.name}: file is shorter than its header says")
            return out
        if self._memmap is None:
            self._memmap = np.load(self.name, mmap_mode="r", allow_pickle=False)
        return np.asarray(self._memmap[rows])

    def close(self) -> None:
        self.handle.close()
        self._memmap = None


class _ParquetReader:
    def __init__(self, path: Path, columns: Sequence[str] | None) -> None:
        import pyarrow.parquet as pq

        self.name = str(path)
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for non-Parquet
            raise PoolError(f"{path}: cannot open Parquet file: {error}") from error
        schema = self.file.schema_arrow
        self.columns = list(schema.names) if columns is None else [str(c) for c in columns]
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise PoolError(f"{path}: column {missing[0]!r} not found; columns are {schema.names}")
        import pyarrow as pa

        for column in self.columns:
            kind = schema.field(column).type
            value_type = kind.value_type if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) else kind
            if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
                raise PoolError(f"{path}: feature column {column!r} is not numeric ({kind}); pass columns=[...]")
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_rows = int(self.starts[-1])
        self._cached: tuple[int, np.ndarray] | None = None

    def _group(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            table = self.file.read_row_group(index, columns=self.columns)
            arrays = [_column_to_numpy(table.column(c), c, len(table), self.name) for c in self.columns]
            self._cached = (index, arrays[0] if len(arrays) == 1 else np.column_stack(arrays))
        return self._cached[1]

    def read(self, rows: np.ndarray) -> np.ndarray:
        groups = np.searchsorted(self.starts, rows, side="right") - 1
        parts, order = [], []
        # Visit each row group once (in order of first use), then restore the rows' order.
        for index in dict.fromkeys(groups.tolist()):
            where = np.flatnonzero(groups == index)
            parts.append(self._group(index)[rows[where] - self.starts[index]])
            order.append(where)
        out = np.concatenate(parts)
        inverse = np.empty(len(rows), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(rows))
        return out[inverse]

    def close(self) -> None:
        self._cached = None


def _column_to_numpy(column, name: str, n_rows: int, where: str) -> np.ndarray:
    """One Parquet column as ``[n, 1]`` (scalar) or ``[n, D]`` (one list per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise PoolError(f"{where}: feature column {name!r} holds nulls")
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        values = pc.list_flatten(column).to_numpy()
        return values.reshape(n_rows, -1)
    return column.to_numpy().reshape(n_rows, 1)
