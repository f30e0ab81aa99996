"""Baseline CAM classifier stage and the augmentation it trains on (ALGORITHM §2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from qaclims import augment, train_cam
from qaclims.errors import InputError
from qaclims.models.backbone import FixedBatchNorm
from qaclims.models.cam_net import CAMNet, load_cam_net
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table

COLOURS = [(220, 40, 40), (40, 80, 220)]


def _dataset(folder: Path, n: int = 8, labels_of=None) -> tuple[Path, Path]:
    """n images on grey: class 0 a red square, class 1 a blue one (image i has i % 3 + 1 mask)."""
    rows = []
    for i in range(n):
        rgb = np.full((40, 56, 3), 128, np.uint8)
        labels = labels_of(i) if labels_of else [c for c in (0, 1) if (i % 3 + 1) >> c & 1]
        for c in labels[: len(COLOURS) * (max(labels, default=0) < len(COLOURS))]:
            rgb[4 + 18 * c : 20 + 18 * c, 8 + 20 * c : 24 + 20 * c] = COLOURS[c]
        Image.fromarray(rgb).save(folder / f"{i}.png")
        rows.append(
            {
                "image_id": f"im{i}",
                "split": "train_aug",
                "path": str(folder / f"{i}.png"),
                "height": 40,
                "width": 56,
                "labels": labels,
                "label_source": "mask",
                "has_mask": False,
                "mask_path": None,
            }
        )
    write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet", MANIFEST_SCHEMA)
    classes = pa.Table.from_pylist(
        [{"class_id": 0, "name": "red"}, {"class_id": 1, "name": "blue"}]
    )
    write_table(classes, folder / "classes.parquet", CLASSES_SCHEMA)
    return folder / "manifest.parquet", folder / "classes.parquet"


def test_augmented_items_are_normalised_padded_crops(tmp_path):
    manifest, _ = _dataset(tmp_path, n=2)
    data = augment.ManifestImages(manifest, "train_aug", 2, crop_size=64, resize_range=(30, 40))
    torch.manual_seed(0)
    item = data[1]
    assert item["image"].shape == (3, 64, 64) and item["index"] == 1
    assert item["label"].tolist() == [0.0, 1.0]
    padding = (item["image"] == 0).all(0)  # long side <= 40 < 64: zero padding on both axes
    assert padding.sum() >= 64 * 64 - 40 * 40
    grey = (128 / 255 - torch.tensor(augment.IMAGENET_MEAN)) / torch.tensor(augment.IMAGENET_STD)
    assert torch.allclose(
        data.__class__(manifest, "train_aug", 2, crop_size=64, augment=False)[0]["image"][:, 0, 0],
        grey,
    )
    crop = augment.random_crop(torch.arange(2 * 10 * 10.0).view(2, 10, 10), 4)
    assert crop.shape == (2, 4, 4) and (crop[:, 1:, 0] - crop[:, :-1, 0] == 10).all()


def test_class_id_out_of_range_names_the_image(tmp_path):
    manifest, _ = _dataset(tmp_path, n=2, labels_of=lambda i: [i * 2])
    with pytest.raises(InputError, match="image im1 has class ids \\[2\\]"):
        augment.ManifestImages(manifest, "train_aug", 2, crop_size=32)


def test_batchnorm_calibration_sets_data_statistics(tmp_path):
    manifest, _ = _dataset(tmp_path, n=4)
    data = augment.ManifestImages(manifest, "train_aug", 2, crop_size=32, resize_range=(32, 40))
    model = CAMNet(2, depth=18, fixed_bn=True)
    train_cam.calibrate_batchnorm(model, data, batch_size=2, batches=2)
    bn1 = model.backbone.bn1
    assert type(bn1) is FixedBatchNorm and bn1.momentum == 0.1
    assert not torch.allclose(bn1.running_var, torch.ones_like(bn1.running_var))
    assert int(bn1.num_batches_tracked) == 2


def test_stage_learns_the_labels_and_feeds_ritc(tmp_path):
    manifest, classes = _dataset(tmp_path, n=12)
    summary = train_cam.run(
        manifest=manifest,
        classes=classes,
        out=tmp_path / "cam.pt",
        checkpoint_dir=tmp_path / "ck",
        split="train_aug",
        depth=18,
        weights=None,
        crop_size=48,
        resize_range=(40, 56),
        batch_size=4,
        epochs=6,
        lr=0.05,
        classifier_lr=0.05,
        weight_decay=1e-4,
        momentum=1e-4,
        poly_power=0.9,
        seed=0,
    )
    assert summary["steps"] == 18
    assert summary["label_accuracy"] > 0.75  # labels are 2/3 positive: guessing gives <= 0.67
    load_cam_net(tmp_path / "cam.pt", 2, depth=18, fixed_bn=False)  # RITC's strict load


def test_images_without_labels_are_left_out_of_training(tmp_path, caplog):
    """No all-negative samples: the dataset drops images without labels and says how many."""
    caplog.set_level("INFO")
    manifest, _ = _dataset(tmp_path, n=6, labels_of=lambda i: [] if i % 3 == 0 else [1])
    data = augment.ManifestImages(manifest, "train_aug", 2, crop_size=32, resize_range=(32, 40))
    assert data.image_ids == ["im1", "im2", "im4", "im5"] and len(data) == 4
    assert (data.labels.sum(dim=1) > 0).all()
    assert "2 of 6 'train_aug' images have no labels and are left out" in caplog.text
    unlabelled, _ = _dataset(tmp_path, n=2, labels_of=lambda i: [])
    with pytest.raises(InputError, match="no image of split 'train_aug' has a label"):
        augment.ManifestImages(unlabelled, "train_aug", 2, crop_size=32)


def test_fewer_images_than_a_batch_names_the_config_key(tmp_path):
    manifest, classes = _dataset(tmp_path, n=6, labels_of=lambda i: [] if i % 3 == 0 else [1])
    with pytest.raises(
        InputError, match=r"4 training images .* lower cam\.batch_size to at most 4"
    ):
        train_cam.run(
            manifest=manifest, classes=classes, out=tmp_path / "cam.pt",
            checkpoint_dir=tmp_path / "ck", split="train_aug", depth=18, weights=None,
            crop_size=32, resize_range=(32, 40), batch_size=8, epochs=1, lr=0.05,
            classifier_lr=0.05, weight_decay=1e-4, momentum=1e-4, poly_power=0.9, seed=0,
        )  # fmt: skip
    assert not (tmp_path / "cam.pt").exists()
