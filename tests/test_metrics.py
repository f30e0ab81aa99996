"""Confusion matrix and IoU against a naive per-pixel count."""

from __future__ import annotations

import numpy as np
import pytest

from qaclims.metrics import ConfusionMeter, confusion, iou_from_confusion


def _naive(pred: np.ndarray, gt: np.ndarray, n: int) -> tuple[np.ndarray, list[float]]:
    conf = np.zeros((n, n), dtype=np.int64)
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
        if g != 255:
            conf[g, p] += 1
    ious = []
    for c in range(n):
        inter = sum(1 for p, g in zip(pred.ravel(), gt.ravel(), strict=True) if p == c == g)
        union = sum(
            1 for p, g in zip(pred.ravel(), gt.ravel(), strict=True) if g != 255 and c in (p, g)
        )
        ious.append(inter / union if union else float("nan"))
    return conf, ious


def test_confusion_and_iou_match_a_naive_count():
    rng = np.random.default_rng(0)
    n = 7  # classes 5 and 6 appear nowhere
    gt = rng.integers(0, 5, size=(23, 31)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 5, size=gt.shape).astype(np.uint8)
    pred[:3] = 3  # some pixels predicted where gt is 255
    conf = confusion(pred, gt, n)
    want_conf, want_iou = _naive(pred, gt, n)
    np.testing.assert_array_equal(conf, want_conf)
    iou, miou = iou_from_confusion(conf)
    np.testing.assert_allclose(iou, want_iou, equal_nan=True)
    assert np.isnan(iou[5]) and np.isnan(iou[6])
    assert miou == pytest.approx(np.mean(want_iou[:5]))


def test_class_only_predicted_counts_as_zero_iou():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 2]], np.uint8)
    iou, miou = iou_from_confusion(confusion(pred, gt, 3))
    assert iou[0] == pytest.approx(0.75) and np.isnan(iou[1]) and iou[2] == 0.0
    assert miou == pytest.approx(0.375)


def test_meter_accumulates_images():
    rng = np.random.default_rng(1)
    preds = [rng.integers(0, 4, size=(5, 6)) for _ in range(3)]
    gts = [rng.integers(0, 4, size=(5, 6)) for _ in range(3)]
    meter = ConfusionMeter(4)
    for p, g in zip(preds, gts, strict=True):
        meter.add(p, g)
    whole = confusion(np.concatenate(preds), np.concatenate(gts), 4)
    np.testing.assert_array_equal(meter.matrix, whole)
    assert meter.iou()[1] == iou_from_confusion(whole)[1]


def test_out_of_range_ids_are_rejected():
    with pytest.raises(ValueError, match="prediction"):
        confusion(np.full((2, 2), 4), np.zeros((2, 2), np.uint8), 4)
    with pytest.raises(ValueError, match="ground truth"):
        confusion(np.zeros((2, 2)), np.full((2, 2), 9, np.uint8), 4)
