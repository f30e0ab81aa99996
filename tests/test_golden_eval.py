"""Golden tests of the CAM and pseudo-mask evaluations against chainercv / IRNet, written out.

References (ALGORITHM §5, §8; REFERENCE_AUDIT §3): chainercv
`calc_semantic_segmentation_confusion` (rows ground truth, columns prediction, gt −1 = 255
left out, the matrix grows with the largest label), IRNet `step/eval_sem_seg.py` (predictions
255 → 0, confusion[:n, :n], IoU = diag / (gt + pred − diag), mIoU = nanmean) and
`step/eval_cam.py` (background plane t in front of the CAMs, argmax, keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaclims import eval_cam, eval_masks
from qaclims.cam_store import CamRecord, read_cams, write_cams
from qaclims.images import save_label_png
from tests.test_cams import write_manifest


def chainercv_confusion(preds: list[np.ndarray], gts: list[np.ndarray]) -> np.ndarray:
    """calc_semantic_segmentation_confusion, with its loop over images and growing matrix."""
    n_class = 0
    confusion = np.zeros((n_class, n_class), dtype=np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        pred = pred.flatten().astype(np.int64)
        gt = np.where(gt == 255, -1, gt).flatten().astype(np.int64)
        lb_max = int(np.max((pred, gt)))
        if lb_max >= n_class:
            expanded = np.zeros((lb_max + 1, lb_max + 1), dtype=np.int64)
            expanded[:n_class, :n_class] = confusion
            n_class, confusion = lb_max + 1, expanded
        for p, g in zip(pred.tolist(), gt.tolist(), strict=True):
            if g >= 0:
                confusion[g, p] += 1
    return confusion


def irnet_miou(preds: list[np.ndarray], gts: list[np.ndarray], n: int) -> tuple[np.ndarray, float]:
    """eval_sem_seg: predictions 255 → 0, confusion[:n, :n], IoU per class, nanmean."""
    preds = [np.where(p == 255, 0, p) for p in preds]
    confusion = np.zeros((n, n), dtype=np.int64)
    full = chainercv_confusion(preds, gts)
    k = min(n, len(full))
    confusion[:k, :k] = full[:k, :k]
    gtj, resj, tp = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gtj + resj - tp)
    return iou, float(np.nanmean(iou))


GT = [np.array([[0, 0, 1, 1], [0, 255, 1, 2]]), np.array([[2, 2, 0], [2, 2, 0]])]
PRED = [np.array([[0, 1, 1, 1], [255, 0, 1, 0]]), np.array([[2, 1, 0], [2, 2, 2]])]


def test_reference_confusion_by_hand() -> None:
    """Rows gt, columns prediction: [[3, 1, 1], [0, 3, 0], [1, 1, 3]]; IoU ½, ⅗, ½."""
    conf = chainercv_confusion([np.where(p == 255, 0, p) for p in PRED], GT)
    np.testing.assert_array_equal(conf, [[3, 1, 1], [0, 3, 0], [1, 1, 3]])
    iou, miou = irnet_miou(PRED, GT, 3)
    np.testing.assert_allclose(iou, [0.5, 0.6, 0.5])
    assert miou == pytest.approx(1.6 / 3)


def _write(folder: Path, split: str = "train") -> tuple[Path, Path, Path]:
    """Two images with the GT of GT and pseudo masks PRED; manifest and classes (2 classes)."""
    (folder / "pred").mkdir()
    rows = []
    for i, (gt, pred) in enumerate(zip(GT, PRED, strict=True)):
        Image.fromarray(np.zeros((*gt.shape, 3), np.uint8)).save(folder / f"im{i}.png")
        save_label_png(gt.astype(np.uint8), folder / f"im{i}_gt.png")
        save_label_png(pred.astype(np.uint8), folder / "pred" / f"im{i}.png")
        rows.append(
            {"image_id": f"im{i}", "split": split, "path": str(folder / f"im{i}.png"),
             "height": gt.shape[0], "width": gt.shape[1], "labels": [0, 1],
             "mask_path": str(folder / f"im{i}_gt.png")}
        )  # fmt: skip
    manifest, classes = write_manifest(folder, rows, 2)
    return manifest, classes, folder / "pred"


def test_eval_masks_equals_irnets_eval_sem_seg(tmp_path: Path) -> None:
    """eval_masks: mIoU of the pseudo masks (255 → bg) against the GT = ⅓(½ + ⅗ + ½)."""
    manifest, classes, pred = _write(tmp_path)
    report = eval_masks.run(
        manifest=manifest, classes=classes, masks=[pred], split="train",
        out_json=tmp_path / "m.json",
    )  # fmt: skip
    iou, miou = irnet_miou(PRED, GT, 3)
    assert report["miou"] == pytest.approx(miou, abs=1e-6) == pytest.approx(1.6 / 3, abs=1e-6)
    assert list(report["per_class_iou"].values()) == pytest.approx(iou.tolist(), abs=1e-6)
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == report["miou"]


def test_eval_cam_equals_irnets_eval_cam(tmp_path: Path) -> None:
    """eval_cam at t: argmax over [t, CAMs] → keys + 1, scored as eval_sem_seg scores."""
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 4, (9, 11)), rng.integers(0, 4, (7, 10))]
    gts[0][0, :3] = 255
    rows, records = [], []
    for i, gt in enumerate(gts):
        Image.fromarray(np.zeros((*gt.shape, 3), np.uint8)).save(tmp_path / f"im{i}.png")
        save_label_png(gt.astype(np.uint8), tmp_path / f"im{i}_gt.png")
        keys = np.array([0, 2]) if i == 0 else np.array([1])
        rows.append(
            {"image_id": f"im{i}", "split": "train", "path": str(tmp_path / f"im{i}.png"),
             "height": gt.shape[0], "width": gt.shape[1], "labels": keys.tolist(),
             "mask_path": str(tmp_path / f"im{i}_gt.png")}
        )  # fmt: skip
        high_res = rng.random((len(keys), *gt.shape)).astype(np.float32) * 0.4
        strided = np.zeros((len(keys), -(-gt.shape[0] // 4), -(-gt.shape[1] // 4)), np.float32)
        records.append((f"im{i}", CamRecord(keys, strided, high_res)))
    manifest, classes = write_manifest(tmp_path, rows, 3)
    write_cams(tmp_path / "cams.npz", records, storage="float16")
    out = tmp_path / "eval"
    summary = eval_cam.run(
        manifest=manifest, classes=classes, cams=[tmp_path / "cams.npz"], split="train",
        bg_threshold=0.15, sweep_start=0.05, sweep_stop=0.3, sweep_step=0.05, vis_images=0,
        out_json=out / "cam.json", out_csv=out / "cam.csv", out_bars=out / "bars.png",
        out_vis=out / "vis",
    )  # fmt: skip
    with read_cams(tmp_path / "cams.npz") as store:  # the stored (float16) maps
        stored = [store[f"im{i}"] for i in range(2)]
    preds = []
    for rec in stored:
        padded = np.concatenate([np.full((1, *rec.high_res.shape[1:]), 0.15), rec.high_res])
        preds.append(np.concatenate([[0], rec.keys + 1])[padded.argmax(axis=0)])
    _, miou = irnet_miou(preds, gts, 4)
    assert 0.05 < miou < 0.95
    assert summary["miou"] == pytest.approx(miou, abs=1e-6)
