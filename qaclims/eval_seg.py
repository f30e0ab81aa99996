"""Segmentation evaluation: the trained model scored on the seg split under a protocol (§8).

Input: the manifest, the class names, `models/seg.pt` and its training summary
(`models/seg_training.json`, written by train_seg). Every seg-split image with a
ground-truth mask is predicted whole under the test-time protocol of `qaclims.seg_predict`
(scales, flip, fusion, CRF). Output: `eval/seg.json` with mIoU, per-class IoU, the protocol
and the training summary. A stage of its own, so a new protocol never retrains the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from qaclims.atomic import atomic_path
from qaclims.devices import limit_cpu_threads, pick_device
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.labelled import iou_report
from qaclims.metrics import ConfusionMeter
from qaclims.models.seg_net import load_seg_net
from qaclims.seg_predict import Protocol, add_protocol_arguments, predict_labels, protocol_from_args
from qaclims.tables import read_class_names, read_manifest

log = logging.getLogger(__name__)


def _training_summary(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: training summary not found") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def run(
    *,
    manifest: Path,
    classes: Path,
    model: Path,
    out_json: Path,
    split: str,
    depth: int,
    protocol: Protocol,
    arch: str = "deeplabv3",
    training: Path | None = None,
    precision: str = "fp32",
) -> dict[str, object]:
    """mIoU of `model` on every `split` image with a ground-truth mask, under `protocol`."""
    names = ["background", *read_class_names(classes)]
    rows = read_manifest(
        manifest, split=split, columns=["image_id", "path", "has_mask", "mask_path"]
    )
    rows = [r for r in rows.to_pylist() if r["has_mask"]]
    if not rows:
        raise InputError(f"{manifest}: no '{split}' images with a ground-truth mask")
    summary = _training_summary(training)
    device = pick_device()
    net = load_seg_net(model, len(names), depth=depth, arch=arch).eval().to(device)
    log.info("eval_seg on %s: %d '%s' images, %s", device, len(rows), split, protocol.record())
    meter = ConfusionMeter(len(names))
    start = time.perf_counter()
    for row in tqdm(rows, desc="eval_seg", mininterval=30):
        gt = read_label_map(row["mask_path"], len(names) - 1)
        rgb = read_rgb(row["path"])
        if gt.shape != rgb.shape[:2]:
            raise InputError(f"{row['mask_path']}: mask is {gt.shape}, image is {rgb.shape[:2]}")
        meter.add(predict_labels(net, rgb, protocol, device, precision), gt)
    log.info("eval_seg: %.1f s", time.perf_counter() - start)
    report = iou_report(meter, names, split=split, images=len(rows))
    report["protocol"] = protocol.record()
    if summary is not None:
        report["training"] = summary
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    log.info("segmentation mIoU on %s: %.2f", split, 100 * report["miou"])
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="models/seg.pt")
    p.add_argument("--training", type=Path, default=None, help="train_seg's summary JSON")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--split", required=True)
    add_protocol_arguments(p)


def main(args: argparse.Namespace) -> None:
    limit_cpu_threads(args.threads)
    run(
        manifest=args.manifest, classes=args.classes, model=args.model,
        out_json=args.out_json, split=args.split, depth=args.depth,
        protocol=protocol_from_args(args), arch=args.arch, training=args.training,
        precision=args.precision,
    )  # fmt: skip
