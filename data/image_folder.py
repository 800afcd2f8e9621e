"""A folder of image files as one array: the layout people keep photos and scans in.

Layout (``torchvision``'s ``ImageFolder`` convention, plus what active learning needs: unlabelled images)::

    photos/                 without train/ and test/: every image is a training item
      cat/001.jpg           labelled "cat" (a class folder, images at any depth below it)
      dog/                  an empty class folder declares a class no image has yet
      0042.png              directly in the folder: unlabelled, part of the pool
      README.md             other files at the top are ignored

    photos/train/…          or: train/ laid out as above,
    photos/test/<class>/…   and test/ whose images must all sit in class folders

Inside train/, test/ and class folders every file must be an image (``IMAGE_SUFFIXES``; hidden files and
``Thumbs.db`` / ``desktop.ini`` aside), so that no image is silently left out. An item's id is its path
relative to the folder (``train/cat/001.jpg``): people can find the file from the labeling page or an export.

Pixels: a phone's EXIF orientation is applied; transparency is laid on white; every image becomes grey (one
channel) unless one of them has colour (then RGB, three channels); 16-bit grey images keep their depth. All
must have the same size, unless ``size`` resizes each (Pillow, bilinear with antialiasing). Decoding raises
:class:`~data.datasets.DatasetError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
_DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
"""Pillow's modes of 16-bit grey images (a 16-bit PNG opens as ``I;16`` or ``I``), kept at full depth."""
_GREY_MODES = frozenset({"1", "L", "LA", "La"}) | _DEEP_MODES
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder, in path order.

    Attributes
    ----------
    where : str
        The folder's resolved path (for messages).
    pixels : np.ndarray
        ``[N, C, H, W]``: ``uint8``, or float32 in [0, 1] when any image has 16 bits.
    ids : np.ndarray
        Unicode ``[N]``: each file's path relative to the folder, with ``/`` separators.
    labels : np.ndarray
        Unicode ``[N]``: the name of the file's class folder, ``""`` outside one (unlabelled).
    is_test : np.ndarray or None
        Bool ``[N]``: whether the file is under ``test/``; None for a folder without train/ and test/.
    classes : tuple of str
        The class folders' names (empty ones too), in numeric order when all are integers, else sorted.
    """

    where: str
    pixels: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray | None
    classes: tuple[str, ...]


def read_image_folder(
    root: str | Path,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageFolder:
    """Read every image of ``root`` (see the module's layout) into one array.

    Parameters
    ----------
    root : str or Path
        The folder.
    size : (height, width), optional
        Resize every image to this size; without it, all images must have the same size.
    channels : 1 or 3, optional
        Make every image grey (1) or RGB (3), e.g. to match the images a campaign already has; by default
        RGB when any image has colour, else grey.
    progress : callable, optional
        Told ``(done, total)`` as the images are decoded (a folder of photos takes minutes).

    Raises
    ------
    DatasetError
        Not a folder, no images, a file that is not an image or cannot be decoded, an unlabelled test image,
        images of different sizes without ``size`` (naming two files and their sizes).
    """
    root = Path(root).expanduser()
    where = str(root.resolve())
    if not root.is_dir():
        raise DatasetError(f"{where}: not a folder")
    if channels not in (None, 1, 3):
        raise DatasetError(f"{where}: images can be made grey (1 channel) or RGB (3), not {channels} channels")
    top = _visible(root)
    parts = [entry for entry in top if entry.is_dir() and entry.name in SPLITS]
    files: list[tuple[Path, str, bool]] = []
    classes: set[str] = set()
    if parts:
        stray = [entry for entry in top if entry.is_dir() and entry.name not in SPLITS]
        stray += [entry for entry in top if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
        if stray:
            raise DatasetError(
                f"{where}: {stray[0].name!r} sits beside train/ and test/; a folder with train/ or test/ keeps "
                "every image in them"
            )
        for part in parts:
            files += _scan(part, root, classes, is_test=part.name == "test")
    else:
        files = _scan(root, root, classes, is_test=False)
    if not files:
        raise DatasetError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder or its class folders")
    ids = np.array([path.relative_to(root).as_posix() for path, _, _ in files], dtype=str)
    return ImageFolder(
        where=where,
        pixels=_decode_all([path for path, _, _ in files], ids, where, size, channels, progress),
        ids=ids,
        labels=np.array([label for _, label, _ in files], dtype=str),
        is_test=np.array([test for _, _, test in files], dtype=bool) if parts else None,
        classes=_class_order(classes),
    )


def _visible(directory: Path) -> list[Path]:
    """The entries of ``directory`` that are not hidden or system files, sorted by name."""
    with os.scandir(directory) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".") and entry.name.lower() not in _SYSTEM_FILES
        )
    return [directory / name for name in names]


def _scan(part: Path, root: Path, classes: set[str], *, is_test: bool) -> list[tuple[Path, str, bool]]:
    """``(file, class or "", is_test)`` of the images of one part (the folder, or its train/ or test/)."""
    files = []
    for entry in _visible(part):
        if entry.is_dir():
            classes.add(entry.name)
            files += [(path, entry.name, is_test) for path in _images_below(entry, root)]
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            if is_test:
                raise DatasetError(
                    f"{root.resolve()}: test image {entry.relative_to(root).as_posix()!r} is not in a class folder; "
                    "every test image needs its label (test/<class>/…)"
                )
            files.append((entry, "", is_test))
        elif part != root:  # inside train/ or test/: everything there should be an image
            _refuse_non_image(entry, root)
    return files


def _images_below(directory: Path, root: Path, above: frozenset[Path] = frozenset()) -> list[Path]:
    """Every image under ``directory`` at any depth, in path order; any other visible file is refused, and so is a
    linked folder that leads back to one of the folders ``above`` it (it would be read forever)."""
    real = directory.resolve()
    if real in above:
        raise DatasetError(
            f"{root.resolve()}: {directory.relative_to(root).as_posix()!r} links back to a folder above it"
        )
    images = []
    for entry in _visible(directory):
        if entry.is_dir():
            images += _images_below(entry, root, above | {real})
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            _refuse_non_image(entry, root)
    return images


def _refuse_non_image(path: Path, root: Path) -> None:
    raise DatasetError(
        f"{root.resolve()}: {path.relative_to(root).as_posix()!r} is not an image file (expected "
        f"{', '.join(IMAGE_SUFFIXES)}); move it out of the image folders"
    )


def _class_order(classes: set[str]) -> tuple[str, ...]:
    """Integer names in numeric order (``2`` before ``10``), else sorted names."""
    if classes and all(name.isdigit() for name in classes):
        return tuple(sorted(classes, key=int))
    return tuple(sorted(classes))


def _decode_all(
    paths: list[Path],
    ids: np.ndarray,
    where: str,
    size: tuple[int, int] | None,
    channels: int | None,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """``[N, C, H, W]`` pixels of ``paths``: headers first (sizes, modes, orientation), then each image decoded."""
    from PIL import Image

    if progress is not None:
        progress(0, len(paths))
    headers = []
    for path, item in zip(paths, ids.tolist(), strict=True):
        try:
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned a quarter
                    width, height = height, width
                headers.append(((height, width), image.mode))
        except Exception as error:  # Pillow raises many types for unreadable files (and DecompressionBombError)
            raise DatasetError(f"{where}: cannot read image {item!r}: {error}") from error
    modes = {mode for _, mode in headers}
    if "F" in modes:
        raise DatasetError(
            f"{where}: image {ids[[m for _, m in headers].index('F')].item()!r} holds floating-point pixels of no "
            "known range; save it as an 8- or 16-bit image"
        )
    if size is None:
        first = headers[0][0]
        other = next((i for i, (shape, _) in enumerate(headers) if shape != first), None)
        if other is not None:
            raise DatasetError(
                f"{where}: images differ in size: {ids[0].item()!r} is {_shape_text(first)} but "
                f"{ids[other].item()!r} is {_shape_text(headers[other][0])} (height × width); set "
                "dataset.image_size (--image-size, e.g. 64 or 48x64) to resize every image"
            )
        size = first
    if channels is None:
        channels = 1 if modes <= _GREY_MODES else 3
    deep = bool(modes & _DEEP_MODES)
    pixels = np.empty((len(paths), channels, *size), dtype=np.float32 if deep else np.uint8)
    for row, (path, item) in enumerate(zip(paths, ids.tolist(), strict=True)):
        try:
            pixels[row] = _decode(path, size, channels, deep)
        except Exception as error:  # a header that read but pixels that do not (truncated files, ...)
            raise DatasetError(f"{where}: cannot read image {item!r}: {error}") from error
        if progress is not None and (row % 256 == 255 or row == len(paths) - 1):
            progress(row + 1, len(paths))
    return pixels


def _decode(path: Path, size: tuple[int, int], channels: int, deep: bool) -> np.ndarray:
    """One image as ``[C, H, W]``: uint8, or float32 in [0, 1] when ``deep``."""
    from PIL import Image, ImageOps

    height, width = size
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in _DEEP_MODES:  # 16-bit grey: resized as floats, at full depth
            plane = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0, mode="F")
            if plane.size != (width, height):
                plane = plane.resize((width, height), Image.Resampling.BILINEAR)
            grey = np.clip(np.asarray(plane, dtype=np.float32), 0.0, 1.0)
            return np.repeat(grey[None], channels, axis=0)
        if image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return array.astype(np.float32) / 255.0 if deep else array


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]} × {shape[1]}"
