"""Figures for the reports: CAM overlays and comparisons, pseudo-mask samples, per-class IoU
bars and the CAM threshold sweep.

Uses matplotlib's object API on an Agg canvas (no pyplot, no backend choice, no display), and
writes each PNG atomically. Each function saves its figure and returns it, so tests can read
what was drawn. Label maps are coloured with the dataset's palette (`qaclims.palette`) and
come with a legend of the labels they show.
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
from qaclims.palette import IGNORE, class_palette, colour_labels, legend_handles

PANEL_INCHES = 2.6
LEGEND_COLUMNS = 6
LEGEND_ROW_INCHES = 0.24
NO_DATA = "no data"


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map in the jet colormap over a uint8 RGB image."""
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * heat).clip(0, 1)


def error_overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The image dimmed, with the pixels where `pred` differs from `gt` in red (gt 255 is
    ignored, as in the scores)."""
    out = 0.35 * image / 255.0
    wrong = (pred != gt) & (gt != IGNORE)
    out[wrong] = (1.0, 0.0, 0.0)
    return out


def _legend_rows(count: int) -> int:
    return math.ceil(count / LEGEND_COLUMNS) if count else 0


def _panel_row(
    panels: Sequence[tuple[str, np.ndarray]],
    image_shape: tuple[int, ...],
    label_maps: Sequence[np.ndarray],
    labels: Sequence[str],
    title: str,
) -> Figure:
    """One row of titled panels; below them a legend of the labels in `label_maps`."""
    handles = legend_handles(label_maps, labels, class_palette(len(labels))) if label_maps else []
    legend_inches = LEGEND_ROW_INCHES * _legend_rows(len(handles)) + (0.1 if handles else 0)
    aspect = image_shape[0] / image_shape[1]
    height = PANEL_INCHES * aspect + 0.5 + legend_inches
    fig = Figure(figsize=(PANEL_INCHES * len(panels), height))
    for k, (name, pixels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), LEGEND_COLUMNS),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    return fig


def cam_overlays(
    path: str | os.PathLike,
    image: np.ndarray,
    cams: np.ndarray,
    class_names: Sequence[str],
    *,
    labels: Sequence[str],
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """One row of panels: image, ground truth, prediction, then one CAM per present class.

    `labels` names every label id (background first): the palette and the legend's names.
    """
    palette = class_palette(len(labels))
    maps = [m for m in (gt, pred) if m is not None]
    panels: list[tuple[str, np.ndarray]] = [("image", image)]
    if gt is not None:
        panels.append(("ground truth", colour_labels(gt, palette)))
    if pred is not None:
        panels.append(("prediction", colour_labels(pred, palette)))
    panels += [
        (f"CAM: {name}", heat_overlay(image, cam))
        for name, cam in zip(class_names, cams, strict=True)
    ]
    fig = _panel_row(panels, image.shape, maps, labels, title)
    _save(fig, path)
    return fig


def mask_samples(
    path: str | os.PathLike,
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Image | ground truth | pseudo mask | errors (red where the mask differs from the GT).

    The errors are those eval_masks counts: a pseudo-mask ignore (255) pixel is background.
    """
    palette = class_palette(len(labels))
    panels = [
        ("image", image),
        ("ground truth", colour_labels(gt, palette)),
        ("pseudo mask", colour_labels(pred, palette)),
        ("errors (red)", error_overlay(image, np.where(pred == IGNORE, 0, pred), gt)),
    ]
    fig = _panel_row(panels, image.shape, [gt, pred], labels, title)
    _save(fig, path)
    return fig


def cam_comparison(
    path: str | os.PathLike,
    image: np.ndarray,
    gt: np.ndarray,
    class_names: Sequence[str],
    networks: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str],
    title: str = "",
) -> Figure:
    """A grid: one row per present class, the CAM of each network side by side (K×H×W each).

    The image and its ground truth lead the first row, so every map of a class is compared
    on the same row against the same picture; a legend names the ground truth's labels.
    """
    palette = class_palette(len(labels))
    handles = legend_handles([gt], labels, palette)
    legend_inches = LEGEND_ROW_INCHES * _legend_rows(len(handles)) + 0.1
    rows, cols = len(class_names), 2 + len(networks)
    aspect = image.shape[0] / image.shape[1]
    height = (PANEL_INCHES * aspect + 0.3) * rows + 0.5 + legend_inches
    fig = Figure(figsize=(PANEL_INCHES * cols, height))
    for r, name in enumerate(class_names):
        panels = [("image", image), ("ground truth", colour_labels(gt, palette))] if r == 0 else []
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
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), LEGEND_COLUMNS),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    _save(fig, path)
    return fig


def _miou_label(label: str, iou: np.ndarray) -> str:
    known = ~np.isnan(iou)
    if not known.any():
        return f"{label} (mIoU n/a)"
    return f"{label} (mIoU {100 * np.mean(iou[known]):.1f})"


def iou_bars(
    path: str | os.PathLike, class_names: Sequence[str], series: Mapping[str, np.ndarray]
) -> Figure:
    """Grouped horizontal bars of per-class IoU (%), one group per class, one bar per series.

    A NaN IoU (the class is in neither the ground truth nor the prediction) is no score at
    all, not 0: its slot is hatched grey and labelled "no data", and mIoU leaves it out.
    """
    n = len(class_names)
    height = 0.8 / max(1, len(series))
    fig = Figure(figsize=(7, 1.0 + 0.32 * n * max(1, math.ceil(len(series) / 2))))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    for k, (label, values) in enumerate(series.items()):
        iou = np.asarray(values, dtype=np.float64)
        slots = y + k * height
        known = ~np.isnan(iou)
        ax.barh(slots[known], iou[known] * 100, height, label=_miou_label(label, iou))
        for slot in slots[~known]:
            ax.barh(slot, 100, height, color="none", edgecolor="0.75", hatch="///", lw=0)
            ax.text(1, slot, NO_DATA, va="center", fontsize=7, color="0.35", style="italic")
    ax.set_yticks(y + height * (len(series) - 1) / 2, class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return fig


def threshold_sweep(
    path: str | os.PathLike,
    thresholds: Sequence[float],
    mious: Sequence[float],
    *,
    best: tuple[float, float],
    fixed: tuple[float, float],
) -> Figure:
    """mIoU (%) against the background threshold of the sweep, the best (star) and the
    configured threshold (dashed line, diamond) marked; `best` and `fixed` are (t, mIoU)."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(thresholds, 100 * np.asarray(mious, dtype=np.float64), "o-", ms=3, label="sweep")
    ax.plot(
        [best[0]], [100 * best[1]], "*", ms=14, color="tab:red",
        label=f"best: t = {best[0]:g}, mIoU {100 * best[1]:.1f}",
    )  # fmt: skip
    ax.axvline(fixed[0], ls="--", color="0.4", lw=1)
    ax.plot(
        [fixed[0]], [100 * fixed[1]], "D", ms=6, color="0.4",
        label=f"configured: t = {fixed[0]:g}, mIoU {100 * fixed[1]:.1f}",
    )  # fmt: skip
    ax.set_xlabel("background threshold t")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return fig
