"""Colours of label maps in figures: one distinct colour per class of a dataset, and a legend.

VOC-sized datasets (at most 21 labels with background) keep the PASCAL VOC colour map
readers know. Past 21 the VOC map's later entries differ by as little as 32 in one channel
(COCO's 81 labels would hold near-twins), so larger datasets get colours picked one by one
as far as possible (in RGB) from every colour already taken: deterministic, and as distinct
as the number of classes allows. Background stays black and ignore (255) VOC's light grey.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from matplotlib.patches import Patch

from qaclims.errors import InputError
from qaclims.images import voc_palette

IGNORE = 255
VOC_LABELS = 21  # background + the 20 VOC classes
GRID_LEVELS = 16  # candidate colours: a 16³ RGB grid


def _voc() -> np.ndarray:
    return np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def _farthest_colours(count: int, taken: np.ndarray) -> np.ndarray:
    """`count` grid colours, each the one farthest from all taken before it (ties: first)."""
    levels = np.linspace(0, 255, GRID_LEVELS)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    nearest = np.min(np.linalg.norm(grid[:, None] - taken[None].astype(float), axis=2), axis=1)
    picked = []
    for _ in range(count):
        k = int(np.argmax(nearest))
        picked.append(grid[k])
        nearest = np.minimum(nearest, np.linalg.norm(grid - grid[k], axis=1))
    return np.round(np.array(picked)).astype(np.uint8)


def class_palette(num_labels: int) -> np.ndarray:
    """256×3 uint8 colour of each label id, for `num_labels` labels (background included)."""
    if not 1 <= num_labels <= IGNORE:
        raise InputError(f"{num_labels} labels: a label map holds 1 to {IGNORE} (255 = ignore)")
    palette = _voc()
    if num_labels > VOC_LABELS:
        taken = palette[[0, IGNORE]]
        palette[1:num_labels] = _farthest_colours(num_labels - 1, taken)
    return palette


def colour_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H×W label ids → H×W×3 uint8 in `palette`."""
    return palette[labels]


def legend_handles(
    label_maps: Iterable[np.ndarray], names: Sequence[str], palette: np.ndarray
) -> list[Patch]:
    """One legend patch per label present in any of `label_maps`, in id order (ignore last).

    `names` are the label names by id (background first).
    """
    present = sorted(set().union(*(np.unique(m).tolist() for m in label_maps)))
    handles = []
    for label in present:
        name = "ignore" if label == IGNORE else names[label]
        handles.append(Patch(facecolor=palette[label] / 255.0, edgecolor="0.3", label=name))
    return handles
