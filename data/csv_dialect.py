"""Which character separates a CSV file's cells: spreadsheets save CSV with ``;`` where the comma is the decimal
mark, and some tools write tabs or bars. Used by every CSV reader here (datasets, answer files), so a file saved in
one locale reads as it does in another."""

from __future__ import annotations

import csv

CSV_SEPARATORS = (",", ";", "\t", "|")
"""Cell separators a CSV file may use, in order of preference on a tie."""


def csv_separator(header_line: str) -> str:
    """The one of :data:`CSV_SEPARATORS` that splits ``header_line`` (quotes respected) into the most cells; a comma
    when none splits it."""
    return max(CSV_SEPARATORS, key=lambda separator: len(csv_cells(header_line, separator)))


def csv_cells(line: str, separator: str) -> list[str]:
    """The cells of one line of CSV."""
    return next(csv.reader([line], delimiter=separator), [])
