"""How an item looks to a person: an image as PNG at a readable size, a vector as named values in file units."""

from __future__ import annotations

import io

import numpy as np

from data import FeatureStore

IMAGE_MIN_SIDE = 224
"""Images are enlarged (each pixel an integer square) to at least this many pixels on their longer side."""


def image_png(image_C_H_W: np.ndarray, min_side: int = IMAGE_MIN_SIDE) -> bytes:
    """An image as PNG: grey for one channel, RGB(A) for three (four), min–max scaled, enlarged by an integer."""
    import matplotlib.image

    image = np.asarray(image_C_H_W, dtype=np.float64)
    low, high = image.min(), image.max()
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
    named as in the file (``x0``, ``x1``, … when it named none)."""
    x = np.asarray(features.features[row], dtype=np.float64)
    if (stats := features.standardization) is not None:
        mean, std = stats
        x = x * std + mean
    return [(name, f"{value:.4g}") for name, value in zip(features.feature_names, x, strict=True)]
