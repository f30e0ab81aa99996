"""Pseudo-mask evaluation: mIoU against the ground truth of the eval split (ALGORITHM §8).

Input: the manifest (eval split, mask paths), the class names and every pseudo-mask folder;
output: `eval/pseudo_masks.json` with the mIoU and the per-class IoU (background first, null
for a class in neither the ground truth nor the pseudo masks), and sample panels of the first
images for the report (`visuals.mask_samples`, titled with the image's own mIoU).
Ground-truth 255 is ignored; a prediction of 255 counts as background (IRNet's eval).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from qaclims import visuals
from qaclims.atomic import atomic_dir, atomic_path
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.labelled import iou_report, label_files
from qaclims.metrics import IGNORE, ConfusionMeter, image_miou
from qaclims.tables import read_class_names, read_manifest

log = logging.getLogger(__name__)


def scored(pred: np.ndarray) -> np.ndarray:
    """The pseudo mask as it is scored: its ignore (255) pixels count as background."""
    return np.where(pred == IGNORE, 0, pred)


def sample_title(image_id: str, pred: np.ndarray, gt: np.ndarray, num_labels: int) -> str:
    """A sample's title: its id and its own mIoU over the classes in its GT or pseudo mask."""
    miou, present = image_miou(scored(pred), gt, num_labels)
    if present == 0:
        return f"{image_id}: no labelled pixels"
    return f"{image_id}: mIoU {100 * miou:.1f}% over the {present} classes present"


def run(
    *,
    manifest: Path,
    classes: Path,
    masks: list[Path],
    split: str,
    out_json: Path,
    out_samples: Path | None = None,
    samples: int = 8,
) -> dict[str, object]:
    """Score the pseudo masks of every `split` image with a ground-truth mask."""
    names = ["background", *read_class_names(classes)]
    columns = ["image_id", "path", "has_mask", "mask_path"]
    rows = read_manifest(manifest, split=split, columns=columns)
    rows = [r for r in rows.to_pylist() if r["has_mask"]]
    if not rows:
        raise InputError(f"{manifest}: no '{split}' images with a ground-truth mask")
    files = label_files(masks, [r["image_id"] for r in rows], "pseudo mask")
    meter = ConfusionMeter(len(names))
    for row, path in zip(rows, files, strict=True):
        gt = read_label_map(row["mask_path"], len(names) - 1)
        pred = read_label_map(path, len(names) - 1)
        if pred.shape != gt.shape:
            raise InputError(f"{path}: pseudo mask is {pred.shape}, ground truth {gt.shape}")
        meter.add(scored(pred), gt)
    report = iou_report(meter, names, split=split, images=len(rows))
    if out_samples is not None:
        with atomic_dir(out_samples) as tmp:
            for row, path in list(zip(rows, files, strict=True))[:samples]:
                pred = read_label_map(path, len(names) - 1)
                gt = read_label_map(row["mask_path"], len(names) - 1)
                visuals.mask_samples(
                    tmp / f"{row['image_id']}.png",
                    read_rgb(row["path"]),
                    gt,
                    pred,
                    names,
                    title=sample_title(row["image_id"], pred, gt, len(names)),
                )
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    log.info("pseudo-mask mIoU on %s (%d images): %.2f", split, len(rows), 100 * report["miou"])
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="pseudo-mask folders")
    p.add_argument("--split", default="train")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-samples", type=Path, default=None, help="sample panel folder")
    p.add_argument("--samples", type=int, default=8, help="panels of the first N images")


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest,
        classes=args.classes,
        masks=args.masks,
        split=args.split,
        out_json=args.out_json,
        out_samples=args.out_samples,
        samples=args.samples,
    )
