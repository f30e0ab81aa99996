"""Images with a label map each (IR labels, pseudo masks), augmented in step (ALGORITHM §7, §8).

Shared by the IRN and segmentation training stages and the pseudo-mask evaluation: the label
folders are the per-shard outputs of the CRF and pseudo-mask stages (`<image_id>.png`, 0
background, c+1 class c, 255 ignore). Augmentation: random rescale (image bicubic, labels
nearest), random flip, ImageNet normalisation, random crop (image padded 0, labels 255), with
torch's global generator, which the trainer seeds per epoch and the loader per worker.
`iou_report` is the JSON form of a confusion matrix both evaluations write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from qaclims.augment import normalize, random_crop
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.metrics import ConfusionMeter
from qaclims.tables import read_manifest

IGNORE = 255


def label_files(folders: list[Path], image_ids: list[str], what: str) -> list[Path]:
    """`<folder>/<image_id>.png` of every image, searched over `folders` (one per shard)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: {what} folder not found")
        for path in Path(folder).glob("*.png"):
            found[path.stem] = path
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise InputError(
            f"{len(missing)} images have no {what} in {[str(f) for f in folders]} "
            f"(first: {missing[0]})"
        )
    return [found[i] for i in image_ids]


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high).item())


def augment_pair(
    rgb: np.ndarray,
    labels: np.ndarray,
    *,
    crop_size: int,
    scale_range: tuple[float, float] | None,
    flip: bool,
) -> tuple[Tensor, Tensor]:
    """Random rescale, flip and crop of an image and its label map, in step.

    Without `scale_range` and `flip` the crop is the top-left one. The labels are cropped in
    the same tensor as the image, stored as label − 255 so that zero padding reads 255.
    """
    if scale_range is not None:
        s = _uniform(*scale_range)
        h, w = labels.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
        labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    if flip and torch.randint(0, 2, ()).item():
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    stacked = torch.cat(
        [normalize(rgb), torch.from_numpy(labels.astype(np.float32) - IGNORE)[None]], dim=0
    )
    if scale_range is None and not flip:
        out = stacked.new_zeros((4, crop_size, crop_size))
        h, w = min(crop_size, stacked.shape[1]), min(crop_size, stacked.shape[2])
        out[:, :h, :w] = stacked[:, :h, :w]
    else:
        out = random_crop(stacked, crop_size)
    return out[:3], (out[3] + IGNORE).round().to(torch.uint8)


class LabelledImages(Dataset):
    """Images of a manifest split with a label map each (IR labels or pseudo masks).

    Items: `image` (3×crop×crop) and `label` (uint8, crop×crop reduced by `label_stride`).
    """

    def __init__(
        self,
        manifest: Path,
        split: str,
        label_dirs: list[Path],
        num_classes: int,
        *,
        crop_size: int,
        scale_range: tuple[float, float] | None,
        flip: bool,
        label_stride: int = 1,
        what: str = "label map",
    ) -> None:
        table = read_manifest(manifest, split=split, columns=["image_id", "path"])
        if table.num_rows == 0:
            raise InputError(f"{manifest}: split '{split}' has no images")
        if crop_size % label_stride:
            raise InputError(f"crop size {crop_size} is not a multiple of {label_stride}")
        self.image_ids: list[str] = table.column("image_id").to_pylist()
        self.paths = [Path(p) for p in table.column("path").to_pylist()]
        self.labels = label_files(label_dirs, self.image_ids, what)
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip = flip
        self.label_stride = label_stride

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rgb = read_rgb(self.paths[index])
        labels = read_label_map(self.labels[index], self.num_classes)
        if labels.shape != rgb.shape[:2]:
            raise InputError(
                f"{self.labels[index]}: label map is {labels.shape}, image is {rgb.shape[:2]}"
            )
        image, label = augment_pair(
            rgb, labels, crop_size=self.crop_size, scale_range=self.scale_range, flip=self.flip
        )
        s = self.label_stride
        return {"image": image, "label": label[s // 2 :: s, s // 2 :: s].contiguous()}


def iou_report(meter: ConfusionMeter, names: list[str], **extra: object) -> dict[str, object]:
    """mIoU and per-class IoU; null marks no data (a class in neither gt nor prediction of
    the split), which has no IoU and is left out of the mIoU, unlike a class predicted but
    never right (IoU 0)."""
    iou, miou = meter.iou()
    per_class = {
        n: None if np.isnan(v) else round(float(v), 6) for n, v in zip(names, iou, strict=True)
    }
    return {**extra, "miou": round(miou, 6), "per_class_iou": per_class}
