"""IR labels: the fg/bg combination rule, CRF output values, the per-shard run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_cams import write_manifest

from qaclims import crf
from qaclims.cam_store import CamRecord, write_cams
from qaclims.errors import InputError

PAPER = crf.CRFParams(
    gt_prob=0.7,
    iterations=10,
    gaussian_sxy=3,
    gaussian_compat=3,
    bilateral_sxy=50,
    bilateral_srgb=5,
    bilateral_compat=10,
)


def test_combine_rule():
    fg = np.array([[0, 0, 3], [7, 0, 0]])
    bg = np.array([[0, 3, 3], [0, 7, 0]])
    np.testing.assert_array_equal(crf.combine(fg, bg), [[0, 255, 3], [7, 255, 0]])


def _scene(h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A red square in an olive patch and a blue square on grey; CAMs peak on the squares."""
    image = np.full((h, w, 3), 120, np.uint8)
    image[:30, :26] = (160, 160, 60)
    image[5:20, 5:20] = (220, 30, 30)
    image[22:36, 28:44] = (30, 30, 220)
    cams = np.zeros((2, h, w), np.float32)
    cams[0, 5:20, 5:20] = 0.9
    cams[0, :30, :26] += 0.15  # the olive patch: above the bg threshold, below the fg one
    cams[1, 22:36, 28:44] = 0.8
    return image, cams


def test_ir_label_values_are_bg_present_classes_or_ignore():
    image, cams = _scene()
    keys = np.array([2, 5])
    label = crf.ir_label(image, cams, keys, fg_threshold=0.3, bg_threshold=0.1, params=PAPER)
    assert label.dtype == np.uint8 and label.shape == (40, 48)
    assert set(np.unique(label)) <= {0, 3, 6, 255}
    assert label[10, 10] == 3 and label[30, 35] == 6 and label[0, 47] == 0
    assert label[25, 2] == 255  # the patch is neither confident fg nor confident bg


def test_ir_label_without_present_classes_is_background():
    image, cams = _scene()
    label = crf.ir_label(
        image, cams[:0], np.array([], np.int64), fg_threshold=0.3, bg_threshold=0.1, params=PAPER
    )
    assert label.shape == (40, 48) and not label.any()


@pytest.mark.parametrize("workers", [1, 2])
def test_run_writes_one_png_per_image(tmp_path, workers):
    image, cams = _scene()
    rows = []
    records = []
    for image_id in ("a", "b", "c"):
        Image.fromarray(image).save(tmp_path / f"{image_id}.png")
        rows.append(
            {"image_id": image_id, "split": "train_aug", "path": str(tmp_path / f"{image_id}.png"),
             "height": 40, "width": 48, "labels": [2, 5]}
        )  # fmt: skip
        strided = np.zeros((2, 10, 12), np.float32)
        records.append((image_id, CamRecord(np.array([2, 5]), strided, cams)))
    manifest, _ = write_manifest(tmp_path, rows, 6)
    write_cams(tmp_path / "shard-0.npz", records, storage="uint8")
    out = tmp_path / "ir" / "shard-0"
    summary = crf.run(
        manifest=manifest, cams=tmp_path / "shard-0.npz", out_dir=out, split="train_aug",
        fg_threshold=0.3, bg_threshold=0.1, params=PAPER, workers=workers,
    )  # fmt: skip
    assert summary["images"] == 3 and summary["ignore_fraction"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    saved = np.asarray(Image.open(out / "b.png"))
    assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 3, 6, 255}


def test_run_rejects_images_of_another_size(tmp_path):
    image, cams = _scene()
    Image.fromarray(image[:, :40]).save(tmp_path / "a.png")
    row = {"image_id": "a", "split": "train_aug", "path": str(tmp_path / "a.png"),
           "height": 40, "width": 40, "labels": [0]}  # fmt: skip
    manifest, _ = write_manifest(tmp_path, [row], 1)
    write_cams(
        tmp_path / "s.npz",
        [("a", CamRecord(np.array([0]), np.zeros((1, 10, 12), np.float32), cams[:1]))],
        storage="float16",
    )
    with pytest.raises(InputError, match=r"a\.png: image is \(40, 40\)"):
        crf.run(
            manifest=manifest, cams=tmp_path / "s.npz", out_dir=tmp_path / "out",
            split="train_aug", fg_threshold=0.3, bg_threshold=0.1, params=PAPER,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_run_accepts_an_empty_shard_and_images_without_classes(tmp_path, workers, caplog):
    image, cams = _scene()
    Image.fromarray(image).save(tmp_path / "a.png")
    row = {"image_id": "a", "split": "train_aug", "path": str(tmp_path / "a.png"),
           "height": 40, "width": 48, "labels": []}  # fmt: skip
    manifest, _ = write_manifest(tmp_path, [row], 6)
    write_cams(tmp_path / "shard-0.npz", [], storage="float16")
    empty = crf.run(
        manifest=manifest, cams=tmp_path / "shard-0.npz", out_dir=tmp_path / "ir" / "shard-0",
        split="train_aug", fg_threshold=0.3, bg_threshold=0.1, params=PAPER, workers=workers,
    )  # fmt: skip
    assert empty["images"] == 0 and list((tmp_path / "ir" / "shard-0").iterdir()) == []
    assert "holds no images" in caplog.text
    no_class = CamRecord(np.array([], np.int64), np.zeros((0, 10, 12), np.float32), cams[:0])
    write_cams(tmp_path / "shard-1.npz", [("a", no_class)], storage="float16")
    crf.run(
        manifest=manifest, cams=tmp_path / "shard-1.npz", out_dir=tmp_path / "ir" / "shard-1",
        split="train_aug", fg_threshold=0.3, bg_threshold=0.1, params=PAPER, workers=workers,
    )  # fmt: skip
    assert not np.asarray(Image.open(tmp_path / "ir" / "shard-1" / "a.png")).any()
