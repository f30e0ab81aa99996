"""Image and label-map reading with errors that name the file.

Images are decoded as stored (PIL, RGB) and never rotated by an EXIF tag: the ground
truth is aligned with the stored pixels (ALGORITHM §0).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from qaclims.errors import InputError


def image_size(path: str | os.PathLike, *, verify: bool) -> tuple[int, int]:
    """(height, width) of an image; with `verify` the pixels are decoded too."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if verify:
                img.load()
    except FileNotFoundError as err:
        raise InputError(f"{path}: image listed but missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from err
    return height, width


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """H×W×3 uint8 RGB pixels as stored."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: image missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from err


def read_label_map(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """H×W uint8 label map (0 background, c+1 class c, 255 ignore), range-checked."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise InputError(f"{path}: label map has mode {img.mode}, expected L or P")
            labels = np.asarray(img)
    except FileNotFoundError as err:
        raise InputError(f"{path}: label map missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable label map ({err})") from err
    bad = (labels > num_classes) & (labels != 255)
    if bad.any():
        values = sorted({int(v) for v in np.unique(labels[bad])})
        raise InputError(f"{path}: label values {values} outside 0..{num_classes} and 255 (ignore)")
    return labels


def save_label_png(
    labels: np.ndarray, path: str | os.PathLike, palette: list[int] | None = None
) -> None:
    """Write a uint8 label map as PNG (a palette PNG when `palette` is given)."""
    img = Image.fromarray(labels.astype(np.uint8))
    if palette is not None:
        img.putpalette(palette)
    img.save(path, format="PNG")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples) used for label PNGs."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
