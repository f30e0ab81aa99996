"""MS COCO 2014 from `annotations/instances_{train,val}2014.json` (pycocotools).

The 80 categories are mapped to contiguous ids in category-id order. Ground-truth label maps
for evaluation are painted from the instance masks, largest instance first (so smaller,
usually occluding, objects stay visible); crowd regions become 255 (ignored).
"""

from __future__ import annotations

import contextlib
import functools
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qaclims.errors import InputError
from qaclims.images import image_size, save_label_png

SPLITS = ("train2014", "val2014")


def _load(root: Path, split: str):
    """The split's COCO index, its annotations checked against its images and categories."""
    from pycocotools.coco import COCO

    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise InputError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: unreadable COCO annotations ({err!r})") from err
    check_annotations(coco, path)
    return coco


def check_annotations(coco, path: Path) -> None:
    """Every annotation must name a listed image and category: pycocotools indexes an
    unknown image id silently (its annotation would vanish) and an unknown category id
    would surface much later as a bare KeyError."""
    for ann in coco.dataset.get("annotations", []):
        where = f"{path}: annotation {ann['id']} (image id {ann['image_id']})"
        if ann["image_id"] not in coco.imgs:
            raise InputError(f"{where}: the image id is not in 'images'")
        if ann.get("category_id") not in coco.cats:
            raise InputError(
                f"{where}: category id {ann.get('category_id')} is not in 'categories'"
            )


def label_map(coco, image_id: int, cat_index: dict[int, int]) -> np.ndarray:
    """H×W uint8: 0 background, c+1 for contiguous class c, 255 crowd."""
    info = coco.imgs[image_id]
    labels = np.zeros((info["height"], info["width"]), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for ann in sorted(anns, key=lambda a: -a["area"]):
        mask = coco.annToMask(ann).astype(bool)
        labels[mask] = 255 if ann.get("iscrowd", 0) else cat_index[ann["category_id"]] + 1
    return labels


def _row(
    coco,
    cat_index: dict[int, int],
    image_dir: Path,
    split: str,
    staging_dir: Path,
    gt_dir: Path,
    verify: bool,
    image_id: int,
) -> dict:
    """Check one image against its annotation, paint its GT map; its manifest row."""
    info = coco.imgs[image_id]
    path = image_dir / info["file_name"]
    height, width = image_size(path, verify=verify)
    if (height, width) != (info["height"], info["width"]):
        raise InputError(
            f"{path}: size {width}x{height} differs from the annotation "
            f"({info['width']}x{info['height']}, image id {image_id})"
        )
    stem = Path(info["file_name"]).stem
    save_label_png(label_map(coco, image_id, cat_index), staging_dir / f"{stem}.png")
    anns = coco.imgToAnns.get(image_id, [])
    return {
        "image_id": stem,
        "split": split,
        "path": str(path),
        "height": height,
        "width": width,
        "labels": sorted({cat_index[a["category_id"]] for a in anns}),
        "label_source": "instances",
        "has_mask": True,
        "mask_path": str(gt_dir / f"{stem}.png"),
    }


def read(
    root: Path,
    *,
    gt_dir: Path,
    staging_dir: Path,
    max_images: int | None = None,
    verify_images: bool = True,
    workers: int = 4,
) -> tuple[list[dict], tuple[str, ...]]:
    """Manifest rows for train2014 (first `max_images` ids) and val2014.

    GT label maps are written under `staging_dir` and recorded under `gt_dir`, where the
    caller moves them once everything has been read. Images are checked (and, with
    `verify_images`, fully decoded) by `workers` threads; PIL decodes without the GIL.
    """
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing or not (root / "annotations").is_dir():
        raise InputError(f"{root}: not a COCO 2014 root, missing {missing or ['annotations']}")
    rows: list[dict] = []
    names: tuple[str, ...] | None = None
    for split in SPLITS:
        coco = _load(root, split)
        cats = sorted(coco.cats)
        split_names = tuple(coco.cats[c]["name"] for c in cats)
        if names is not None and split_names != names:
            raise InputError(f"{root}: train2014 and val2014 list different categories")
        names = split_names
        cat_index = {c: i for i, c in enumerate(cats)}
        ids = sorted(coco.imgs)
        if split == "train2014" and max_images is not None:
            ids = ids[:max_images]
        (staging_dir / split).mkdir(parents=True, exist_ok=True)
        describe = functools.partial(
            _row,
            coco,
            cat_index,
            root / split,
            split,
            staging_dir / split,
            gt_dir / split,
            verify_images,
        )
        with ThreadPoolExecutor(max(1, workers)) as pool:
            rows.extend(pool.map(describe, ids))
        del coco, describe  # train2014's index (~1 GB at full size) goes before val2014 loads
    assert names is not None
    return rows, names
