"""Baseline CAM classifier: the initialisation of RITC (ALGORITHM §2).

CAMNet with FixedBatchNorm on the train split, multilabel soft-margin loss on GAP logits,
poly-LR SGD (backbone lr, classifier lr). The reference skips this stage and loads the
released `res50_cam.pth`; ours trains it. Output: the state dict the RITC stage loads
strictly. At the end the training-set classification accuracy on un-augmented images is
logged: a baseline that has not learnt the labels gives CAMs worth nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from qaclims.augment import ManifestImages
from qaclims.devices import PRECISIONS, autocast
from qaclims.digest import code_digest
from qaclims.models.backbone import FixedBatchNorm
from qaclims.models.cam_net import CAMNet
from qaclims.tables import read_class_names
from qaclims.trainer import NOT_RUN_SETTINGS, rank_device, run_key, train

log = logging.getLogger(__name__)


def _loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    loss = F.multilabel_soft_margin_loss(model(batch["image"]), batch["label"])
    return loss, {"loss": loss.item()}


@torch.no_grad()
def calibrate_batchnorm(
    model: CAMNet, dataset: ManifestImages, batch_size: int, batches: int
) -> None:
    """Set FixedBatchNorm statistics to data averages over a few augmented batches.

    Frozen statistics assume pretrained weights; with a random init (weights null, the demo)
    they would be the identity and activations blow up through the residual stages. One
    pass of ordinary train-mode BatchNorm with a cumulative average gives each layer the
    statistics of its input under the layers before it.
    """
    layers = [m for m in model.modules() if isinstance(m, FixedBatchNorm)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.__class__ = nn.BatchNorm2d
    model.train()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    for i, batch in enumerate(loader):
        if i == batches:
            break
        model(batch["image"])
    for m in layers:
        m.__class__ = FixedBatchNorm
        m.momentum = 0.1


@torch.no_grad()
def label_accuracy(
    model: CAMNet, dataset: ManifestImages, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Mean per-label accuracy and exact-match rate of logit > 0, one image at a time."""
    model.eval()
    correct = exact = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        with autocast(device, precision):
            logits = model(item["image"][None].to(device)).float()[0].cpu()
        hits = (logits > 0).float() == item["label"]
        correct += hits.float().mean().item()
        exact += float(hits.all())
    return {"label_accuracy": correct / len(dataset), "exact_match": exact / len(dataset)}


def run(
    *,
    manifest: Path,
    classes: Path,
    out: Path,
    checkpoint_dir: Path,
    split: str,
    depth: int,
    weights: str | None,
    crop_size: int,
    resize_range: tuple[int, int],
    batch_size: int,
    epochs: int,
    lr: float,
    classifier_lr: float,
    weight_decay: float,
    momentum: float,
    poly_power: float,
    seed: int,
    workers: int = 0,
    precision: str = "fp32",
    out_history: Path | None = None,
) -> dict[str, float]:
    """Train the baseline CAM classifier on `split`; write its state dict to `out`.

    Returns the trainer's summary plus the training-set label accuracy and exact match.
    Checkpoints go to a subfolder of `checkpoint_dir` named by `run_key`; the per-step
    losses to `out_history` (`qaclims.history`).
    """
    settings = {k: v for k, v in locals().items() if k not in NOT_RUN_SETTINGS}
    checkpoint_dir = checkpoint_dir / run_key(code=code_digest(__name__), **settings)
    device = rank_device()
    names = read_class_names(classes)
    dataset = ManifestImages(
        manifest, split, len(names), crop_size=crop_size, resize_range=resize_range
    )
    torch.manual_seed(seed)
    model = CAMNet(len(names), depth=depth, weights=weights, fixed_bn=True)
    if weights is None:
        calibrate_batchnorm(model, dataset, batch_size, batches=4)
    backbone, head = model.param_groups()
    summary = train(
        model=model,
        loss_fn=_loss,
        dataset=dataset,
        batch_size=batch_size,
        epochs=epochs,
        workers=workers,
        seed=seed,
        param_groups=[{"params": backbone, "lr": lr}, {"params": head, "lr": classifier_lr}],
        weight_decay=weight_decay,
        momentum=momentum,
        poly_power=poly_power,
        checkpoint_dir=checkpoint_dir,
        out_path=out,
        device=device,
        precision=precision,
        batch_key="cam.batch_size",
        history_path=out_history,
    )
    plain = ManifestImages(manifest, split, len(names), crop_size=crop_size, augment=False)
    summary.update(label_accuracy(model, plain, device, precision))
    chance = plain.labels.mean().item()
    log.info(
        "training-set accuracy: per label %.3f, exact match %.3f (all-negative guess: %.3f)",
        summary["label_accuracy"],
        summary["exact_match"],
        1 - chance,
    )
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="state dict of the trained CAMNet")
    p.add_argument("--out-history", type=Path, default=None, help="per-step loss table (Parquet)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable scratch")
    p.add_argument("--split", default="train_aug")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--weights", default=None, help="torchvision weight name or a file")
    p.add_argument("--crop-size", type=int, default=512)
    p.add_argument("--resize-range", type=int, nargs=2, default=(320, 640))
    p.add_argument("--batch-size", type=int, default=16, help="global batch")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1, help="backbone LR")
    p.add_argument("--classifier-lr", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=1e-4, help="reference quirk: 1e-4")
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--workers", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    log.info("train_cam: %s", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    summary = run(
        manifest=args.manifest,
        classes=args.classes,
        out=args.out,
        out_history=args.out_history,
        checkpoint_dir=args.checkpoint_dir,
        split=args.split,
        depth=args.depth,
        weights=args.weights,
        crop_size=args.crop_size,
        resize_range=tuple(args.resize_range),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        classifier_lr=args.classifier_lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        poly_power=args.poly_power,
        seed=args.seed,
        precision=args.precision,
        workers=args.workers,
    )
    log.info("train_cam done: %s", {k: round(v, 4) for k, v in summary.items()})
