"""How an item looks to a person: an image as PNG at a readable size, a vector as named values in file units, a
text as its text."""

from __future__ import annotations

import io

import numpy as np

from data import FeatureStore

IMAGE_MIN_SIDE = 224
"""Images are enlarged (each pixel an integer square) to at least this many pixels on their longer side."""
SNIPPET_LENGTH = 60
"""Characters of an item's text where only a glimpse fits (the queued gallery)."""


def image_png(image_C_H_W: np.ndarray, min_side: int = IMAGE_MIN_SIDE) -> bytes:
    """An image as PNG: grey for one channel, RGB(A) for three (four), enlarged by an integer.

    Pixels in [0, 1] — what every import makes of 8- and 16-bit images — are shown as they are, so a photo keeps
    its colours and a dim scan stays dim; other ranges (an ``.npz`` of floats) are min–max scaled to [0, 1].
    """
    import matplotlib.image

    image = np.asarray(image_C_H_W, dtype=np.float64)
    low, high = image.min(), image.max()
    if low < 0 or high > 1:
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    scale = max(1, -(-min_side // max(image.shape[1:])))
    image = image.repeat(scale, axis=1).repeat(scale, axis=2)
    buffer = io.BytesIO()
    if image.shape[0] == 1:
        matplotlib.image.imsave(buffer, image[0], cmap="gray", vmin=0, vmax=1, format="png")
    else:
        matplotlib.image.imsave(buffer, image.transpose(1, 2, 0), format="png")
    return buffer.getvalue()


def feature_table(features: FeatureStore, row: int) -> list[tuple[str, str]]:
    """A vector's features as ``(name, value)`` in the units of the imported file (standardisation undone),
    named as in the file (``x0``, ``x1``, … when it named none); a table's category column as its value, a missing
    cell as ``missing``. The features a text column became are left out:
    people read the text itself (:func:`item_text`)."""
    x = np.asarray(features.features[row], dtype=np.float64)
    if (stats := features.standardization) is not None:
        mean, std = stats
        x = x * std + mean
        x[np.abs(x) <= 1e-6 * (np.abs(mean) + std)] = 0.0  # float32 rounding of a stored 0, not "-2.5e-09"
    shown = len(x) - (text.dim if (text := features.text_features) is not None else 0)
    if (encoding := features.table_encoding) is not None:  # categories by name, missing cells as missing
        return encoding.readable(x[:shown])
    return [(name, f"{value:.4g}") for name, value in zip(features.feature_names[:shown], x[:shown], strict=True)]


def item_text(features: FeatureStore, row: int) -> str | None:
    """The item's text when the dataset has a text column, else None."""
    return None if features.texts is None else features.texts[row]


def snippet(text: str, length: int = SNIPPET_LENGTH) -> str:
    """The text on one line, cut to ``length`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1].rstrip() + "…"
