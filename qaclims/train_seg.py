"""Final segmentation: DeepLab (`seg.arch`) trained on the pseudo masks (§8).

Input: the manifest, the class names and the pseudo-mask folders. Training: the train split's
images with their pseudo masks, random rescale in `scale_range` (image bicubic, masks
nearest), flip and crop (padding ignored), cross-entropy with 255 ignored, poly-LR SGD with
the head at `head_lr` (CLIMS's deeplab-pytorch recipe: 2.5e-4, 10× head, momentum 0.9,
weight decay 5e-4). Output: `models/seg.pt` (state dict) and `models/seg_training.json`
(the training summary: steps, last loss). Scoring is stage eval_seg's (qaclims.eval_seg), so
a new test-time protocol never retrains the model.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaclims.atomic import atomic_path
from qaclims.devices import PRECISIONS, pick_device
from qaclims.digest import code_digest
from qaclims.labelled import IGNORE, LabelledImages
from qaclims.models.seg_net import ARCHS, build_seg_net, param_groups
from qaclims.tables import read_class_names
from qaclims.trainer import NOT_RUN_SETTINGS, run_key, train

log = logging.getLogger(__name__)


def _loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(batch["image"])["out"]
    loss = F.cross_entropy(logits.float(), batch["label"].long(), ignore_index=IGNORE)
    return loss, {"loss": loss.item()}


def run(
    *,
    manifest: Path,
    classes: Path,
    masks: list[Path],
    out: Path,
    out_json: Path,
    checkpoint_dir: Path,
    train_split: str,
    depth: int,
    weights: str | None,
    arch: str = "deeplabv3",
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
    out_history: Path | None = None,
) -> dict[str, object]:
    """Train `arch` on the pseudo masks of `train_split`; write it and its training summary.

    Checkpoints go to a subfolder of `checkpoint_dir` named by `run_key`, so new pseudo
    masks never resume a run trained on old ones.
    """
    settings = {k: v for k, v in locals().items() if k not in NOT_RUN_SETTINGS}
    checkpoint_dir = checkpoint_dir / run_key(code=code_digest(__name__), **settings)
    device = pick_device()
    names = ["background", *read_class_names(classes)]
    log.info("train_seg on %s: ResNet-%d %s, crop %d", device, depth, arch, crop_size)
    dataset = LabelledImages(
        manifest, train_split, masks, len(names) - 1, crop_size=crop_size,
        scale_range=scale_range, flip=True, what="pseudo mask",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_seg_net(len(names), depth=depth, weights=weights, arch=arch)
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
        history_path=out_history,
    )
    report = {k: round(v, 6) for k, v in summary.items()}
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="pseudo-mask folders")
    p.add_argument("--out", type=Path, required=True, help="state dict of the trained model")
    p.add_argument("--out-history", type=Path, default=None, help="per-step loss table (Parquet)")
    p.add_argument("--out-json", type=Path, required=True, help="training summary")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable scratch")
    p.add_argument("--train-split", default="train_aug")
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--arch", choices=ARCHS, default="deeplabv2", help="paper: deeplabv2")
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
        out_history=args.out_history,
        out_json=args.out_json, checkpoint_dir=args.checkpoint_dir,
        train_split=args.train_split, depth=args.depth,
        weights=args.weights, arch=args.arch, crop_size=args.crop_size,
        scale_range=tuple(args.scale_range), batch_size=args.batch_size, epochs=args.epochs,
        lr=args.lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
        momentum=args.momentum, poly_power=args.poly_power, seed=args.seed,
        workers=args.workers, precision=args.precision,
    )  # fmt: skip
