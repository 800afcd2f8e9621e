"""Terminal output of a campaign: one line per round (rich)."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)
errors = Console(highlight=False, stderr=True)

NOTHING_QUEUED = "nothing new was queued (stopping.when_stable: stop)"
"""What a round says when its predictions are stable and ``stopping.when_stable`` is ``stop``."""

# (title, metric key, format of the value); numbers right-aligned, the selected model's name last.
_COLUMNS = (
    ("round", "round", "{:.0f}"),
    ("labels", "n_labeled", "{:.0f}"),
    ("test n", "n_test", "{:.0f}"),
    ("test acc", "test_accuracy", "{:.3f}"),
    ("NLL", "test_nll", "{:.3f}"),
    ("ECE", "test_ece", "{:.3f}"),
    ("acq s", "acquisition_seconds", "{:.2f}"),
    ("train s", "train_seconds", "{:.2f}"),
    ("other s", "overhead_seconds", "{:.2f}"),
)


def _line(cells: list[str], model: str) -> str:
    return "  ".join(cell.rjust(max(len(title), 5)) for cell, (title, _, _) in zip(cells, _COLUMNS, strict=True)) + (
        f"  {model}"
    )


def print_header() -> None:
    console.print(_line([title for title, _, _ in _COLUMNS], "model"), style="bold")


def pool_exhausted(metrics: dict) -> bool:
    """Whether a round found no pool item left to score (every one labeled, queued or skipped)."""
    return metrics.get("pool_size") == 0


def print_round(metrics: dict) -> None:
    cells = [fmt.format(metrics[key]) if metrics.get(key) is not None else "-" for _, key, fmt in _COLUMNS]
    console.print(_line(cells, metrics.get("selected") or "-"))
    if metrics.get("stopping_note"):
        console.print(f"round {metrics['round']:.0f}: {metrics['stopping_note']}", style="green", soft_wrap=True)
    if metrics.get("stopped_when_stable"):
        console.print(
            f"round {metrics['round']:.0f}: {NOTHING_QUEUED}",
            style="green",
            soft_wrap=True,
        )
    for warning in metrics.get("warnings") or ():
        errors.print(f"warning: round {metrics['round']:.0f}: {warning}", style="yellow", soft_wrap=True)
    if pool_exhausted(metrics):
        console.print(
            f"round {metrics['round']:.0f}: the pool is exhausted (every item is labeled, queued or skipped); "
            "nothing was queued",
            soft_wrap=True,
        )
