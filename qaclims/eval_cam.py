"""CAM evaluation: mIoU of thresholded high-res CAMs against ground truth (ALGORITHM §5).

Input: the manifest (eval split, mask paths), class names and every CAM shard file; output:
`eval/cam.json` (fixed-threshold and best-threshold mIoU, the sweep, per-class IoU),
`eval/cam_per_class.csv`, an IoU bar chart, the sweep's mIoU plotted against the threshold
and CAM overlays of the first eval images.
Shard files are streamed one image at a time. The reference re-reads every CAM once per
swept threshold; here one pass fills a (gt, label, #thresholds below the pixel's score)
histogram from which the confusion matrix of every threshold follows exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qaclims import visuals
from qaclims.atomic import atomic_dir, atomic_path
from qaclims.cam_store import read_cams
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.metrics import IGNORE, iou_from_confusion
from qaclims.tables import read_class_names, read_manifest

log = logging.getLogger(__name__)


def threshold_grid(start: float, stop: float, step: float) -> list[float]:
    """start, start+step, … up to stop inclusive (rounded so 0.05+0.01·k prints as such)."""
    if step <= 0 or stop < start:
        raise InputError(f"threshold sweep {start}..{stop} step {step} is empty")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [round(start + k * step, 10) for k in range(count)]


def cam_prediction(high_res: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """argmax over [threshold plane, CAMs] as class ids (0 bg, c+1); ties go to background."""
    if len(keys) == 0:
        return np.zeros(high_res.shape[1:], dtype=np.uint8)
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return labels[high_res.argmax(axis=0) + 1] * (high_res.max(axis=0) > np.float32(threshold))


class ThresholdSweep:
    """Confusion matrices (num_classes × num_classes) for many background thresholds at once.

    A pixel is foreground at threshold t iff its best CAM score exceeds t (argmax puts the
    background plane first), so binning the score by how many thresholds lie below it gives
    every threshold's prediction from one histogram.
    """

    def __init__(self, thresholds: Sequence[float], num_classes: int) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        if np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be strictly ascending")
        self.num_classes = num_classes
        n, bins = num_classes, len(thresholds) + 1
        self.hist = np.zeros((n, n, bins), dtype=np.int64)

    def add(self, high_res: np.ndarray, keys: np.ndarray, gt: np.ndarray) -> None:
        n, bins = self.num_classes, len(self.thresholds) + 1
        keep = gt != IGNORE
        g = gt[keep].astype(np.int64)
        if len(keys) == 0:
            label = np.zeros_like(g)
            below = np.zeros_like(g)
        else:
            label = (np.asarray(keys) + 1)[high_res.argmax(axis=0)[keep]]
            below = np.searchsorted(self.thresholds, high_res.max(axis=0)[keep], side="left")
        if g.size and g.max() >= n:
            raise ValueError(f"ground truth holds ids outside 0..{n - 1}")
        flat = (g * n + label) * bins + below
        self.hist += np.bincount(flat, minlength=n * n * bins).reshape(n, n, bins)

    def confusions(self) -> np.ndarray:
        """T × n × n: confusion matrix of each threshold (rows ground truth)."""
        at_least = np.flip(np.cumsum(np.flip(self.hist, axis=2), axis=2), axis=2)
        conf = np.moveaxis(at_least[:, :, 1:], 2, 0).copy()  # fg at t_j: > j thresholds below
        conf[:, :, 0] = self.hist.sum(axis=(1, 2))[None, :] - conf[:, :, 1:].sum(axis=2)
        return conf


def best_of_sweep(mious: Sequence[float]) -> int:
    """Index of the best threshold of an ascending sweep that stops at the first t that does
    not improve on the best so far (the reference's `--eval_cam_best`)."""
    best = 0
    for j in range(1, len(mious)):
        if mious[j] > mious[best]:
            best = j
        else:
            break
    return best


def _round(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


def run(
    *,
    manifest: Path,
    classes: Path,
    cams: Sequence[Path],
    split: str,
    bg_threshold: float,
    sweep_start: float,
    sweep_stop: float,
    sweep_step: float,
    vis_images: int,
    out_json: Path,
    out_csv: Path,
    out_bars: Path,
    out_vis: Path,
    out_sweep: Path | None = None,
) -> dict[str, float | int | None]:
    """Score the CAMs of every `split` image with a mask; write the reports."""
    names = ["background", *read_class_names(classes)]
    n = len(names)
    rows = read_manifest(
        manifest, split=split, columns=["image_id", "path", "has_mask", "mask_path"]
    ).to_pylist()
    without_mask = [r["image_id"] for r in rows if not r["has_mask"]]
    rows = {r["image_id"]: r for r in rows if r["has_mask"]}
    if not rows:
        raise InputError(f"{manifest}: no '{split}' images with a ground-truth mask")
    if without_mask:
        log.warning("eval_cam: %d '%s' images have no mask, skipped", len(without_mask), split)
    sweep = threshold_grid(sweep_start, sweep_stop, sweep_step)
    grid = sorted({*sweep, bg_threshold})
    meter = ThresholdSweep(grid, n)
    drawn = set(sorted(rows)[:vis_images])
    seen: set[str] = set()
    with atomic_dir(out_vis) as vis_dir, tqdm(total=len(rows), mininterval=30) as bar:
        for path in cams:
            with read_cams(path) as store:
                for image_id in store.image_ids:
                    row = rows.get(image_id)
                    if row is None:
                        continue
                    if image_id in seen:
                        raise InputError(f"{path}: image {image_id} is in two CAM files")
                    rec = store[image_id]
                    gt = read_label_map(row["mask_path"], n - 1)
                    if gt.shape != rec.high_res.shape[1:]:
                        raise InputError(
                            f"{row['mask_path']}: mask is {gt.shape}, the CAMs of {image_id} "
                            f"in {path} are {rec.high_res.shape[1:]}"
                        )
                    if len(rec.keys) and rec.keys.max() >= n - 1:
                        raise InputError(
                            f"{path}: image {image_id}: class id {rec.keys.max()} outside "
                            f"the {n - 1} classes of {classes}"
                        )
                    meter.add(rec.high_res, rec.keys, gt)
                    if image_id in drawn:
                        pred = cam_prediction(rec.high_res, rec.keys, bg_threshold)
                        visuals.cam_overlays(
                            vis_dir / f"{image_id}.png",
                            read_rgb(row["path"]),
                            rec.high_res,
                            [names[k + 1] for k in rec.keys],
                            labels=names,
                            gt=gt,
                            pred=pred,
                            title=f"{image_id} (t = {bg_threshold})",
                        )
                    seen.add(image_id)
                    bar.update(1)
    missing = sorted(set(rows) - seen)
    if missing:
        raise InputError(
            f"{len(missing)} '{split}' images have no CAMs in {len(cams)} CAM files "
            f"(first: {missing[0]}); is the eval split inside the CAM split?"
        )
    confs = meter.confusions()
    results = [iou_from_confusion(c) for c in confs]
    fixed_iou, fixed_miou = results[grid.index(bg_threshold)]
    sweep_mious = [results[grid.index(t)][1] for t in sweep]
    best = best_of_sweep(sweep_mious)
    stopped = min(best + 1, len(sweep) - 1)
    best_iou, best_miou = results[grid.index(sweep[best])]
    all_bg = np.zeros_like(confs[0])
    all_bg[:, 0] = confs[0].sum(axis=1)
    _, background_miou = iou_from_confusion(all_bg)
    report = {
        "split": split,
        "images": len(seen),
        "images_without_mask": len(without_mask),
        "bg_threshold": bg_threshold,
        "miou": round(fixed_miou, 6),
        "best_threshold": sweep[best],
        "best_miou": round(best_miou, 6),
        "background_only_miou": round(background_miou, 6),
        "sweep": [
            {"threshold": t, "miou": round(m, 6)}
            for t, m in zip(sweep[: stopped + 1], sweep_mious[: stopped + 1], strict=True)
        ],
        "per_class_iou": dict(zip(names, _round(fixed_iou), strict=True)),
        "per_class_iou_best": dict(zip(names, _round(best_iou), strict=True)),
    }
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "name", f"iou_t{bg_threshold}", f"iou_t{sweep[best]}"])
        for k, name in enumerate(names):
            writer.writerow([k, name, *_round(np.array([fixed_iou[k], best_iou[k]]))])
    visuals.iou_bars(
        out_bars, names, {f"t = {bg_threshold}": fixed_iou, f"best t = {sweep[best]}": best_iou}
    )
    if out_sweep is not None:
        visuals.threshold_sweep(
            out_sweep,
            [s["threshold"] for s in report["sweep"]],
            [s["miou"] for s in report["sweep"]],
            best=(sweep[best], best_miou),
            fixed=(bg_threshold, fixed_miou),
        )
    summary = {
        "images": len(seen),
        "miou": round(fixed_miou, 6),
        "best_threshold": sweep[best],
        "best_miou": round(best_miou, 6),
        "background_only_miou": round(background_miou, 6),
    }
    log.info("eval_cam: %s", summary)
    print(
        f"CAM mIoU on {split} ({len(seen)} images): {100 * fixed_miou:.2f} at t = {bg_threshold}, "
        f"{100 * best_miou:.2f} at best t = {sweep[best]} "
        f"(all background: {100 * background_miou:.2f})"
    )
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--cams", type=Path, nargs="+", required=True, help="CAM shard files")
    p.add_argument("--split", required=True, help="eval split (images with masks)")
    p.add_argument("--bg-threshold", type=float, required=True)
    p.add_argument("--sweep-start", type=float, required=True)
    p.add_argument("--sweep-stop", type=float, required=True)
    p.add_argument("--sweep-step", type=float, required=True)
    p.add_argument("--vis-images", type=int, required=True, help="overlays of the first N")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-bars", type=Path, required=True, help="per-class IoU bar chart")
    p.add_argument("--out-vis", type=Path, required=True, help="folder of overlay PNGs")
    p.add_argument("--out-sweep", type=Path, default=None, help="mIoU-vs-threshold plot")


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest,
        classes=args.classes,
        cams=args.cams,
        split=args.split,
        bg_threshold=args.bg_threshold,
        sweep_start=args.sweep_start,
        sweep_stop=args.sweep_stop,
        sweep_step=args.sweep_step,
        vis_images=args.vis_images,
        out_json=args.out_json,
        out_csv=args.out_csv,
        out_bars=args.out_bars,
        out_vis=args.out_vis,
        out_sweep=args.out_sweep,
    )
