"""Pseudo masks of one shard: CAMs propagated by a random walk on IRN boundaries (ALGORITHM §7).

For every image of a CAM shard file: the IRN boundary map of the image and its flip at scale 1
(stride 4); the strided CAMs of the present classes × (1 − boundary), walked with
affinities (1 − max boundary on the path)^β within `radius`, 2^exp_times steps
(qaclims.random_walk); ×4 bilinear upsampling (align_corners=False), cropped to H×W, divided
by the global maximum over classes and pixels; a constant background plane `bg_threshold`
in front; argmax → class ids (0 background, c+1 class c). Output: one VOC-palette PNG per
image in the shard's folder (the reference writes plain PNGs; the values are the same).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from qaclims.atomic import atomic_dir
from qaclims.augment import normalize
from qaclims.cam_store import read_cams
from qaclims.devices import PRECISIONS, autocast, pick_device
from qaclims.errors import InputError
from qaclims.images import read_rgb, save_label_png, voc_palette
from qaclims.models.irn_net import IRNet, load_irn
from qaclims.random_walk import propagate
from qaclims.tables import read_manifest

log = logging.getLogger(__name__)


def mask_from_walk(
    walked: torch.Tensor, keys: np.ndarray, size: tuple[int, int], bg_threshold: float
) -> np.ndarray:
    """H×W uint8 class ids from walked strided maps (K×h×w) of the classes `keys`."""
    height, width = size
    if len(keys) == 0:
        return np.zeros(size, np.uint8)
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)
    up = up[0, :, :height, :width]
    peak = up.max()
    if peak > 0:
        up = up / peak
    scores = torch.cat([torch.full_like(up[:1], bg_threshold), up], dim=0)
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return labels[scores.argmax(dim=0).cpu().numpy()]


def pseudo_mask(
    model: IRNet,
    rgb: np.ndarray,
    strided: np.ndarray,
    keys: np.ndarray,
    device: torch.device,
    *,
    radius: int,
    beta: float,
    exp_times: int,
    bg_threshold: float,
    precision: str = "fp32",
) -> np.ndarray:
    """H×W uint8 pseudo mask of one image from its strided CAMs (K×⌈H/4⌉×⌈W/4⌉)."""
    if len(keys) == 0:  # no class to walk: all background, no boundary map needed
        return np.zeros(rgb.shape[:2], np.uint8)
    with autocast(device, precision):
        edge = model.boundary(normalize(rgb)[None].to(device)).float()
    cams = torch.from_numpy(strided).to(device)
    if edge.shape != cams.shape[1:]:
        raise InputError(f"boundary map {tuple(edge.shape)} and CAMs {strided.shape} differ")
    walked = propagate(cams, edge, radius=radius, beta=beta, exp_times=exp_times)
    return mask_from_walk(walked, keys, rgb.shape[:2], bg_threshold)


def run(
    *,
    manifest: Path,
    cams: Path,
    irn: Path,
    out_dir: Path,
    depth: int,
    radius: int,
    beta: float,
    exp_times: int,
    bg_threshold: float,
    precision: str = "fp32",
) -> dict[str, float]:
    """Write `<out_dir>/<image_id>.png` for every image of the CAM shard file `cams`."""
    device = pick_device()
    log.info("pseudo_masks of %s on %s", cams, device)
    rows = read_manifest(manifest, columns=["image_id", "path"]).to_pylist()
    paths = {r["image_id"]: Path(r["path"]) for r in rows}
    model = load_irn(irn, depth=depth, map_location=device).to(device).eval()
    palette = voc_palette()
    # Pixels of all images, and of those with classes (the others are background by rule).
    fg = total = labelled_fg = labelled_total = 0
    with read_cams(cams) as store, atomic_dir(out_dir) as tmp:
        if not len(store):
            log.warning("pseudo_masks: %s holds no images; writing an empty folder", cams)
        for image_id, record in tqdm(store, total=len(store), mininterval=30):
            if image_id not in paths:
                raise InputError(f"{cams}: image {image_id} is not in {manifest}")
            rgb = read_rgb(paths[image_id])
            if rgb.shape[:2] != record.high_res.shape[1:]:
                raise InputError(
                    f"{paths[image_id]}: image is {rgb.shape[:2]}, its CAMs in {cams} are "
                    f"{record.high_res.shape[1:]}"
                )
            mask = pseudo_mask(
                model, rgb, record.strided, record.keys, device, radius=radius, beta=beta,
                exp_times=exp_times, bg_threshold=bg_threshold, precision=precision,
            )  # fmt: skip
            save_label_png(mask, tmp / f"{image_id}.png", palette)
            fg += int((mask > 0).sum())
            total += mask.size
            if len(record.keys):
                labelled_fg += int((mask > 0).sum())
                labelled_total += mask.size
        count = len(store)
    summary = {"images": float(count), "foreground_fraction": fg / max(total, 1)}
    log.info("pseudo_masks of %s: %s", cams, summary)
    if labelled_total and labelled_fg in (0, labelled_total):
        log.warning(
            "pseudo_masks: every pixel of the images with classes in %s is %s; check the CAMs, "
            "the IRN and pseudo_masks.bg_threshold (%s)",
            cams,
            "background" if labelled_fg == 0 else "foreground",
            bg_threshold,
        )
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--cams", type=Path, required=True, help="CAM shard file")
    p.add_argument("--irn", type=Path, required=True, help="trained IRNet state dict")
    p.add_argument("--out", type=Path, required=True, help="folder of the shard's PNGs")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--exp-times", type=int, default=8)
    p.add_argument("--bg-threshold", type=float, default=0.2)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest, cams=args.cams, irn=args.irn, out_dir=args.out,
        depth=args.depth, radius=args.radius, beta=args.beta, exp_times=args.exp_times,
        bg_threshold=args.bg_threshold, precision=args.precision,
    )  # fmt: skip
