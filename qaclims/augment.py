"""Training images of a manifest split, augmented as IRNet/CLIMS do (ALGORITHM §2).

Per image: long side resized to a random length in [min, max] (PIL bicubic), random
horizontal flip, ImageNet normalisation, then a random square crop; a side shorter than
the crop is zero-padded after normalisation (the mean colour), the image placed at a
random offset inside the padding, as in IRNet's `random_crop`. The reference crop is 512
with long sides 320–640; the demo uses smaller values so it trains in seconds.

Random draws come from torch's global generator, which the trainer seeds per epoch (and
the loader per worker), so a run is reproducible with any number of workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.tables import read_manifest

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's global generator."""
    return int(torch.randint(low, high + 1, ()).item())


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 3×H×W float, ImageNet-normalised."""
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def resize_long(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """Resize so the longer side is `long_side` (bicubic, aspect kept)."""
    h, w = rgb.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


def random_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """A crop×crop window of C×H×W `x`; short sides are zero-padded at a random offset."""
    _, h, w = x.shape
    out = x.new_zeros((x.shape[0], crop, crop))
    ch, cw = min(crop, h), min(crop, w)
    if h > crop:
        src_top, dst_top = _randint(0, h - crop), 0
    else:
        src_top, dst_top = 0, _randint(0, crop - h)
    if w > crop:
        src_left, dst_left = _randint(0, w - crop), 0
    else:
        src_left, dst_left = 0, _randint(0, crop - w)
    out[:, dst_top : dst_top + ch, dst_left : dst_left + cw] = x[
        :, src_top : src_top + ch, src_left : src_left + cw
    ]
    return out


class ManifestImages(Dataset):
    """Images and multi-hot labels of one manifest split, augmented or as stored.

    Images without labels are left out (and counted in the log) unless `keep_unlabelled`:
    they would teach the baseline classifier all-negative samples. RITC keeps them, as the
    reference runs it over every train2014 id (ALGORITHM §9): they hold no pair and only
    enter L_REG. Items are dicts: `image`
    (3×crop×crop, or 3×H×W when not augmented), `label` (C floats) and `index` (the row
    among the labelled images, in image_id order; RITC looks up its pair texts by it).
    """

    def __init__(
        self,
        manifest: Path,
        split: str,
        num_classes: int,
        *,
        crop_size: int,
        resize_range: tuple[int, int] = (320, 640),
        augment: bool = True,
        root: Path = Path("."),
        keep_unlabelled: bool = False,
    ) -> None:
        table = read_manifest(manifest, split=split, columns=["image_id", "path", "labels"])
        if table.num_rows == 0:
            raise InputError(f"{manifest}: split '{split}' has no images")
        if not 0 < resize_range[0] <= resize_range[1]:
            raise InputError(f"resize range {resize_range} is not 0 < min <= max")
        rows = [r for r in table.to_pylist() if r["labels"] or keep_unlabelled]
        if not rows:
            raise InputError(f"{manifest}: no image of split '{split}' has a label")
        if len(rows) < table.num_rows:
            log.info(
                "%s: %d of %d '%s' images have no labels and are left out",
                manifest,
                table.num_rows - len(rows),
                table.num_rows,
                split,
            )
        self.image_ids: list[str] = [r["image_id"] for r in rows]
        self.paths = [Path(root) / r["path"] for r in rows]
        self.labels = torch.zeros(len(rows), num_classes)
        for i, row in enumerate(rows):
            bad = [c for c in row["labels"] if not 0 <= c < num_classes]
            if bad:
                raise InputError(
                    f"{manifest}: image {row['image_id']} has class ids {bad} >= {num_classes}"
                )
            self.labels[i, row["labels"]] = 1.0
        self.crop_size = crop_size
        self.resize_range = resize_range
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rgb = read_rgb(self.paths[index])
        if not self.augment:
            return {"image": normalize(rgb), "label": self.labels[index], "index": index}
        rgb = resize_long(rgb, _randint(*self.resize_range))
        if _randint(0, 1):
            rgb = rgb[:, ::-1]
        image = random_crop(normalize(rgb), self.crop_size)
        return {"image": image, "label": self.labels[index], "index": index}
