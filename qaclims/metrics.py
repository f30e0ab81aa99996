"""Segmentation metrics shared by the CAM and pseudo-mask evaluations (ALGORITHM §5, §8).

Confusion matrices count pixels (rows: ground truth, columns: prediction) with one
`bincount` per image; ground-truth 255 is ignored. IoU is NaN for a class absent from both
ground truth and prediction, and mIoU is the NaN-mean, as in the reference (chainercv).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes × num_classes pixel counts; pixels whose gt is 255 are left out.

    Any other value outside 0..num_classes-1 raises ValueError: a silent out-of-range id
    would otherwise shift every count after it.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    keep = gt != IGNORE
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    for name, values in (("ground truth", g), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds ids outside 0..{num_classes - 1}")
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, float]:
    """(per-class IoU, NaN where a class is in neither gt nor prediction; mIoU = nanmean)."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    return iou, miou


class ConfusionMeter:
    """Streaming confusion matrix: add one image at a time, read IoU at the end."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.matrix += confusion(pred, gt, self.num_classes)

    def iou(self) -> tuple[np.ndarray, float]:
        return iou_from_confusion(self.matrix)


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[float, int]:
    """mIoU of one image over the classes in its ground truth or prediction, and how many.

    A sample's own score, beside the dataset's: classes the image does not show are left
    out, as they are from the dataset mIoU when no image shows them.
    """
    iou, miou = iou_from_confusion(confusion(pred, gt, num_classes))
    return miou, int(np.count_nonzero(~np.isnan(iou)))
