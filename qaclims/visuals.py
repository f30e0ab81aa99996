"""Figures for the reports: CAM overlays, CAM comparisons and per-class IoU bar charts.

Uses matplotlib's object API on an Agg canvas (no pyplot, no backend choice, no display), and
writes each PNG atomically. Label maps are coloured with the VOC palette.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qaclims.atomic import atomic_path
from qaclims.images import voc_palette

PANEL_INCHES = 2.6


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 in the VOC palette (255 = ignore is light grey)."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[labels]


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map in the jet colormap over a uint8 RGB image."""
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * heat).clip(0, 1)


def cam_overlays(
    path: str | os.PathLike,
    image: np.ndarray,
    cams: np.ndarray,
    class_names: Sequence[str],
    *,
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    title: str = "",
) -> None:
    """One row of panels: image, ground truth, prediction, then one CAM per present class."""
    panels: list[tuple[str, np.ndarray]] = [("image", image)]
    if gt is not None:
        panels.append(("ground truth", colour_labels(gt)))
    if pred is not None:
        panels.append(("prediction", colour_labels(pred)))
    panels += [
        (name, heat_overlay(image, cam)) for name, cam in zip(class_names, cams, strict=True)
    ]
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES * aspect + 0.5))
    for k, (name, pixels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def cam_comparison(
    path: str | os.PathLike,
    image: np.ndarray,
    gt: np.ndarray,
    class_names: Sequence[str],
    networks: Mapping[str, np.ndarray],
    *,
    title: str = "",
) -> None:
    """A grid: one row per present class, the CAM of each network side by side (K×H×W each).

    The image and its ground truth lead the first row, so every map of a class is compared
    on the same row against the same picture.
    """
    rows, cols = len(class_names), 2 + len(networks)
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(PANEL_INCHES * cols, (PANEL_INCHES * aspect + 0.3) * rows + 0.5))
    for r, name in enumerate(class_names):
        panels = [("image", image), ("ground truth", colour_labels(gt))] if r == 0 else []
        panels += [
            (f"{net}: {name}", heat_overlay(image, cams[r])) for net, cams in networks.items()
        ]
        for k, (label, pixels) in enumerate(panels, start=cols - len(panels)):
            ax = fig.add_subplot(rows, cols, r * cols + k + 1)
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def iou_bars(
    path: str | os.PathLike, class_names: Sequence[str], series: Mapping[str, np.ndarray]
) -> None:
    """Grouped horizontal bars of per-class IoU (%), one group per class, one bar per series."""
    n = len(class_names)
    height = 0.8 / max(1, len(series))
    fig = Figure(figsize=(7, 1.0 + 0.32 * n * max(1, math.ceil(len(series) / 2))))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    for k, (label, iou) in enumerate(series.items()):
        miou = np.nanmean(iou) * 100 if np.any(~np.isnan(iou)) else float("nan")
        ax.barh(y + k * height, np.nan_to_num(iou) * 100, height, label=f"{label} ({miou:.1f})")
    ax.set_yticks(y + height * (len(series) - 1) / 2, class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
