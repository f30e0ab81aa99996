"""Manifest stage: VOC/SBD and COCO readers, the demo generator, shards, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaclims import manifest
from qaclims.datasets import demo, voc
from qaclims.errors import InputError
from qaclims.images import save_label_png
from qaclims.tables import read_class_names, read_manifest, shard_of


def _voc_image(root: Path, image_id: str, labels: np.ndarray, *, aug: bool = False) -> None:
    h, w = labels.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    folder = "SegmentationClassAug" if aug else "SegmentationClass"
    (root / folder).mkdir(exist_ok=True)
    save_label_png(labels, root / folder / f"{image_id}.png")


def _xml(root: Path, image_id: str, names: list[str]) -> None:
    objects = "".join(f"<object><name>{n}</name></object>" for n in names)
    (root / "Annotations").mkdir(exist_ok=True)
    (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")


@pytest.fixture
def voc_root(tmp_path: Path) -> tuple[Path, Path]:
    """VOC train {a, b}, val {c}; SBD train {d, c}, SBD val {e}: train_aug = {a, b, d, e}."""
    root, sbd = tmp_path / "VOC2012", tmp_path / "sbd"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    sbd.mkdir()
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("c\n")
    (sbd / "train.txt").write_text("d\nc\n")
    (sbd / "val.txt").write_text("e\n")
    lab = np.zeros((12, 16), np.uint8)
    lab[2:6, 2:6] = 15  # person
    lab[0, :] = 255
    for image_id in "abc":
        _voc_image(root, image_id, lab)
    for image_id in "de":
        lab2 = np.zeros((10, 8), np.uint8)
        lab2[1:4, 1:4] = 12  # dog
        _voc_image(root, image_id, lab2, aug=True)
    return root, sbd


def test_voc_train_aug_and_mask_labels(voc_root, tmp_path):
    root, sbd = voc_root
    out = tmp_path / "out"
    counts = manifest.run("voc12", root, out / "m.parquet", out / "c.parquet", sbd_root=sbd)
    assert counts == {"train_aug": 4, "train": 2, "val": 1}
    rows = read_manifest(out / "m.parquet").to_pylist()
    by_split = {s: sorted(r["image_id"] for r in rows if r["split"] == s) for s in counts}
    assert by_split == {"train_aug": ["a", "b", "d", "e"], "train": ["a", "b"], "val": ["c"]}
    d = next(r for r in rows if r["image_id"] == "d")
    assert d["labels"] == [11] and d["label_source"] == "mask"
    assert (d["height"], d["width"]) == (10, 8)
    assert d["mask_path"].endswith("SegmentationClassAug/d.png")
    a = next(r for r in rows if r["image_id"] == "a" and r["split"] == "train")
    assert a["labels"] == [14] and a["has_mask"]
    assert read_class_names(out / "c.parquet")[10] == "dining table"


def test_voc_labels_come_from_xml_when_present(voc_root, tmp_path):
    root, sbd = voc_root
    for image_id in "abcde":
        _xml(root, image_id, ["diningtable", "person", "tvmonitor"])
    out = tmp_path / "out"
    manifest.run("voc12", root, out / "m.parquet", out / "c.parquet", sbd_root=sbd)
    rows = read_manifest(out / "m.parquet").to_pylist()
    assert {tuple(r["labels"]) for r in rows} == {(10, 14, 19)}
    assert {r["label_source"] for r in rows} == {"xml"}


def test_voc_unknown_xml_class_is_named(voc_root, tmp_path):
    root, _ = voc_root
    for image_id in "abc":
        _xml(root, image_id, ["unicorn"])
    with pytest.raises(InputError, match=r"a\.xml: unknown class names \['unicorn'\]"):
        manifest.run("voc12", root, tmp_path / "m.parquet", tmp_path / "c.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_root_without_expected_folders(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(InputError, match="missing ImageSets/Segmentation"):
        manifest.run("voc12", tmp_path, tmp_path / "m.parquet", tmp_path / "c.parquet")


def test_missing_image_is_named_and_nothing_written(voc_root, tmp_path):
    root, sbd = voc_root
    (root / "JPEGImages/b.jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"b\.jpg: image listed but missing"):
        manifest.run("voc12", root, out / "m.parquet", out / "c.parquet", sbd_root=sbd)
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_image_is_named(voc_root, tmp_path):
    root, _ = voc_root
    data = (root / "JPEGImages/a.jpg").read_bytes()
    (root / "JPEGImages/a.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"a\.jpg: unreadable image"):
        manifest.run("voc12", root, tmp_path / "m.parquet", tmp_path / "c.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_mask_value_out_of_range_is_named(voc_root, tmp_path):
    root, _ = voc_root
    bad = np.zeros((12, 16), np.uint8)
    bad[0, 0] = 37
    save_label_png(bad, root / "SegmentationClass/c.png")
    with pytest.raises(InputError, match=r"c\.png: label values \[37\] outside 0\.\.20"):
        manifest.run("voc12", root, tmp_path / "m.parquet", tmp_path / "c.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_cli_exits_non_zero_with_the_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "qaclims", "manifest", "--kind", "voc12", "--root",
         str(tmp_path / "nowhere"), "--manifest", str(tmp_path / "m.parquet"),
         "--classes", str(tmp_path / "c.parquet")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "nowhere: dataset root not found" in result.stderr
    assert not (tmp_path / "m.parquet").exists()


def _coco_split(root: Path, split: str, images: list[dict], anns: list[dict]) -> None:
    cats = [
        {"id": 1, "name": "person"},
        {"id": 18, "name": "dog"},
        {"id": 90, "name": "toothbrush"},
    ]
    (root / split).mkdir(parents=True, exist_ok=True)
    for img in images:
        pixels = np.zeros((img["height"], img["width"], 3), np.uint8)
        Image.fromarray(pixels).save(root / split / img["file_name"])
    (root / "annotations").mkdir(exist_ok=True)
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_coco_categories_labels_and_gt_map(tmp_path):
    root = tmp_path / "coco"
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 20, "width": 30}
        for i in (9, 3, 25)
    ]
    box = [[2, 2, 12, 2, 12, 10, 2, 10]]  # x,y polygon: columns 2..12, rows 2..10
    small = [[5, 5, 8, 5, 8, 8, 5, 8]]
    anns = [
        {"id": 1, "image_id": 9, "category_id": 18, "segmentation": box, "area": 80.0,
         "bbox": [2, 2, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 90, "segmentation": small, "area": 9.0,
         "bbox": [5, 5, 3, 3], "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 1, "segmentation": box, "area": 80.0,
         "bbox": [2, 2, 10, 8], "iscrowd": 0},
    ]  # fmt: skip
    _coco_split(root, "train2014", images, anns)
    _coco_split(root, "val2014", [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg",
                                   "height": 8, "width": 8}], [])  # fmt: skip
    out = tmp_path / "out"
    counts = manifest.run(
        "coco14", root, out / "m.parquet", out / "c.parquet", gt_dir=out / "gt",
        max_images=2,
    )  # fmt: skip
    assert counts == {"train2014": 2, "val2014": 1}
    assert read_class_names(out / "c.parquet") == ["person", "dog", "toothbrush"]
    rows = {r["image_id"]: r for r in read_manifest(out / "m.parquet").to_pylist()}
    assert set(rows) == {"COCO_train2014_000000000003", "COCO_train2014_000000000009",
                         "COCO_val2014_000000000007"}  # fmt: skip
    nine = rows["COCO_train2014_000000000009"]
    assert nine["labels"] == [1, 2]
    gt = np.asarray(Image.open(nine["mask_path"]))
    assert gt.shape == (20, 30)
    assert gt[3, 3] == 2 and gt[6, 6] == 3 and gt[15, 20] == 0
    assert rows["COCO_val2014_000000000007"]["labels"] == []


def test_demo_generator_is_deterministic(tmp_path):
    kw = {"train_images": 3, "val_images": 2, "image_size": 96}
    demo.generate(tmp_path / "a", seed=5, **kw)
    demo.generate(tmp_path / "b", seed=5, **kw)
    demo.generate(tmp_path / "c", seed=6, **kw)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 2 * 5 + 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    jpg = Path("JPEGImages/demo_00000.jpg")
    assert (tmp_path / "a" / jpg).read_bytes() != (tmp_path / "c" / jpg).read_bytes()


def test_demo_reads_as_voc_with_mask_labels(tmp_path):
    demo.generate(tmp_path / "d", seed=0, train_images=6, val_images=2, image_size=96)
    rows, names = voc.read(tmp_path / "d")
    assert names == demo.world_classes("cooccurrence")  # the default world
    assert {r["split"] for r in rows} == {"train_aug", "train", "val"}
    assert all(r["labels"] and r["label_source"] == "mask" and r["has_mask"] for r in rows)
    labels = np.asarray(Image.open(rows[0]["mask_path"]))
    assert 255 in labels and set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5, 255}


def test_shards_are_stable_when_images_are_added():
    """shard = first 8 bytes of SHA-1(image_id), big-endian, mod shards: fixed literal values."""
    # SHA-1 prefixes: img_0 f280b264868c90d3, img_1 ef298af023bc9e9a, 2007_000032
    # 1ff378add3cf1a02, 2008_000002 5bbc17c9a6d874f1: mod 16 is the last hex digit.
    assert [shard_of(i, 16) for i in ("img_0", "img_1", "2007_000032", "2008_000002")] == [
        3, 10, 2, 1,
    ]  # fmt: skip
    assert shard_of("img_0", 7) == 17474162699021357267 % 7 == 1
    assert shard_of("2008_000002", 3) == 6610184507928114417 % 3 == 0
    ids = [f"img_{i}" for i in range(500)]
    before = {i: shard_of(i, 16) for i in ids}
    more = ids + [f"new_{i}" for i in range(200)]
    after = {i: shard_of(i, 16) for i in more}
    assert all(after[i] == before[i] for i in ids)
    counts = np.bincount(list(before.values()), minlength=16)
    assert counts.min() > 10  # spread over every shard


def test_shards_are_read_not_stored(tmp_path):
    """The manifest is the same for any shard count; a shard is a hash of the image id."""
    root = tmp_path / "demo"
    demo.generate(root, seed=0, train_images=12, val_images=2, image_size=64)
    manifest.run("demo", root, tmp_path / "m.parquet", tmp_path / "c.parquet", workers=1)
    rows = read_manifest(tmp_path / "m.parquet", split="train").column("image_id").to_pylist()
    parts = [
        read_manifest(tmp_path / "m.parquet", split="train", shard=k, shards=3)
        .column("image_id")
        .to_pylist()
        for k in range(3)
    ]
    assert sorted(i for part in parts for i in part) == rows and all(parts)
    assert all(shard_of(i, 3) == k for k, part in enumerate(parts) for i in part)


@pytest.mark.parametrize("image_id", ["a", "c", "d"])  # train + train_aug, val, SBD train_aug
def test_voc_mask_of_another_size_is_named(voc_root, tmp_path, image_id):
    root, sbd = voc_root
    folder = "SegmentationClassAug" if image_id == "d" else "SegmentationClass"
    save_label_png(np.zeros((12, 15), np.uint8), root / folder / f"{image_id}.png")
    size = "8x10" if image_id == "d" else "16x12"
    pattern = (
        rf"image {image_id}: mask .*{image_id}\.png is 15x12, image .*{image_id}\.jpg is {size}"
    )
    with pytest.raises(InputError, match=pattern):
        manifest.run("voc12", root, tmp_path / "m.parquet", tmp_path / "c.parquet", sbd_root=sbd)
    assert not (tmp_path / "m.parquet").exists()


def _coco_root(tmp_path: Path, anns: list[dict]) -> Path:
    """train2014 {1, 2} (20×30) with `anns`, val2014 {7} without annotations."""
    root = tmp_path / "coco"
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 20, "width": 30}
        for i in (1, 2)
    ]
    _coco_split(root, "train2014", images, anns)
    _coco_split(root, "val2014", [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg",
                                   "height": 8, "width": 8}], [])  # fmt: skip
    return root


def _coco_ann(ann_id: int, image_id: int, category_id: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]], "area": 80.0,
            "bbox": [2, 2, 10, 8]}  # fmt: skip


@pytest.mark.parametrize(
    ("ann", "problem"),
    [
        (_coco_ann(41, 5, 18), r"annotation 41 \(image id 5\): the image id is not in 'images'"),
        (
            _coco_ann(42, 2, 3),
            r"annotation 42 \(image id 2\): category id 3 is not in 'categories'",
        ),
    ],
)
def test_coco_annotation_integrity_is_checked(tmp_path, ann, problem):
    root = _coco_root(tmp_path, [_coco_ann(40, 1, 1), ann])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"instances_train2014\.json: {problem}"):
        manifest.run("coco14", root, out / "m.parquet", out / "c.parquet", gt_dir=out / "gt")
    assert not out.exists() or not any(out.iterdir())


def test_coco_truncated_image_is_named_by_parallel_verification(tmp_path):
    root = _coco_root(tmp_path, [_coco_ann(40, 1, 1)])
    rng = np.random.default_rng(0)
    path = root / "train2014" / "COCO_train2014_000000000002.jpg"
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"COCO_train2014_000000000002\.jpg: unreadable image"):
        manifest.run(
            "coco14", root, out / "m.parquet", out / "c.parquet", gt_dir=out / "gt", workers=2
        )
    assert not out.exists() or not any(out.iterdir())
    counts = manifest.run(
        "coco14", root, out / "m.parquet", out / "c.parquet", gt_dir=out / "gt",
        verify_images=False,
    )  # fmt: skip
    assert counts == {"train2014": 2, "val2014": 1}  # the header alone does not show it


def test_coco14_config_verifies_images():
    import yaml

    config = yaml.safe_load((Path(__file__).parent.parent / "configs/coco14.yaml").read_text())
    assert config["dataset"]["verify_images"] is True
