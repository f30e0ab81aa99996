"""Baseline vs RITC CAMs side by side on the same images: what RITC changes, at a glance.

Input: the manifest (eval split, image and mask paths), class names, and the CAM shard
files of the baseline and of RITC; output: one PNG per image (`eval/cam_compare/<id>.png`)
for the first N eval images with a mask and at least one class (by image id, the images of
eval_cam's overlays), one row per present class: image | ground truth | baseline | RITC.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qaclims import visuals
from qaclims.atomic import atomic_dir
from qaclims.cam_store import CamRecord, read_cams
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.tables import read_class_names, read_manifest

log = logging.getLogger(__name__)


def _records(cams: Sequence[Path], image_ids: set[str]) -> dict[str, CamRecord]:
    """The CAMs of `image_ids` from shard files (each image in one shard, not all needed)."""
    found: dict[str, CamRecord] = {}
    for path in cams:
        with read_cams(path) as store:
            for image_id in image_ids.intersection(store.image_ids):
                found[image_id] = store[image_id]
    missing = sorted(image_ids - set(found))
    if missing:
        raise InputError(f"{len(missing)} images have no CAMs in {len(cams)} files: {missing}")
    return found


def run(
    *,
    manifest: Path,
    classes: Path,
    baseline: Sequence[Path],
    ritc: Sequence[Path],
    split: str,
    vis_images: int,
    out: Path,
) -> int:
    """Write one comparison panel per chosen image into `out`; return how many."""
    names = read_class_names(classes)
    rows = read_manifest(
        manifest, split=split, columns=["image_id", "path", "has_mask", "mask_path", "labels"]
    ).to_pylist()
    eligible = [r for r in rows if r["has_mask"] and r["labels"]]
    chosen = sorted(eligible, key=lambda r: r["image_id"])[:vis_images]
    ids = {r["image_id"] for r in chosen}
    networks = {"baseline": _records(baseline, ids), "RITC": _records(ritc, ids)}
    with atomic_dir(out) as folder:
        for r in chosen:
            image_id = r["image_id"]
            recs = {net: found[image_id] for net, found in networks.items()}
            keys = recs["baseline"].keys
            if not np.array_equal(keys, recs["RITC"].keys):
                raise InputError(
                    f"image {image_id}: the baseline CAMs are of classes {keys.tolist()}, "
                    f"RITC's of {recs['RITC'].keys.tolist()}"
                )
            visuals.cam_comparison(
                folder / f"{image_id}.png",
                read_rgb(r["path"]),
                read_label_map(r["mask_path"], len(names)),
                [names[k] for k in keys],
                {f"{net} CAM": rec.high_res for net, rec in recs.items()},
                labels=["background", *names],
                title=image_id,
            )
    log.info("cam_compare: %d panels", len(chosen))
    return len(chosen)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--baseline", type=Path, nargs="+", required=True, help="baseline CAM shards")
    p.add_argument("--ritc", type=Path, nargs="+", required=True, help="RITC CAM shards")
    p.add_argument("--split", required=True, help="eval split (images with masks)")
    p.add_argument("--vis-images", type=int, required=True, help="panels of the first N")
    p.add_argument("--out", type=Path, required=True, help="folder of panel PNGs")


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest,
        classes=args.classes,
        baseline=args.baseline,
        ritc=args.ritc,
        split=args.split,
        vis_images=args.vis_images,
        out=args.out,
    )
