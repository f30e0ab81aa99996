"""PASCAL VOC 2012 with the SBD augmentation (and the demo dataset, which shares its layout).

train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val. Image labels come from the
`Annotations/` XML object names when that folder exists (IRNet's cls_labels.npy, ALGORITHM
§0), otherwise from the ground-truth masks; each row records which.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qaclims.errors import InputError
from qaclims.images import image_size, read_label_map

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip
REQUIRED = ("JPEGImages", "ImageSets/Segmentation")


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: image list not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def class_names(root: Path) -> tuple[str, ...]:
    """`classes.txt` in the dataset root (the demo) or the 20 VOC classes."""
    listed = root / "classes.txt"
    if listed.is_file():
        return tuple(line.strip() for line in listed.read_text().splitlines() if line.strip())
    return VOC_CLASSES


def splits(root: Path, sbd_root: Path | None) -> dict[str, list[str]]:
    """Image ids of train_aug, train and val."""
    seg = root / "ImageSets/Segmentation"
    train, val = _read_list(seg / "train.txt"), _read_list(seg / "val.txt")
    pool = set(train)
    if sbd_root is not None:
        pool |= set(_read_list(sbd_root / "train.txt")) | set(_read_list(sbd_root / "val.txt"))
    return {"train_aug": sorted(pool - set(val)), "train": train, "val": val}


def _xml_labels(path: Path, index: dict[str, int]) -> list[int]:
    try:
        names = [obj.findtext("name", "").strip() for obj in ET.parse(path).iter("object")]
    except FileNotFoundError as err:
        raise InputError(f"{path}: annotation missing") from err
    except ET.ParseError as err:
        raise InputError(f"{path}: unreadable annotation ({err})") from err
    unknown = sorted({n for n in names if n.replace(" ", "") not in index})
    if unknown:
        raise InputError(f"{path}: unknown class names {unknown}")
    return sorted({index[n.replace(" ", "")] for n in names})


def _mask_path(root: Path, image_id: str, prefer_aug: bool) -> Path | None:
    order = ("SegmentationClassAug", "SegmentationClass")
    for folder in order if prefer_aug else order[::-1]:
        path = root / folder / f"{image_id}.png"
        if path.is_file():
            return path
    return None


def read(
    root: Path, sbd_root: Path | None = None, *, verify_images: bool = True, workers: int = 4
) -> tuple[list[dict], tuple[str, ...]]:
    """Manifest rows (one per image and split) and the class names."""
    missing = [sub for sub in REQUIRED if not (root / sub).is_dir()]
    if missing:
        raise InputError(f"{root}: not a VOC2012 folder, missing {', '.join(missing)}")
    names = class_names(root)
    index = {n.replace(" ", ""): i for i, n in enumerate(names)}
    xml_dir = root / "Annotations"
    use_xml = xml_dir.is_dir()
    per_split = splits(root, sbd_root)

    def describe(item: tuple[str, bool]) -> dict:
        image_id, prefer_aug = item
        image = root / "JPEGImages" / f"{image_id}.jpg"
        height, width = image_size(image, verify=verify_images)
        mask = _mask_path(root, image_id, prefer_aug)
        mask_labels = None
        if mask is not None:
            label_map = read_label_map(mask, len(names))
            if label_map.shape != (height, width):
                raise InputError(
                    f"image {image_id}: mask {mask} is {label_map.shape[1]}x{label_map.shape[0]}, "
                    f"image {image} is {width}x{height} (width x height)"
                )
            mask_labels = [int(v) - 1 for v in np.unique(label_map) if 0 < v < 255]
        if use_xml:
            labels, source = _xml_labels(xml_dir / f"{image_id}.xml", index), "xml"
        elif mask_labels is not None:
            labels, source = mask_labels, "mask"
        else:
            raise InputError(f"{root}: image {image_id} has neither an annotation nor a mask")
        return {
            "image_id": image_id,
            "path": str(image),
            "height": height,
            "width": width,
            "labels": labels,
            "label_source": source,
            "has_mask": mask is not None,
            "mask_path": None if mask is None else str(mask),
        }

    items = [(split, i) for split, ids in per_split.items() for i in ids]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        described = pool.map(lambda item: describe((item[1], item[0] == "train_aug")), items)
        return [
            {**d, "split": split} for (split, _), d in zip(items, described, strict=True)
        ], names
