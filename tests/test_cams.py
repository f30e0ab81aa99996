"""CAM inference (multi-scale + flip, shapes, batching) and the CAM file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from qaclims import cams
from qaclims.cam_store import CamRecord, read_cams, write_cams
from qaclims.errors import InputError
from qaclims.models.cam_net import CAMNet
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table

SCALES = (1.0, 0.5, 1.5, 2.0)


def write_manifest(folder: Path, images: list[dict], num_classes: int) -> tuple[Path, Path]:
    """A manifest of `images` (image_id, split, path, height, width, labels, ...), shard 0."""
    rows = [
        {
            "label_source": "mask",
            "has_mask": "mask_path" in im,
            "mask_path": None,
            **im,
        }
        for im in images
    ]
    manifest, classes = folder / "manifest.parquet", folder / "classes.parquet"
    write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest, MANIFEST_SCHEMA)
    names = [{"class_id": c, "name": f"class{c}"} for c in range(num_classes)]
    write_table(pa.Table.from_pylist(names, schema=CLASSES_SCHEMA), classes, CLASSES_SCHEMA)
    return manifest, classes


@pytest.fixture(scope="module")
def tiny_net() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet(3, depth=18, weights=None, fixed_bn=False).eval()


def _scaled(images: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.stack([cams.normalise(cams.rescale(im, s)) for im in images]) for s in SCALES]


def test_symmetric_input_gives_symmetric_cams(tiny_net):
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, size=(40, 24, 3), dtype=np.uint8)
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # 40 × 48, mirror-symmetric
    (rec,) = cams.multiscale_cams(
        tiny_net, _scaled([image]), (40, 48), [np.array([0, 2])], torch.device("cpu")
    )
    assert rec.high_res.max() > 0.9
    np.testing.assert_allclose(rec.high_res, rec.high_res[:, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(rec.strided, rec.strided[:, :, ::-1], atol=1e-4)


def test_odd_sizes_and_normalisation(tiny_net):
    image = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    (rec,) = cams.multiscale_cams(
        tiny_net, _scaled([image]), (37, 53), [np.array([1])], torch.device("cpu")
    )
    assert rec.strided.shape == (1, 10, 14)
    assert rec.high_res.shape == (1, 37, 53)
    assert rec.strided.min() >= 0 and 0.99 < rec.strided.max() < 1
    assert rec.high_res.min() >= 0 and 0.99 < rec.high_res.max() < 1


def test_batched_images_equal_one_at_a_time(tiny_net):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(33, 41, 3), dtype=np.uint8) for _ in range(2)]
    keys = [np.array([0]), np.array([1, 2])]
    cpu = torch.device("cpu")
    batched = cams.multiscale_cams(tiny_net, _scaled(images), (33, 41), keys, cpu)
    for image, k, rec in zip(images, keys, batched, strict=True):
        (alone,) = cams.multiscale_cams(tiny_net, _scaled([image]), (33, 41), [k], cpu)
        np.testing.assert_allclose(rec.high_res, alone.high_res, atol=1e-5)
        np.testing.assert_allclose(rec.strided, alone.strided, atol=1e-5)


def test_rescale_rounds_like_the_reference():
    image = np.zeros((375, 500, 3), np.uint8)
    assert cams.rescale(image, 0.5).shape == (188, 250, 3)
    assert cams.rescale(image, 1.5).shape == (562, 750, 3)
    assert cams.rescale(image, 1.0) is image


def test_equal_size_batches():
    sizes = [(5, 5), (4, 4), (5, 5), (5, 5), (4, 4)]
    assert cams.equal_size_batches(sizes, 2) == [[1, 4], [0, 2], [3]]


def test_run_writes_every_image_of_the_shard(tmp_path, tiny_net):
    rng = np.random.default_rng(3)
    images = []
    for image_id, (h, w), labels in [
        ("a", (37, 53), [2]),
        ("b", (37, 53), [0, 1]),
        ("c", (30, 30), []),
    ]:
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        images.append(
            {"image_id": image_id, "split": "train_aug", "path": str(path), "height": h,
             "width": w, "labels": labels}
        )  # fmt: skip
    images.append({**images[0], "image_id": "z", "split": "val"})
    manifest, classes = write_manifest(tmp_path, images, 3)
    torch.save(tiny_net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "cams" / "shard-0.npz"
    summary = cams.run(
        manifest=manifest, classes=classes, model=tmp_path / "net.pt", out=out,
        split="train_aug", shard=0, shards=1, depth=18, scales=SCALES, storage="uint8",
        batch_images=4, workers=0,
    )  # fmt: skip
    assert summary["images"] == 3
    with read_cams(out) as store:
        assert sorted(store.image_ids) == ["a", "b", "c"]
        assert store.storage == "uint8"
        b = store["b"]
        assert list(b.keys) == [0, 1] and b.high_res.shape == (2, 37, 53)
        assert b.strided.shape == (2, 10, 14)
        assert store["c"].high_res.shape == (0, 30, 30)
    with pytest.raises(InputError, match="no 'train_aug' images in shard 1"):
        cams.run(
            manifest=manifest, classes=classes, model=tmp_path / "net.pt", out=out,
            split="train_aug", shard=1, shards=1, depth=18, scales=SCALES, storage="uint8",
            batch_images=4, workers=0,
        )  # fmt: skip


def _record(k: int = 2, h: int = 9, w: int = 13) -> CamRecord:
    rng = np.random.default_rng(4)
    return CamRecord(
        keys=np.arange(k),
        strided=rng.random((k, -(-h // 4), -(-w // 4)), dtype=np.float32),
        high_res=rng.random((k, h, w), dtype=np.float32),
    )


@pytest.mark.parametrize("storage,atol", [("float16", 1e-3), ("uint8", 1 / 255)])
def test_store_round_trip(tmp_path, storage, atol):
    rec = _record()
    write_cams(tmp_path / "s.npz", [("img_1", rec)], storage=storage)
    with read_cams(tmp_path / "s.npz") as store:
        got = store["img_1"]
    np.testing.assert_array_equal(got.keys, rec.keys)
    np.testing.assert_allclose(got.high_res, rec.high_res, atol=atol)
    np.testing.assert_allclose(got.strided, rec.strided, atol=atol)


def _raw_cam_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(
        path,
        format=np.array(["qaclims-cams-1", "float16"]),
        image_ids=np.array(["img_1"]),
        **arrays,
    )


def test_wrong_shape_names_file_and_image(tmp_path):
    rec = _record()
    path = tmp_path / "bad.npz"
    _raw_cam_file(
        path,
        {
            "img_1/keys": rec.keys,
            "img_1/strided": rec.strided[:, :2],
            "img_1/high_res": rec.high_res,
        },
    )
    with (
        read_cams(path) as store,
        pytest.raises(InputError, match=r"bad\.npz: image img_1: strided"),
    ):
        store["img_1"]


def test_missing_array_names_file_and_image(tmp_path):
    rec = _record()
    path = tmp_path / "bad.npz"
    _raw_cam_file(path, {"img_1/keys": rec.keys, "img_1/strided": rec.strided})
    with (
        read_cams(path) as store,
        pytest.raises(InputError, match=r"bad\.npz: image img_1.*high_res"),
    ):
        list(store)


def test_not_a_cam_file(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match=r"other\.npz: not a CAM file"):
        read_cams(tmp_path / "other.npz")
    with pytest.raises(InputError, match="not found"):
        read_cams(tmp_path / "missing.npz")
    with read_cams(_write_one(tmp_path)) as store, pytest.raises(InputError, match="img_2"):
        store["img_2"]


def _write_one(folder: Path) -> Path:
    write_cams(folder / "ok.npz", [("img_1", _record())], storage="float16")
    return folder / "ok.npz"


def test_empty_shard_writes_an_empty_valid_cam_file(tmp_path, tiny_net, caplog):
    """Shard 1 of 2 holds no train_aug image (ids a, d hash to shard 0): an empty file."""
    rng = np.random.default_rng(5)
    images = []
    for image_id, labels in (("a", [0]), ("d", [])):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, size=(21, 30, 3), dtype=np.uint8)).save(path)
        images.append(
            {"image_id": image_id, "split": "train_aug", "path": str(path), "height": 21,
             "width": 30, "labels": labels}
        )  # fmt: skip
    manifest, classes = write_manifest(tmp_path, images, 3)
    torch.save(tiny_net.state_dict(), tmp_path / "net.pt")
    kw = dict(
        manifest=manifest, classes=classes, model=tmp_path / "net.pt", split="train_aug",
        shards=2, depth=18, scales=(1.0, 0.5), storage="float16", batch_images=2, workers=2,
    )  # fmt: skip
    out = tmp_path / "cams"
    assert cams.run(out=out / "shard-0.npz", shard=0, **kw)["images"] == 2
    assert cams.run(out=out / "shard-1.npz", shard=1, **kw)["images"] == 0
    assert "shard 1 holds no 'train_aug' images" in caplog.text
    with read_cams(out / "shard-1.npz") as store:
        assert store.image_ids == [] and list(store) == []
    with read_cams(out / "shard-0.npz") as store:
        assert store["d"].high_res.shape == (0, 21, 30)  # no class: no maps
    with pytest.raises(InputError, match=r"shard 2: shards run 0\.\.1 \(dataset\.shards = 2\)"):
        cams.run(out=out / "shard-2.npz", shard=2, **kw)
    assert not (out / "shard-2.npz").exists()


def test_a_cpu_job_runs_one_image_a_forward_and_a_cuda_job_the_configured_batch():
    assert cams.device_batch_images(torch.device("cpu"), 8) == 1
    assert cams.device_batch_images(torch.device("cuda"), 8) == 8
