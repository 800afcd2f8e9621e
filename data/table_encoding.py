"""How a table's feature columns become numbers: recorded once, applied to every row that comes later.

Spreadsheets people export hold more than numbers:

* a **category column** (``island``: ``Biscoe``, ``Dream``…) becomes one 0/1 feature per value (named
  ``island=Biscoe``), its values taken from the rows of the first import; a missing cell is all zeros;
* a **number column with missing cells** keeps the number (the train rows' mean where it is missing) and gains a
  0/1 feature ``<column> missing``, so a model can tell an imputed value from a measured one.

The encoding is stored with the imported features, so rows ingested later are encoded alike (a category value the
campaign has not seen, or a missing number in a column that had none, is refused with its row: it has no feature
to go to), and people are shown each item as the file had it: ``island = Dream``, ``bill_length = missing``.
A column whose cells are mostly numbers is a number column with typos, not a category column, and one with more
than :data:`MAX_CATEGORIES` values is more likely an id or free text: both are refused with what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from data.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

MAX_CATEGORIES = 50
"""Most distinct values a category column may have (each becomes a feature)."""
MISSING = "missing"
"""How a missing cell is shown to people."""


@dataclass(frozen=True)
class TableEncoding:
    """The feature columns of a table, in file order, and how each became features.

    Attributes
    ----------
    columns : tuple of str
        The file's feature columns.
    categories : dict of str to tuple of str
        Each category column's values (one feature each, in this order).
    flagged : tuple of str
        Number columns that had missing cells: each has a ``<column> missing`` feature after it.
    """

    columns: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flagged: tuple[str, ...] = ()

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str], ids: np.ndarray, where: str) -> TableEncoding:
        """The encoding of ``columns`` of ``frame`` (every row: the features are not labels, so test rows may show
        a category too)."""
        categories, flagged = {}, []
        for column in columns:
            numbers, typos, cells = _numbers(frame[column], ids, where)
            if not typos.size:  # numbers (a cell of spaces is empty)
                if np.isnan(numbers).any():
                    flagged.append(column)
                continue
            present = cells[cells != ""]
            if len(present) - typos.size >= len(present) / 2:  # numbers with a few typos ("?", "12,5")
                row = typos[0]
                raise DatasetError(
                    f"{where}: feature column {column!r} holds numbers, but row {row} (id {ids[row].item()!r}) holds "
                    f"{cells[row]!r}; correct it, or leave the cell empty (a missing value)"
                )
            distinct = tuple(sorted(set(present.tolist())))
            if len(distinct) > MAX_CATEGORIES:
                raise DatasetError(
                    f"{where}: feature column {column!r} has {len(distinct)} distinct values, e.g. "
                    f"{list(distinct[:3])}: too many for a category column (at most {MAX_CATEGORIES}); if it is an "
                    "id or free text, name it --id-column or --text-column, else leave it out of the file"
                )
            categories[column] = distinct
        return cls(tuple(columns), categories, tuple(flagged))

    @property
    def feature_names(self) -> list[str]:
        """One name per feature: ``column``, ``column=value`` for a category, ``column missing`` for a flag."""
        names = []
        for column in self.columns:
            if column in self.categories:
                names += [f"{column}={value}" for value in self.categories[column]]
            else:
                names += [column] + ([f"{column} {MISSING}"] if column in self.flagged else [])
        return names

    def transform(self, frame: pd.DataFrame, ids: np.ndarray, where: str) -> np.ndarray:
        """``[N, D]`` float64 features of ``frame``'s rows; a flagged column's missing numbers are NaN (imputed
        by the caller, who knows the train rows)."""
        given = [str(column) for column in frame.columns]
        for column in [c for c in self.columns if c not in given] + [c for c in given if c not in self.columns]:
            what = "is missing" if column in self.columns else "is not one of the campaign's"
            raise DatasetError(f"{where}: feature column {column!r} {what}; they are {list(self.columns)}")
        parts = []
        for column in self.columns:
            values = frame[column]
            if column in self.categories:
                cells, known = _cells(values, ids, where), self.categories[column]
                index = {value: i for i, value in enumerate(known)}
                unknown = np.flatnonzero([cell != "" and cell not in index for cell in cells.tolist()])
                if unknown.size:
                    row = unknown[0]
                    raise DatasetError(
                        f"{where}: row {row} (id {ids[row].item()!r}), column {column!r}: {cells[row]!r} is not one "
                        f"of the values the campaign's column had, {list(known)}"
                    )
                one_hot = np.zeros((len(cells), len(known)))
                rows = np.flatnonzero(cells != "")
                one_hot[rows, [index[cell] for cell in cells[rows].tolist()]] = 1.0
                parts.append(one_hot)
                continue
            number, typos, cells = _numbers(values, ids, where)
            if typos.size:
                row = typos[0]
                raise DatasetError(
                    f"{where}: feature column {column!r} holds numbers in the campaign, but row {row} "
                    f"(id {ids[row].item()!r}) holds {cells[row]!r}"
                )
            missing = np.isnan(number)
            if missing.any() and column not in self.flagged:
                row = np.flatnonzero(missing)[0]
                raise DatasetError(
                    f"{where}: row {row} (id {ids[row].item()!r}), column {column!r} is empty; the campaign's column "
                    "had no missing values when it was imported, so no feature can say so"
                )
            parts.append(number[:, None])
            if column in self.flagged:
                parts.append(missing[:, None].astype(np.float64))
        x = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        bad = np.argwhere(np.isinf(x))
        if bad.size:
            row, col = bad[0]
            name = self.feature_names[col]
            raise DatasetError(f"{where}: inf in row {row} (id {ids[row].item()!r}), column {name!r}")
        return x

    def readable(self, x: np.ndarray) -> list[tuple[str, str]]:
        """``(column, value)`` of one item's features ``x`` in file units, as the file had them."""
        shown, at = [], 0
        for column in self.columns:
            if column in self.categories:
                width = len(self.categories[column])
                hot = np.flatnonzero(x[at : at + width] > 0.5)
                shown.append((column, self.categories[column][hot[0]] if hot.size else MISSING))
                at += width
                continue
            value = f"{x[at]:.4g}"
            at += 1
            if column in self.flagged:
                value = MISSING if x[at] > 0.5 else value
                at += 1
            shown.append((column, value))
        return shown

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "categories": {column: list(values) for column, values in self.categories.items()},
            "flagged": list(self.flagged),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableEncoding:
        categories = {column: tuple(values) for column, values in data["categories"].items()}
        return cls(tuple(data["columns"]), categories, tuple(data["flagged"]))


def _numbers(values: pd.Series, ids: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A column as float64 numbers (NaN where a cell is empty), the rows whose cells are not numbers, and the cells
    as text (:func:`_cells`) when the column is not numbers already (None then: no text was made)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(0, dtype=np.int64), None
    cells = _cells(values, ids, where)
    numbers = pd.to_numeric(pd.Series(np.where(cells == "", None, cells)), errors="coerce").to_numpy(np.float64)
    return numbers, np.flatnonzero((cells != "") & np.isnan(numbers)), cells


def _cells(values: pd.Series, ids: np.ndarray, where: str) -> np.ndarray:
    """A column's cells as stripped text, ``""`` where missing; a cell holding a list (Parquet) is refused."""
    import pandas as pd

    cells = values.tolist()
    nested = next((row for row, cell in enumerate(cells) if not pd.api.types.is_scalar(cell)), None)
    if nested is not None:
        raise DatasetError(
            f"{where}: feature column {values.name!r} in row {nested} (id {ids[nested].item()!r}) holds "
            f"{np.asarray(cells[nested]).tolist()!r}, expected one value"
        )
    return np.array(["" if pd.isna(cell) else str(cell).strip() for cell in cells], dtype=object)
