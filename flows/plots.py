"""PNG plots a reviewer looks at in the MLflow UI (matplotlib's Agg canvas: no display, no pyplot).

Figures are plain ``Figure`` objects with fixed margins: no pyplot state to import or clean up, and no
``tight_layout`` pass, which drew every figure twice (half of a plot's time, measured). Each kind of figure is built
once per process and given new data for every round (:func:`_figure`). matplotlib is imported on the first plot, so
importing the round flow does not pay for it.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path

import numpy as np

_TITLE_Y = 1.01
"""Axes titles at a fixed height: matplotlib's automatic placement measures every tick label first (a fifth of a
plot's time, measured)."""


def reliability_diagram(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path: Path) -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal of perfect calibration."""
    n_bins = len(counts)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    filled = counts > 0
    with _drawing:
        fig, (bars, points) = _figure(("reliability", n_bins), lambda: _reliability_figure(centers))
        for bar, height, shown in zip(bars, accuracy, filled, strict=True):
            bar.set_height(height if shown else 0.0)
            bar.set_visible(bool(shown))
        points.set_data(centers[filled], confidence[filled])
        fig.savefig(path, dpi=100)
    return path


def _reliability_figure(centers: np.ndarray):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    bars = ax.bar(
        centers, np.zeros_like(centers), width=1 / len(centers), edgecolor="black", alpha=0.7, label="accuracy"
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    (points,) = ax.plot([], [], "o", color="tab:red", markersize=3, label="mean confidence")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Reliability (test split)", y=_TITLE_Y)
    ax.legend(loc="upper left", fontsize=8)
    return fig, (list(bars), points)


def uncertainty_histogram(aleatoric: np.ndarray, epistemic: np.ndarray, edges: np.ndarray, path: Path) -> Path:
    """Histograms (counts over shared bin ``edges``) of aleatoric (expected entropy) and epistemic (BALD)
    uncertainty over the scored pool."""
    return _redraw("uncertainty", _uncertainty_figure, [(aleatoric, edges), (epistemic, edges)], path)


def _uncertainty_figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.15, top=0.91, wspace=0.35)
    axes = fig.subplots(1, 2, sharex=True)
    panels = []
    for ax, (title, color) in zip(
        axes, (("aleatoric: E[H[p]]", "tab:blue"), ("epistemic: BALD", "tab:orange")), strict=True
    ):
        panels.append(ax.stairs([0.0], [0.0, 1.0], fill=True, color=color))
        ax.set(xlabel="nats", ylabel="pool items")
        ax.set_title(title, y=_TITLE_Y)
    return fig, panels


def learning_curve(
    n_labeled: list[int],
    accuracy: list[float],
    nll: list[float],
    agreement: list[float | None],
    threshold: float,
    path: Path,
) -> Path:
    """Test accuracy, NLL and the stop set's agreement with the round before (Cohen's κ; ``None`` where a round had
    nothing to compare with) against the number of labels, one point per round so far; a dashed line at the κ the
    stopping signal asks for (``threshold``)."""
    kappas = [np.nan if k is None else k for k in agreement]
    span = [n_labeled[0], n_labeled[-1]]
    data = [(n_labeled, accuracy), (n_labeled, nll), (n_labeled, kappas), (span, [threshold, threshold])]
    return _redraw("learning_curve", _learning_curve_figure, data, path)


def _learning_curve_figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.2))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.15, top=0.91, wspace=0.3)
    axes = fig.subplots(1, 3, sharex=True)
    lines = []
    panels = (("test accuracy", "tab:green"), ("test NLL", "tab:red"), ("stop-set agreement (Cohen's κ)", "tab:blue"))
    for ax, (title, color) in zip(axes, panels, strict=True):
        lines.extend(ax.plot([], [], marker="o", markersize=3, color=color))
        ax.set(xlabel="labels")
        ax.set_title(title, y=_TITLE_Y)
        ax.grid(alpha=0.3)
    lines.extend(axes[2].plot([], [], "--", color="grey", linewidth=1))  # the κ the stopping signal asks for
    return fig, lines


def warm_up() -> None:
    """Build the figures a round redraws and render one to memory: matplotlib's import, fonts and first draw (~0.5 s
    of a process's first round on digits, measured) then happen before the round, e.g. while Prefect's temporary server
    starts (the CLI's warm-up)."""
    with _drawing:
        fig, _ = _figure("uncertainty", _uncertainty_figure)
        _figure("learning_curve", _learning_curve_figure)
        fig.savefig(io.BytesIO(), dpi=100)


_drawing = threading.Lock()
"""Held while a kept figure is updated and saved: rounds of a process may log from several threads."""
_figures: dict = {}


def _redraw(kind, build, data: list[tuple], path: Path) -> Path:
    """Save the kept figure of ``kind`` (:func:`_figure`) with each data artist set to its entry of ``data`` (the
    arguments of its ``set_data``) and its axes rescaled to it."""
    with _drawing:
        fig, artists = _figure(kind, build)
        for artist, arguments in zip(artists, data, strict=True):
            artist.set_data(*arguments)
            artist.axes.relim()
            artist.axes.autoscale_view()
        fig.savefig(path, dpi=100)
    return path


def _figure(kind, build):
    """The figure of ``kind`` and its data artists, built by ``build`` on first use and then kept for the process:
    the next round only sets new data, so matplotlib keeps the axes' tick artists instead of making them again
    (a quarter of the plotting time: a round's three PNGs 0.40 → 0.30 s on 2 cores, measured). Call with
    ``_drawing`` held."""
    if kind not in _figures:
        _figures[kind] = build()
    return _figures[kind]


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
    ``GALLERY_MAX`` by rank.

    Drawn with Pillow in matplotlib's DejaVu fonts: a mosaic of pictures and lines of text need no axes, and
    matplotlib rendered text a glyph at a time (a digits round's table: 105 ms, now a few ms; an axes' ``imshow``
    also resampled the mosaic at 1:1)."""
    from PIL import Image, ImageDraw

    shown = sorted(items, key=lambda q: q.rank)[:GALLERY_MAX]

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def predicted(q) -> str:
        return "–" if q.predicted is None else classes[q.predicted]

    title_font = _font("DejaVuSans.ttf", 12)
    if images is not None:
        rows = -(-len(shown) // columns)
        width = _TILE_WIDTH * columns
        picture = Image.new("RGB", (width, _TILE_HEIGHT * rows + _TITLE), "white")
        mosaic = np.round(_mosaic(images[: len(shown)], rows, columns) * 255).astype(np.uint8)
        picture.paste(Image.fromarray(mosaic), (0, _TITLE))
        draw = ImageDraw.Draw(picture)
        title = "Queued for labeling (predicted class, its probability, acquisition score)"
        draw.text((width / 2, _TITLE / 2), title, font=title_font, fill="black", anchor="mm")
        caption_font = _font("DejaVuSans.ttf", 10)
        for index, q in enumerate(shown):
            row, column = divmod(index, columns)
            caption = f"#{q.rank} {q.item_id}\n{predicted(q)} p={number(q.probability, 2)}  score {number(q.score, 3)}"
            xy = ((column + 0.5) * _TILE_WIDTH, _TITLE + _TILE_HEIGHT * row + 4)
            draw.multiline_text(xy, caption, font=caption_font, fill="black", anchor="ma", align="center", spacing=2)
    else:
        named = [row[:GALLERY_FEATURES] for row in vectors[: len(shown)]] if vectors else []
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
                *([texts[index] if index < len(texts) else ""] if texts else []),
            ]
            for index, q in enumerate(shown)
        ] or [["–"] * len(header)]
        widths = [max(len(str(row[column])) for row in [header, *cells]) for column in range(len(header))]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
        rule = "  ".join("─" * width for width in widths)
        table = "\n".join(["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule, *lines])
        table_font = _font("DejaVuSansMono.ttf", 12)
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left, top, right, bottom = measure.multiline_textbbox((0, 0), table, font=table_font, spacing=4)
        width = max(right - left, measure.textbbox((0, 0), "Queued for labeling", font=title_font)[2]) + 40
        picture = Image.new("RGB", (width, _TITLE + bottom - top + 30), "white")
        draw = ImageDraw.Draw(picture)
        draw.text((width / 2, _TITLE / 2), "Queued for labeling", font=title_font, fill="black", anchor="mm")
        draw.multiline_text((20 - left, _TITLE + 10 - top), table, font=table_font, fill="black", spacing=4)
    picture.save(path, format="png")
    return path


_TILE_WIDTH, _TILE_HEIGHT, _TITLE = 200, 240, 30
"""The image gallery's geometry in pixels: a tile per item (its caption above its picture) and the title's band."""


@functools.cache
def _font(name: str, size: int):
    """One of the DejaVu fonts that matplotlib ships (``mpl-data/fonts/ttf``) at ``size`` pixels, for Pillow."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _mosaic(images: list[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """RGB ``[rows · _TILE_HEIGHT, columns · _TILE_WIDTH, 3]`` in [0, 1] on white: each picture scaled to its own
    range (as ``imshow`` shows one picture) and enlarged by a whole factor, below its caption's band."""
    side = _TILE_WIDTH - 20
    canvas = np.ones((rows * _TILE_HEIGHT, columns * _TILE_WIDTH, 3))
    for index, image in enumerate(images):
        picture = np.asarray(image, dtype=np.float64)
        picture = np.repeat(picture, 3, axis=0) if picture.shape[0] == 1 else picture[:3]
        low, high = picture.min(), picture.max()
        picture = (picture - low) / (high - low) if high > low else np.zeros_like(picture)
        scale = max(1, side // max(picture.shape[1:]))
        picture = picture.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
        row, column = divmod(index, columns)
        top = row * _TILE_HEIGHT + 36  # below the two caption lines
        left = column * _TILE_WIDTH + (_TILE_WIDTH - picture.shape[1]) // 2
        canvas[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return canvas
