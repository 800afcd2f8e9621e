"""PNG plots a reviewer looks at in the MLflow UI (matplotlib's Agg canvas: no display, no pyplot).

Figures are plain ``Figure`` objects with fixed margins: no pyplot state to import or clean up, and no
``tight_layout`` pass, which drew every figure twice (half of a plot's time, measured). matplotlib is imported on
the first plot, so importing the round flow does not pay for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reliability_diagram(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path: Path) -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal of perfect calibration."""
    from matplotlib.figure import Figure

    n_bins = len(counts)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(4.5, 4.5))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    filled = counts > 0
    ax.bar(centers[filled], accuracy[filled], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centers[filled], confidence[filled], "o", color="tab:red", markersize=3, label="mean confidence")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability (test split)")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def uncertainty_histogram(aleatoric: np.ndarray, epistemic: np.ndarray, edges: np.ndarray, path: Path) -> Path:
    """Histograms (counts over shared bin ``edges``) of aleatoric (expected entropy) and epistemic (BALD)
    uncertainty over the scored pool."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.15, top=0.91, wspace=0.35)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (("aleatoric: E[H[p]]", aleatoric, "tab:blue"), ("epistemic: BALD", epistemic, "tab:orange"))
    for ax, (title, counts, color) in zip(axes, panels, strict=True):
        ax.stairs(counts, edges, fill=True, color=color)
        ax.set(title=title, xlabel="nats", ylabel="pool items")
    fig.savefig(path, dpi=100)
    return path


def learning_curve(n_labeled: list[int], accuracy: list[float], nll: list[float], path: Path) -> Path:
    """Test accuracy and NLL against the number of labels, one point per round so far."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.91, wspace=0.3)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (title, values, color) in zip(
        axes, (("test accuracy", accuracy, "tab:green"), ("test NLL", nll, "tab:red")), strict=True
    ):
        ax.plot(n_labeled, values, marker="o", markersize=3, color=color)
        ax.set(title=title, xlabel="labels")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return path


GALLERY_MAX = 20
"""Items shown in a queued batch's gallery (the best-ranked ones)."""
GALLERY_FEATURES = 4
"""Vector features shown per item in the gallery's table (the first ones, by their names)."""


def queued_gallery(
    items: list,
    classes: list[str],
    images: list[np.ndarray] | None,
    path: Path,
    *,
    columns: int = 5,
    vectors: list[list[tuple[str, str]]] | None = None,
    texts: list[str] | None = None,
) -> Path:
    """The queued batch as a reviewer checks it: each item (``QueuedItem``: id, rank, predicted class, its
    probability, acquisition score and epistemic / aleatoric parts) as a picture with its caption when ``images``
    (``[C, H, W]`` each, raw pixels) are given, else as a table of the same columns, followed by the first
    ``GALLERY_FEATURES`` of ``vectors`` (each item's ``(name, value)`` features, in the order of ``items`` by
    rank) under their names and by a snippet of each item's text when ``texts`` are given (same order); the first
    ``GALLERY_MAX`` by rank."""
    from matplotlib.figure import Figure

    shown = sorted(items, key=lambda q: q.rank)[:GALLERY_MAX]

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def predicted(q) -> str:
        return "–" if q.predicted is None else classes[q.predicted]

    if images is not None:
        rows = -(-len(shown) // columns)
        height = 2.4 * rows + 0.3  # inches: a caption above every row, the title above all
        fig = Figure(figsize=(2.0 * columns, height))
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, hspace=0.6, wspace=0.1)
        for index, (q, image) in enumerate(zip(shown, images, strict=False)):
            ax = fig.add_subplot(rows, columns, index + 1)
            image = np.asarray(image, dtype=np.float64)
            ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")
            ax.set_axis_off()
            ax.set_title(
                f"#{q.rank} {q.item_id}\n{predicted(q)} p={number(q.probability, 2)}  score {number(q.score, 3)}",
                fontsize=7,
            )
        fig.suptitle("Queued for labeling (predicted class, its probability, acquisition score)", fontsize=9)
    else:
        named = [row[:GALLERY_FEATURES] for row in vectors[: len(shown)]] if vectors else []
        width = 9 + 1.3 * len(named[0] if named else ()) + (6 if texts else 0)
        fig = Figure(figsize=(width, 0.22 * len(shown) + 0.7))
        ax = fig.add_subplot()
        ax.set_axis_off()
        header = ["rank", "item", "predicted", "p", "score", "epistemic", "aleatoric"]
        header += [name for name, _ in (named[0] if named else ())] + (["text"] if texts else [])
        cells = [
            [
                str(q.rank),
                q.item_id,
                predicted(q),
                number(q.probability, 2),
                number(q.score, 3),
                number(q.epistemic, 3),
                number(q.aleatoric, 3),
                *(value for _, value in (named[index] if index < len(named) else ())),
                *([_plain(texts[index]) if index < len(texts) else ""] if texts else []),
            ]
            for index, q in enumerate(shown)
        ]
        units = [1.0] * len(header)
        if texts:
            units[-1] = 5.5  # a text snippet needs room: matplotlib would otherwise shrink every cell's font to fit it
        widths = [0.96 * u / sum(units) for u in units]
        table = ax.table(
            cellText=cells or [["–"] * len(header)],
            colLabels=header,
            colWidths=widths,
            loc="upper center",
            cellLoc="left",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        for (_, column), cell in table.get_celld().items():
            if texts and column == len(header) - 1:
                cell.PAD = 0.02  # of the cell's width: the default 0.1 of a wide cell is a wide gap
        ax.set_title("Queued for labeling", fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def _plain(text: str) -> str:
    """``text`` drawn as it is: a ``$`` would start matplotlib's mathtext."""
    return text.replace("$", r"\$")
