"""CAM evaluation: the one-pass threshold sweep, its stopping rule, the reports, the comparison."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from test_cams import write_manifest

from qaclims import cam_compare, eval_cam
from qaclims.cam_store import CamRecord, write_cams
from qaclims.errors import InputError
from qaclims.images import save_label_png
from qaclims.metrics import confusion


def test_sweep_matches_explicit_argmax_per_threshold():
    rng = np.random.default_rng(0)
    n, thresholds = 6, [0.05, 0.1, 0.25, 0.5, 0.75]
    sweep = eval_cam.ThresholdSweep(thresholds, n)
    images = []
    for k in (2, 0, 3):
        cam = rng.random((k, 11, 13), dtype=np.float32)
        if k:
            cam[0, 0, :4] = np.float32(0.25)  # ties with a threshold go to background
        keys = np.sort(rng.choice(5, size=k, replace=False))
        gt = rng.integers(0, n, size=(11, 13)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        sweep.add(cam, keys, gt)
        images.append((cam, keys, gt))
    confs = sweep.confusions()
    for j, t in enumerate(thresholds):
        want = np.zeros((n, n), np.int64)
        for cam, keys, gt in images:
            padded = np.concatenate([np.full((1, 11, 13), t, np.float32), cam])
            ids = np.concatenate([[0], keys + 1])
            want += confusion(ids[padded.argmax(axis=0)], gt, n)
            np.testing.assert_array_equal(
                eval_cam.cam_prediction(cam, keys, t), ids[padded.argmax(axis=0)]
            )
        np.testing.assert_array_equal(confs[j], want)


def test_sweep_stops_at_first_non_improving_threshold():
    assert eval_cam.best_of_sweep([0.30, 0.40, 0.35, 0.50]) == 1
    assert eval_cam.best_of_sweep([0.30, 0.40, 0.40, 0.50]) == 1
    assert eval_cam.best_of_sweep([0.30, 0.40, 0.45]) == 2
    assert eval_cam.best_of_sweep([0.30, 0.20, 0.90]) == 0


def test_threshold_grid():
    assert eval_cam.threshold_grid(0.05, 0.59, 0.01)[-1] == 0.59
    assert len(eval_cam.threshold_grid(0.05, 0.59, 0.01)) == 55
    assert eval_cam.threshold_grid(0.10, 0.58, 0.02) == [
        round(0.1 + 0.02 * k, 10) for k in range(25)
    ]
    with pytest.raises(InputError):
        eval_cam.threshold_grid(0.5, 0.1, 0.01)


def test_run_reports_fixed_and_best_threshold(tmp_path):
    # class 0 (label 1) on the left half: CAM 0.8 there, 0.1 on the right (background).
    h, w = 8, 12
    gt = np.zeros((h, w), np.uint8)
    gt[:, :6] = 1
    gt[0, 0] = 255
    cam = np.full((1, h, w), 0.1, np.float32)
    cam[0, :, :6] = 0.8
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.png")
    save_label_png(gt, tmp_path / "a_gt.png")
    row = {"image_id": "a", "path": str(tmp_path / "a.png"), "height": h, "width": w,
           "labels": [0], "mask_path": str(tmp_path / "a_gt.png")}  # fmt: skip
    manifest, classes = write_manifest(
        tmp_path, [{**row, "split": "train_aug"}, {**row, "split": "train"}], 2
    )
    strided = np.full((1, 2, 3), 0.5, np.float32)
    write_cams(
        tmp_path / "shard-0.npz",
        [("a", CamRecord(keys=np.array([0]), strided=strided, high_res=cam))],
        storage="float16",
    )
    out = tmp_path / "eval"
    summary = eval_cam.run(
        manifest=manifest, classes=classes, cams=[tmp_path / "shard-0.npz"], split="train",
        bg_threshold=0.05, sweep_start=0.05, sweep_stop=0.30, sweep_step=0.05, vis_images=1,
        out_json=out / "cam.json", out_csv=out / "cam.csv", out_bars=out / "bars.png",
        out_vis=out / "vis", out_sweep=out / "sweep.png",
    )  # fmt: skip
    report = json.loads((out / "cam.json").read_text())
    # 95 scored pixels: 47 of class 0 (label 1), 48 background; class 1 appears nowhere.
    # t = 0.05: everything foreground → background IoU 0, label-1 IoU 47/95.
    assert report["miou"] == pytest.approx((0 + 47 / 95) / 2, abs=1e-6)
    # t = 0.10: the 0.1 plateau (float16: 0.09998) is background → perfect; 0.15 equal → stop.
    assert report["best_threshold"] == 0.1 and report["best_miou"] == 1.0
    assert [s["threshold"] for s in report["sweep"]] == [0.05, 0.1, 0.15]
    assert report["background_only_miou"] == pytest.approx((48 / 95 + 0) / 2, abs=1e-6)
    assert report["per_class_iou"]["class1"] is None
    assert summary["best_miou"] == 1.0
    with (out / "cam.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["label", "name", "iou_t0.05", "iou_t0.1"]
    assert rows[1][:2] == ["0", "background"] and float(rows[1][3]) == 1.0
    assert (out / "bars.png").stat().st_size > 0
    assert (out / "sweep.png").stat().st_size > 0
    assert [p.name for p in (out / "vis").iterdir()] == ["a.png"]


def test_run_rejects_eval_images_without_cams(tmp_path):
    save_label_png(np.zeros((4, 4), np.uint8), tmp_path / "gt.png")
    row = {"path": "x.png", "height": 4, "width": 4, "labels": [0], "split": "train",
           "mask_path": str(tmp_path / "gt.png")}  # fmt: skip
    manifest, classes = write_manifest(tmp_path, [{**row, "image_id": "a"}], 1)
    write_cams(tmp_path / "s.npz", [], storage="float16")
    with pytest.raises(InputError, match="first: a"):
        eval_cam.run(
            manifest=manifest, classes=classes, cams=[tmp_path / "s.npz"], split="train",
            bg_threshold=0.15, sweep_start=0.05, sweep_stop=0.1, sweep_step=0.01, vis_images=0,
            out_json=tmp_path / "c.json", out_csv=tmp_path / "c.csv", out_bars=tmp_path / "b.png",
            out_vis=tmp_path / "vis",
        )  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def test_run_reads_an_empty_shard_and_images_without_classes(tmp_path):
    """An empty CAM file among the shards and an eval image with no class are both scored."""
    h, w = 6, 8
    save_label_png(np.zeros((h, w), np.uint8), tmp_path / "gt.png")
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.png")
    row = {"image_id": "a", "path": str(tmp_path / "a.png"), "height": h, "width": w,
           "labels": [], "split": "train", "mask_path": str(tmp_path / "gt.png")}  # fmt: skip
    manifest, classes = write_manifest(tmp_path, [row], 2)
    empty = np.zeros((0, h, w), np.float32)
    record = CamRecord(keys=np.array([], np.int64), strided=np.zeros((0, 2, 2), np.float32),
                       high_res=empty)  # fmt: skip
    write_cams(tmp_path / "shard-0.npz", [("a", record)], storage="uint8")
    write_cams(tmp_path / "shard-1.npz", [], storage="uint8")
    out = tmp_path / "eval"
    summary = eval_cam.run(
        manifest=manifest, classes=classes, cams=[tmp_path / "shard-0.npz",
        tmp_path / "shard-1.npz"], split="train", bg_threshold=0.15, sweep_start=0.05,
        sweep_stop=0.1, sweep_step=0.05, vis_images=1, out_json=out / "cam.json",
        out_csv=out / "cam.csv", out_bars=out / "bars.png", out_vis=out / "vis",
    )  # fmt: skip
    assert summary["images"] == 1 and summary["miou"] == 1.0  # all background, rightly
    assert [p.name for p in (out / "vis").iterdir()] == ["a.png"]


def test_compare_draws_baseline_and_ritc_of_the_first_images_with_a_class(tmp_path):
    """One panel per chosen image: rows of classes, columns image | gt | baseline | RITC."""
    h, w = 8, 12
    rows, records = [], []
    for image_id, labels in (("a", [0, 1]), ("b", []), ("c", [1]), ("d", [0])):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / f"{image_id}.png")
        save_label_png(np.zeros((h, w), np.uint8), tmp_path / f"{image_id}_gt.png")
        rows.append({"image_id": image_id, "path": str(tmp_path / f"{image_id}.png"),
                     "height": h, "width": w, "labels": labels, "split": "train",
                     "mask_path": str(tmp_path / f"{image_id}_gt.png")})  # fmt: skip
        k = len(labels)
        records.append((image_id, CamRecord(
            keys=np.array(labels, np.int64), strided=np.zeros((k, 2, 3), np.float32),
            high_res=np.full((k, h, w), 0.5, np.float32),
        )))  # fmt: skip
    manifest, classes = write_manifest(tmp_path, rows, 2)
    write_cams(tmp_path / "b0.npz", records[:2], storage="float16")
    write_cams(tmp_path / "b1.npz", records[2:], storage="float16")
    write_cams(tmp_path / "r0.npz", records, storage="uint8")
    out = tmp_path / "compare"
    drawn = cam_compare.run(
        manifest=manifest, classes=classes, baseline=[tmp_path / "b0.npz", tmp_path / "b1.npz"],
        ritc=[tmp_path / "r0.npz"], split="train", vis_images=2, out=out,
    )  # fmt: skip
    assert drawn == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]  # b has no class
    two_rows, one_row = (np.asarray(Image.open(out / f"{n}.png")) for n in ("a", "c"))
    assert two_rows.shape[1] == one_row.shape[1] and two_rows.shape[0] > one_row.shape[0]
    with pytest.raises(InputError, match="no CAMs"):
        cam_compare.run(
            manifest=manifest, classes=classes, baseline=[tmp_path / "b0.npz"],
            ritc=[tmp_path / "r0.npz"], split="train", vis_images=2, out=tmp_path / "x",
        )  # fmt: skip
