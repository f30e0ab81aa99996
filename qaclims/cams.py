"""CAM inference: multi-scale + flip CAMs of one manifest shard into a CAM file (ALGORITHM §5).

Input: the manifest, the CAM network weights (RITC's); output: `cams/shard-K.npz` in the
format of `qaclims.cam_store`. Unlike the reference (one forward per scale, one image at a
time) each scale goes through the network once with its flip in the same batch, together
with other images of the same size, while DataLoader workers decode the next images.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qaclims.cam_store import STORAGES, CamRecord, strided_size, write_cams
from qaclims.devices import PRECISIONS, autocast, pick_device
from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.models.cam_net import load_cam_net
from qaclims.tables import read_class_names, read_manifest

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """PIL bicubic resize to (round(H·s), round(W·s)); scale 1 leaves the image as is."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def normalise(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 → ImageNet-normalised float32 3×H×W."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class _ScaledImages(Dataset):
    """Decoded images as one normalised tensor per scale (runs in DataLoader workers)."""

    def __init__(
        self, paths: Sequence[str], sizes: Sequence[tuple[int, int]], scales: Sequence[float]
    ) -> None:
        self.paths, self.sizes, self.scales = paths, sizes, scales

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor]]:
        image = read_rgb(self.paths[i])
        if image.shape[:2] != tuple(self.sizes[i]):
            raise InputError(
                f"{self.paths[i]}: image is {image.shape[:2]}, the manifest says {self.sizes[i]}"
            )
        return i, [normalise(rescale(image, s)) for s in self.scales]


def _collate(items: list[tuple[int, list[torch.Tensor]]]) -> tuple[list[int], list[torch.Tensor]]:
    indices = [i for i, _ in items]
    per_scale = [torch.stack(t) for t in zip(*(x for _, x in items), strict=True)]
    return indices, per_scale


def device_batch_images(device: torch.device, batch_images: int) -> int:
    """Equal-size images per forward on `device`: `batch_images` on CUDA, 1 on the CPU.

    On the CPU several images a batch run slower than the same images one by one (ResNet-50,
    4 images 320×480: 0.71× the reference loop against 0.98×; benchmarks/bench_cam.py).
    """
    return batch_images if device.type == "cuda" else 1


def equal_size_batches(sizes: Sequence[tuple[int, int]], batch_images: int) -> list[list[int]]:
    """Indices grouped by image size (then by index), at most `batch_images` a group."""
    order = sorted(range(len(sizes)), key=lambda i: (tuple(sizes[i]), i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_images and sizes[batches[-1][0]] == sizes[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def multiscale_cams(
    model: torch.nn.Module,
    scaled: Sequence[torch.Tensor],
    size: tuple[int, int],
    keys: Sequence[np.ndarray],
    device: torch.device,
    precision: str = "fp32",
) -> list[CamRecord]:
    """CAM records of n equal-size images given as one n×3×h×w batch per scale.

    Each scale runs once on [images, flipped images]; the flipped half is flipped back and
    added. Strided (⌈H/4⌉×⌈W/4⌉) and high-res (⌈H/16⌉·16 then cropped to H×W) maps of the
    present classes are summed over scales and divided by their max + 1e-5.
    """
    height, width = size
    small = strided_size(height, width)
    up = (-(-height // 16) * 16, -(-width // 16) * 16)
    n = len(keys)
    idx = [torch.as_tensor(k, dtype=torch.long, device=device) for k in keys]
    strided = [torch.zeros((len(k), *small), device=device) for k in keys]
    high_res = [torch.zeros((len(k), height, width), device=device) for k in keys]
    for batch in scaled:
        x = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            out = model.cams(torch.cat([x, x.flip(-1)]))
        out = out.float()
        out = out[:n] + out[n:].flip(-1)
        for i in range(n):
            if len(keys[i]) == 0:
                continue
            maps = out[i : i + 1, idx[i]]
            strided[i] += F.interpolate(maps, small, mode="bilinear", align_corners=False)[0]
            hr = F.interpolate(maps, up, mode="bilinear", align_corners=False)[0]
            high_res[i] += hr[:, :height, :width]
    records = []
    for i in range(n):
        s = strided[i] / (strided[i].amax(dim=(1, 2), keepdim=True) + 1e-5)
        h = high_res[i] / (high_res[i].amax(dim=(1, 2), keepdim=True) + 1e-5)
        records.append(
            CamRecord(keys=np.asarray(keys[i]), strided=s.cpu().numpy(), high_res=h.cpu().numpy())
        )
    return records


def run(
    *,
    manifest: Path,
    classes: Path,
    model: Path,
    out: Path,
    split: str,
    shard: int,
    shards: int,
    depth: int,
    scales: Sequence[float],
    storage: str,
    batch_images: int,
    workers: int,
    precision: str = "fp32",
) -> dict[str, float | int | str]:
    """Multi-scale + flip CAMs of every `split` image of `shard`, written to `out`."""
    if storage not in STORAGES:
        raise InputError(f"CAM storage '{storage}' is not one of {STORAGES}")
    if not 0 <= shard < shards:
        raise InputError(
            f"{manifest}: no '{split}' images in shard {shard}: shards run 0..{shards - 1} "
            f"(dataset.shards = {shards})"
        )
    device = pick_device()
    log.info("cams: shard %d of %s, scales %s, device %s", shard, split, list(scales), device)
    num_classes = len(read_class_names(classes))
    table = read_manifest(
        manifest,
        split=split,
        shard=shard,
        shards=shards,
        columns=["image_id", "path", "height", "width", "labels"],
    )
    rows = table.to_pylist()
    if not rows:  # a small split or many shards: an empty, valid file keeps the DAG whole
        log.warning("cams: shard %d holds no '%s' images; writing an empty CAM file", shard, split)
    net = load_cam_net(model, num_classes, depth=depth, fixed_bn=False).eval().to(device)
    sizes = [(r["height"], r["width"]) for r in rows]
    keys = [np.asarray(sorted(r["labels"]), dtype=np.int64) for r in rows]
    batches = equal_size_batches(sizes, device_batch_images(device, batch_images))
    loader = DataLoader(
        _ScaledImages([r["path"] for r in rows], sizes, list(scales)),
        batch_sampler=batches,
        num_workers=min(workers, len(batches)),  # none to start for an empty shard
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )

    def records() -> Iterator[tuple[str, CamRecord]]:
        with tqdm(total=len(rows), desc=f"cams shard {shard}", mininterval=30) as bar:
            for indices, scaled in loader:
                batch_keys = [keys[i] for i in indices]
                recs = multiscale_cams(
                    net, scaled, sizes[indices[0]], batch_keys, device, precision
                )
                for i, rec in zip(indices, recs, strict=True):
                    yield rows[i]["image_id"], rec
                bar.update(len(indices))

    start = time.perf_counter()
    count = write_cams(out, records(), storage=storage)
    seconds = time.perf_counter() - start
    summary = {
        "images": count,
        "seconds": round(seconds, 2),
        "images_per_s": round(count / max(seconds, 1e-9), 3),
        "device": str(device),
        "megabytes": round(Path(out).stat().st_size / 2**20, 2),
    }
    log.info("cams: %s", summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="CAMNet state dict (RITC)")
    p.add_argument("--out", type=Path, required=True, help="shard CAM file (.npz)")
    p.add_argument("--split", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True, help="dataset.shards")
    p.add_argument("--depth", type=int, required=True, help="ResNet depth of the CAMNet")
    p.add_argument("--scales", type=float, nargs="+", required=True)
    p.add_argument("--storage", choices=STORAGES, required=True)
    p.add_argument("--batch-images", type=int, required=True, help="equal-size images a batch")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--workers", type=int, default=1, help="decoding processes and CPU threads")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.workers))
    run(
        manifest=args.manifest,
        classes=args.classes,
        model=args.model,
        out=args.out,
        split=args.split,
        shard=args.shard,
        shards=args.shards,
        depth=args.depth,
        scales=args.scales,
        storage=args.storage,
        batch_images=args.batch_images,
        precision=args.precision,
        workers=args.workers,
    )
