"""Final segmentation: DeepLabV3 trained on the pseudo masks, scored on the seg split (§8).

Input: the manifest, the class names and the pseudo-mask folders. Training: the train split's
images with their pseudo masks, random rescale in `scale_range` (image bicubic, masks
nearest), flip and crop (padding ignored), cross-entropy with 255 ignored, poly-LR SGD with
the head at `head_lr` (CLIMS's deeplab-pytorch recipe: 2.5e-4, 10× head, momentum 0.9,
weight decay 5e-4). Evaluation: every seg-split image with a ground-truth mask, whole image,
single scale, no CRF (the paper adds multi-scale inference and CRF post-processing).
Output: `models/seg.pt` (state dict) and `eval/seg.json` (mIoU, per-class IoU).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from qaclims.atomic import atomic_path
from qaclims.augment import normalize
from qaclims.devices import PRECISIONS, autocast, pick_device
from qaclims.digest import code_digest
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb
from qaclims.labelled import IGNORE, LabelledImages, iou_report
from qaclims.metrics import ConfusionMeter
from qaclims.models.seg_net import build_seg_net, param_groups
from qaclims.tables import read_class_names, read_manifest
from qaclims.trainer import NOT_RUN_SETTINGS, run_key, train

log = logging.getLogger(__name__)


def _loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(batch["image"])["out"]
    loss = F.cross_entropy(logits.float(), batch["label"].long(), ignore_index=IGNORE)
    return loss, {"loss": loss.item()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    manifest: Path,
    split: str,
    names: list[str],
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, object]:
    """mIoU of whole-image predictions on every `split` image with a ground-truth mask."""
    rows = read_manifest(
        manifest, split=split, columns=["image_id", "path", "has_mask", "mask_path"]
    )
    rows = [r for r in rows.to_pylist() if r["has_mask"]]
    if not rows:
        raise InputError(f"{manifest}: no '{split}' images with a ground-truth mask")
    model.eval()
    meter = ConfusionMeter(len(names))
    for row in tqdm(rows, mininterval=30):
        gt = read_label_map(row["mask_path"], len(names) - 1)
        rgb = read_rgb(row["path"])
        if gt.shape != rgb.shape[:2]:
            raise InputError(f"{row['mask_path']}: mask is {gt.shape}, image is {rgb.shape[:2]}")
        with autocast(device, precision):
            logits = model(normalize(rgb)[None].to(device))["out"]
        meter.add(logits[0].argmax(dim=0).cpu().numpy(), gt)
    return iou_report(meter, names, split=split, images=len(rows))


def run(
    *,
    manifest: Path,
    classes: Path,
    masks: list[Path],
    out: Path,
    out_json: Path,
    checkpoint_dir: Path,
    train_split: str,
    eval_split: str,
    depth: int,
    weights: str | None,
    crop_size: int,
    scale_range: tuple[float, float],
    batch_size: int,
    epochs: int,
    lr: float,
    head_lr: float,
    weight_decay: float,
    momentum: float,
    poly_power: float,
    seed: int,
    workers: int = 0,
    precision: str = "fp32",
) -> dict[str, object]:
    """Train DeepLabV3 on the pseudo masks of `train_split`; score it on `eval_split`.

    Checkpoints go to a subfolder of `checkpoint_dir` named by `run_key`, so new pseudo
    masks never resume a run trained on old ones.
    """
    settings = {k: v for k, v in locals().items() if k not in NOT_RUN_SETTINGS}
    checkpoint_dir = checkpoint_dir / run_key(code=code_digest(__name__), **settings)
    device = pick_device()
    names = ["background", *read_class_names(classes)]
    log.info("train_seg on %s: ResNet-%d DeepLabV3, crop %d", device, depth, crop_size)
    dataset = LabelledImages(
        manifest, train_split, masks, len(names) - 1, crop_size=crop_size,
        scale_range=scale_range, flip=True, what="pseudo mask",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_seg_net(len(names), depth=depth, weights=weights)
    backbone, head = param_groups(model)
    summary = train(
        model=model,
        loss_fn=_loss,
        dataset=dataset,
        batch_size=batch_size,
        epochs=epochs,
        workers=workers,
        seed=seed,
        param_groups=[{"params": backbone, "lr": lr}, {"params": head, "lr": head_lr}],
        weight_decay=weight_decay,
        momentum=momentum,
        poly_power=poly_power,
        checkpoint_dir=checkpoint_dir,
        out_path=out,
        device=device,
        precision=precision,
        batch_key="seg.batch_size",
    )
    report = evaluate(model, manifest, eval_split, names, device, precision)
    report["training"] = {k: round(v, 6) for k, v in summary.items()}
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    log.info("segmentation mIoU on %s: %.2f", eval_split, 100 * report["miou"])
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="pseudo-mask folders")
    p.add_argument("--out", type=Path, required=True, help="state dict of the trained model")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable scratch")
    p.add_argument("--train-split", default="train_aug")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--weights", default=None, help="torchvision weight name or a file")
    p.add_argument("--crop-size", type=int, default=321)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0))
    p.add_argument("--batch-size", type=int, default=10, help="global batch")
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--lr", type=float, default=2.5e-4, help="backbone LR")
    p.add_argument("--head-lr", type=float, default=2.5e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--workers", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest, classes=args.classes, masks=args.masks, out=args.out,
        out_json=args.out_json, checkpoint_dir=args.checkpoint_dir,
        train_split=args.train_split, eval_split=args.eval_split, depth=args.depth,
        weights=args.weights, crop_size=args.crop_size, scale_range=tuple(args.scale_range),
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
        weight_decay=args.weight_decay, momentum=args.momentum, poly_power=args.poly_power,
        seed=args.seed, workers=args.workers, precision=args.precision,
    )  # fmt: skip
