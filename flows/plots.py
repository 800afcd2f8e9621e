"""PNG plots a reviewer looks at in the MLflow UI (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def reliability_diagram(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path: Path) -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal of perfect calibration."""
    n_bins = len(counts)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    filled = counts > 0
    ax.bar(centers[filled], accuracy[filled], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centers[filled], confidence[filled], "o", color="tab:red", markersize=3, label="mean confidence")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability (test split)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def uncertainty_histogram(aleatoric: np.ndarray, epistemic: np.ndarray, edges: np.ndarray, path: Path) -> Path:
    """Histograms (counts over shared bin ``edges``) of aleatoric (expected entropy) and epistemic (BALD)
    uncertainty over the scored pool."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharex=True)
    panels = (("aleatoric: E[H[p]]", aleatoric, "tab:blue"), ("epistemic: BALD", epistemic, "tab:orange"))
    for ax, (title, counts, color) in zip(axes, panels, strict=True):
        ax.stairs(counts, edges, fill=True, color=color)
        ax.set(title=title, xlabel="nats", ylabel="pool items")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
