"""MS COCO 2014 from `annotations/instances_{train,val}2014.json` (pycocotools).

The 80 categories are mapped to contiguous ids in category-id order. Ground-truth label maps
for evaluation are painted from the instance masks, largest instance first (so smaller,
usually occluding, objects stay visible); crowd regions become 255 (ignored).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from qaclims.errors import InputError
from qaclims.images import image_size, save_label_png

SPLITS = ("train2014", "val2014")


def _load(root: Path, split: str):
    from pycocotools.coco import COCO

    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise InputError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError) as err:
        raise InputError(f"{path}: unreadable COCO annotations ({err})") from err


def label_map(coco, image_id: int, cat_index: dict[int, int]) -> np.ndarray:
    """H×W uint8: 0 background, c+1 for contiguous class c, 255 crowd."""
    info = coco.imgs[image_id]
    labels = np.zeros((info["height"], info["width"]), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for ann in sorted(anns, key=lambda a: -a["area"]):
        mask = coco.annToMask(ann).astype(bool)
        labels[mask] = 255 if ann.get("iscrowd", 0) else cat_index[ann["category_id"]] + 1
    return labels


def read(
    root: Path,
    *,
    gt_dir: Path,
    staging_dir: Path,
    max_images: int | None = None,
    verify_images: bool = False,
) -> tuple[list[dict], tuple[str, ...]]:
    """Manifest rows for train2014 (first `max_images` ids) and val2014.

    GT label maps are written under `staging_dir` and recorded under `gt_dir`, where the
    caller moves them once everything has been read.
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
        for image_id in ids:
            info = coco.imgs[image_id]
            path = root / split / info["file_name"]
            height, width = image_size(path, verify=verify_images)
            if (height, width) != (info["height"], info["width"]):
                raise InputError(f"{path}: size {width}x{height} differs from the annotation")
            anns = coco.imgToAnns.get(image_id, [])
            stem = Path(info["file_name"]).stem
            save_label_png(
                label_map(coco, image_id, cat_index), staging_dir / split / f"{stem}.png"
            )
            rows.append(
                {
                    "image_id": stem,
                    "split": split,
                    "path": str(path),
                    "height": height,
                    "width": width,
                    "labels": sorted({cat_index[a["category_id"]] for a in anns}),
                    "label_source": "instances",
                    "has_mask": True,
                    "mask_path": str(gt_dir / split / f"{stem}.png"),
                }
            )
    assert names is not None
    return rows, names
