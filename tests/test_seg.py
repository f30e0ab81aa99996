"""Segmentation: DeepLabV3 trains on pseudo masks and writes a valid evaluation report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_golden_eval import irnet_miou
from test_irn import write_dataset  # tests/ is on sys.path under pytest's default import mode

from qaclims import eval_masks, eval_seg, summary, train_seg
from qaclims.augment import normalize
from qaclims.images import read_label_map, save_label_png
from qaclims.models.seg_net import build_seg_net, load_seg_net
from qaclims.seg_predict import Protocol


def test_deeplab_output_matches_input_size():
    model = build_seg_net(4, depth=18).eval()
    assert model(torch.rand(1, 3, 37, 50))["out"].shape == (1, 4, 37, 50)


def test_train_seg_and_eval_write_valid_reports(tmp_path):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44), (36, 40)], "train", 2)
    training = train_seg.run(
        manifest=manifest, classes=classes, masks=[labels], out=tmp_path / "seg.pt",
        out_json=tmp_path / "seg_training.json", checkpoint_dir=tmp_path / "ck",
        train_split="train", depth=18, weights=None, crop_size=32, scale_range=(0.75, 1.25),
        batch_size=2, epochs=2, lr=0.01, head_lr=0.1, weight_decay=5e-4, momentum=0.9,
        poly_power=0.9, seed=0,
    )  # fmt: skip
    assert json.loads((tmp_path / "seg_training.json").read_text()) == training
    report = eval_seg.run(
        manifest=manifest, classes=classes, model=tmp_path / "seg.pt",
        out_json=tmp_path / "seg.json", split="train", depth=18,
        protocol=Protocol((1.0,), False, "max", None), training=tmp_path / "seg_training.json",
    )  # fmt: skip
    stored = json.loads((tmp_path / "seg.json").read_text())
    assert stored["miou"] == report["miou"] and 0.0 <= stored["miou"] <= 1.0
    assert list(stored["per_class_iou"]) == ["background", "class0", "class1"]
    assert stored["images"] == 3 and stored["training"]["steps"] == 2
    assert math.isfinite(stored["training"]["loss"])
    trained = load_seg_net(tmp_path / "seg.pt", 3, depth=18).eval()
    torch.manual_seed(0)  # the run's initial weights: seed, then build
    initial = build_seg_net(3, depth=18).eval()
    images = [
        (normalize(np.asarray(Image.open(tmp_path / "img" / f"im{i}.png")))[None],
         torch.from_numpy(read_label_map(labels / f"im{i}.png", 2).astype(np.int64)))
        for i in range(3)
    ]  # fmt: skip

    def cross_entropy(model: torch.nn.Module) -> float:
        """Mean over the training images of the whole-image cross-entropy (255 ignored)."""
        losses = [F.cross_entropy(model(x)["out"], gt[None], ignore_index=255) for x, gt in images]
        return sum(loss.item() for loss in losses) / len(losses)

    with torch.no_grad():
        # the metric: IRNet's eval_sem_seg (chainercv confusion) of the saved model's argmax
        preds = [trained(x)["out"][0].argmax(dim=0).numpy() for x, _ in images]
        iou, miou = irnet_miou(preds, [gt.numpy() for _, gt in images], 3)
        assert stored["miou"] == pytest.approx(miou, abs=1e-6)
        assert list(stored["per_class_iou"].values()) == pytest.approx(list(iou), abs=1e-6)
        # the training steps: two SGD steps lower the cross-entropy of the training images
        assert cross_entropy(trained) < cross_entropy(initial) - 0.05

    # the label maps scored as pseudo masks against themselves: a perfect score
    masks = eval_masks.run(
        manifest=manifest, classes=classes, masks=[labels], split="train",
        out_json=tmp_path / "masks.json", out_samples=tmp_path / "samples", samples=2,
    )  # fmt: skip
    assert masks["miou"] == pytest.approx(1.0)
    panels = sorted((tmp_path / "samples").glob("*.png"))
    assert len(panels) == 2
    assert [p.stem for p in panels] == sorted(p.stem for p in labels.glob("*.png"))[:2]
    width, height = Image.open(panels[0]).size  # image | GT | pseudo mask | errors
    assert width > 2 * height
    (tmp_path / "cam.json").write_text(json.dumps({"split": "train", "images": 3, "miou": 0.25}))
    rows = summary.run(
        stages=["CAM", "pseudo mask", "segmentation"],
        reports=[tmp_path / "cam.json", tmp_path / "masks.json", tmp_path / "seg.json"],
        out_md=tmp_path / "summary.md", out_json=tmp_path / "summary.json",
    )  # fmt: skip
    assert {r["stage"]: r["miou"] for r in rows} == pytest.approx(
        {"CAM": 25.0, "pseudo mask": 100.0, "segmentation": 100 * stored["miou"]}
    )
    assert "| CAM | train | 3 | 25.00 |" in (tmp_path / "summary.md").read_text()


def test_eval_masks_counts_ignore_predictions_as_background(tmp_path):
    manifest, classes, labels = write_dataset(tmp_path, [(20, 24)], "train", 2)
    gt = np.asarray(Image.open(labels / "im0.png"))
    pred = np.where(gt == 255, 255, gt).astype(np.uint8)
    pred[gt == 0] = 255  # every background pixel predicted "ignore"
    out = tmp_path / "pred"
    out.mkdir()
    save_label_png(pred, out / "im0.png")
    report = eval_masks.run(
        manifest=manifest, classes=classes, masks=[out], split="train", out_json=tmp_path / "m.json"
    )
    assert report["miou"] == pytest.approx(1.0)


def test_mask_stages_read_an_empty_shard_and_masks_of_images_without_classes(tmp_path):
    from qaclims.labelled import LabelledImages

    manifest, classes, labels = write_dataset(tmp_path, [(20, 24), (18, 22)], "train", 2)
    masks = tmp_path / "pseudo_masks"
    (masks / "shard-0").mkdir(parents=True)
    (masks / "shard-1").mkdir()  # an empty shard
    for image_id in ("im0", "im1"):  # all background, as for an image without classes
        shape = np.asarray(Image.open(labels / f"{image_id}.png")).shape
        save_label_png(np.zeros(shape, np.uint8), masks / "shard-0" / f"{image_id}.png")
    folders = [masks / "shard-0", masks / "shard-1"]
    report = eval_masks.run(
        manifest=manifest, classes=classes, masks=folders, split="train",
        out_json=tmp_path / "m.json", out_samples=tmp_path / "samples", samples=4,
    )  # fmt: skip
    assert report["images"] == 2 and report["per_class_iou"]["class0"] == 0.0
    data = LabelledImages(manifest, "train", folders, 2, crop_size=16, scale_range=None, flip=False)
    assert len(data) == 2 and not data[1]["label"].any()
