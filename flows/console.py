"""Terminal output of a campaign: one line per round (rich)."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)

_COLUMNS = (
    ("round", "round", "{:>5.0f}"),
    ("labels", "n_labeled", "{:>6.0f}"),
    ("test acc", "test_accuracy", "{:>8.3f}"),
    ("NLL", "test_nll", "{:>6.3f}"),
    ("ECE", "test_ece", "{:>6.3f}"),
    ("acq s", "acquisition_seconds", "{:>6.2f}"),
    ("train s", "train_seconds", "{:>7.2f}"),
)


def print_header() -> None:
    console.print("  ".join(f"{title:>{max(len(title), 5)}}" for title, _, _ in _COLUMNS), style="bold")


def print_round(metrics: dict[str, float]) -> None:
    cells = []
    for title, key, fmt in _COLUMNS:
        width = max(len(title), 5)
        value = metrics.get(key)
        cells.append(fmt.format(value).rjust(width) if value is not None else "-".rjust(width))
    console.print("  ".join(cells))
