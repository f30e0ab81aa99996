"""IRN: affinity labels, resumable training, pseudo masks and their palette PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from qaclims import pseudo_masks, train_irn
from qaclims.augment import normalize
from qaclims.cam_store import CamRecord, write_cams
from qaclims.errors import InputError
from qaclims.images import read_label_map, save_label_png, voc_palette
from qaclims.models.cam_net import CAMNet
from qaclims.models.irn_net import IRNet, load_irn
from qaclims.path_index import PathIndex
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table


def write_dataset(folder: Path, sizes: list[tuple[int, int]], split: str, num_classes: int):
    """Random images and label maps (0 bg, 1..C, 255) plus manifest and class table."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    rows = []
    for i, (h, w) in enumerate(sizes):
        image_id = f"im{i}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / "img" / f"{image_id}.png"
        )
        labels = np.zeros((h, w), np.uint8)
        labels[: h // 2, : w // 2] = 1 + i % num_classes
        labels[h // 2 : h // 2 + 2] = 255
        save_label_png(labels, folder / "labels" / f"{image_id}.png")
        rows.append(
            {
                "image_id": image_id,
                "split": split,
                "path": str(folder / "img" / f"{image_id}.png"),
                "height": h,
                "width": w,
                "labels": [i % num_classes],
                "label_source": "mask",
                "has_mask": True,
                "mask_path": str(folder / "labels" / f"{image_id}.png"),
            }
        )
    manifest, classes = folder / "manifest.parquet", folder / "classes.parquet"
    write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest, MANIFEST_SCHEMA)
    names = [{"class_id": c, "name": f"class{c}"} for c in range(num_classes)]
    write_table(pa.Table.from_pylist(names, schema=CLASSES_SCHEMA), classes, CLASSES_SCHEMA)
    return manifest, classes, folder / "labels"


def test_affinity_labels():
    labels = torch.tensor([[[0, 0, 1, 255], [0, 2, 1, 1]]], dtype=torch.uint8)
    bg, fg, neg = train_irn.affinity_labels(labels, PathIndex.build(2), sources="all")
    index = PathIndex.build(2)
    d_right = index.directions.tolist().index([0, 1])
    assert bg[0, d_right, 0, 0] and not fg[0, d_right, 0, 0]  # 0-0
    assert neg[0, d_right, 0, 1]  # 0-1
    assert not (bg | fg | neg)[0, d_right, 0, 2]  # 1-255 ignored
    assert fg[0, d_right, 1, 2]  # 1-1
    assert not (bg | fg | neg)[0, d_right, :, 3].any()  # leaves the grid
    assert not (bg & fg).any() and not (fg & neg).any() and not (bg & neg).any()


def _train(tmp_path, manifest, classes, labels, checkpoint_dir, out):
    return train_irn.run(
        manifest=manifest, classes=classes, ir_labels=[labels], out=out,
        checkpoint_dir=checkpoint_dir, split="train", depth=18, weights=None, crop_size=32,
        scale_range=(0.75, 1.25), radius=3, batch_size=1, epochs=2, edge_lr=0.1,
        displacement_lr=1.0, weight_decay=1e-4, momentum=1e-4, poly_power=0.9, seed=3,
    )  # fmt: skip


def test_irn_resume_is_bit_identical(tmp_path, monkeypatch):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44)], "train", 2)
    summary = _train(tmp_path, manifest, classes, labels, tmp_path / "ck_a", tmp_path / "a.pt")
    assert summary["steps"] == 4
    real_loss, calls = train_irn.irn_loss, []

    def failing_loss(*args):
        calls.append(1)
        if len(calls) == 3:  # first step of the second epoch
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(train_irn, "irn_loss", failing_loss)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, manifest, classes, labels, tmp_path / "ck_b", tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(train_irn, "irn_loss", real_loss)
    _train(tmp_path, manifest, classes, labels, tmp_path / "ck_b", tmp_path / "b.pt")
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the stored mean displacement: the trained field averaged over the two top-left crops
    want = _top_left_mean_displacement(a, [tmp_path / "img" / f"im{i}.png" for i in (0, 1)], 32)
    torch.testing.assert_close(a["mean_shift"], want, rtol=1e-4, atol=1e-6)
    assert a["mean_shift"].abs().sum() > 1e-4
    fresh = IRNet(depth=18)
    assert not torch.equal(fresh.edge_layers[5].weight, a["edge_layers.5.weight"])
    load_irn(tmp_path / "a.pt", depth=18)


def _top_left_mean_displacement(
    state: dict[str, torch.Tensor], images: list[Path], crop: int
) -> torch.Tensor:
    """IRNet's mean shift: per image, the mean of the raw field on its top-left crop (normalised
    image padded with 0), then the mean over images (REFERENCE_AUDIT §3)."""
    model = IRNet(depth=18)
    model.load_state_dict(state)
    model.mean_shift.zero_()  # the raw field, before any shift
    model.eval()
    means = []
    for path in images:
        x = torch.zeros(3, crop, crop)
        image = normalize(np.asarray(Image.open(path).convert("RGB")))[:, :crop, :crop]
        x[:, : image.shape[1], : image.shape[2]] = image
        with torch.no_grad():
            means.append(model(x[None])[1][0].mean(dim=(1, 2)))
    return torch.stack(means).mean(dim=0)


def test_new_ir_labels_never_resume_an_old_run(tmp_path):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44)], "train", 2)
    ck = tmp_path / "ck"
    _train(tmp_path, manifest, classes, labels, ck, tmp_path / "a.pt")
    _train(tmp_path, manifest, classes, labels, ck, tmp_path / "a.pt")
    (old,) = ck.iterdir()  # unchanged inputs: the same run folder
    first = sorted(labels.glob("*.png"))[0]
    save_label_png(np.zeros_like(np.asarray(Image.open(first))), first)
    summary = _train(tmp_path, manifest, classes, labels, ck, tmp_path / "b.pt")
    (new,) = ck.iterdir()  # a new run from scratch; the superseded one is pruned
    assert new != old and summary["steps"] == 4


def test_palette_png_round_trip(tmp_path):
    labels = np.random.default_rng(1).integers(0, 6, (17, 23)).astype(np.uint8)
    labels[0, :5] = 255
    save_label_png(labels, tmp_path / "m.png", voc_palette())
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == [128, 0, 0]  # VOC class 1
    np.testing.assert_array_equal(read_label_map(tmp_path / "m.png", 5), labels)


def test_pseudo_masks_with_zero_edges_reproduce_cam_argmax(tmp_path):
    height, width = 32, 48  # strided 8 × 12, mirror-symmetric halves
    manifest, _, _ = write_dataset(tmp_path, [(height, width)], "train", 4)
    torch.manual_seed(0)
    model = IRNet(depth=18)
    with torch.no_grad():  # boundary logit −40 everywhere: σ ≈ 0, affinity 1 within the radius
        model.edge_layers[5].weight.zero_()
        model.edge_layers[5].bias.fill_(-40.0)
    torch.save(model.state_dict(), tmp_path / "irn.pt")
    strided = np.zeros((2, 8, 12), np.float32)
    strided[0, :, :6] = 1.0  # class 1 on the left half
    strided[1, :, 6:] = 1.0  # class 3 on the right half
    high_res = np.zeros((2, height, width), np.float32)
    write_cams(
        tmp_path / "cams.npz",
        [("im0", CamRecord(np.array([1, 3]), strided, high_res))],
        storage="float16",
    )
    summary = pseudo_masks.run(
        manifest=manifest, cams=tmp_path / "cams.npz", irn=tmp_path / "irn.pt",
        out_dir=tmp_path / "masks", depth=18, radius=5, beta=10.0, exp_times=3, bg_threshold=0.2,
    )  # fmt: skip
    assert summary["images"] == 1
    with Image.open(tmp_path / "masks" / "im0.png") as img:
        assert img.mode == "P"
        mask = np.asarray(img)
    expected = np.where(np.arange(width) < width // 2, 2, 4).astype(np.uint8)
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, (height, width)))


def test_backbone_from_a_cam_net_file(tmp_path):
    torch.manual_seed(1)
    cam_net = CAMNet(3, depth=18)
    torch.save(cam_net.state_dict(), tmp_path / "cam.pt")
    model = IRNet(depth=18, weights=str(tmp_path / "cam.pt"))
    for name, value in cam_net.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    assert not any(p.requires_grad for p in model.backbone.parameters())
    torch.save({"classifier.weight": torch.zeros(3, 512, 1, 1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other\.pt"):
        IRNet(depth=18, weights=str(tmp_path / "other.pt"))


def test_pseudo_masks_of_images_without_classes_and_of_an_empty_shard(tmp_path, caplog):
    caplog.set_level("INFO")
    manifest, _, _ = write_dataset(tmp_path, [(32, 48), (20, 28)], "train", 4)
    torch.manual_seed(0)
    torch.save(IRNet(depth=18).state_dict(), tmp_path / "irn.pt")
    records = [
        ("im0", CamRecord(np.array([1]), np.zeros((1, 8, 12), np.float32),
                          np.zeros((1, 32, 48), np.float32))),
        ("im1", CamRecord(np.array([], np.int64), np.zeros((0, 5, 7), np.float32),
                          np.zeros((0, 20, 28), np.float32))),
    ]  # fmt: skip
    write_cams(tmp_path / "shard-0.npz", records, storage="float16")
    write_cams(tmp_path / "shard-1.npz", [], storage="float16")
    kw = dict(manifest=manifest, irn=tmp_path / "irn.pt", depth=18, radius=5, beta=10.0,
              exp_times=3, bg_threshold=0.2)  # fmt: skip
    summary = pseudo_masks.run(cams=tmp_path / "shard-0.npz", out_dir=tmp_path / "m0", **kw)
    assert summary == {"images": 2.0, "foreground_fraction": 0.0}
    assert not read_label_map(tmp_path / "m0" / "im1.png", 4).any()  # no class: background
    assert read_label_map(tmp_path / "m0" / "im1.png", 4).shape == (20, 28)
    assert "foreground_fraction': 0.0" in caplog.text
    assert "every pixel of the images with classes" in caplog.text  # all background: warned
    caplog.clear()
    summary = pseudo_masks.run(cams=tmp_path / "shard-1.npz", out_dir=tmp_path / "m1", **kw)
    assert summary["images"] == 0 and list((tmp_path / "m1").iterdir()) == []
    assert "holds no images" in caplog.text
