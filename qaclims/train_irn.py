"""IRN training: class boundaries and displacements from IR labels (ALGORITHM §7).

Input: the manifest (train split), the class names and the IR-label folders of the CRF stage
(`<image_id>.png`: 0 background, c+1 class c, 255 ignore). Each image is rescaled by a random
factor in `scale_range` (image bicubic, labels nearest), flipped at random, normalised and
cropped (image padded 0, labels 255); the labels are reduced ×0.25 (nearest, PIL's centre
sample) to the stride-4 output grid. Pairs within `radius` on that grid (qaclims.path_index)
get affinity labels: positive-background if both are background, positive-foreground if both
are the same class, negative if the classes differ; a pair touching 255 (or leaving the crop)
is ignored. Loss (IRNet): (pos + neg affinity)/2 + (fg + bg displacement)/2. Only the two
branches train (lr 0.1 edge, 1.0 displacement); the ImageNet backbone is frozen. Afterwards
the mean displacement over top-left crops of the split is stored in the weights.
Output: `models/irn.pt`, the IRNet state dict.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from qaclims.atomic import atomic_path
from qaclims.devices import PRECISIONS, autocast, pick_device
from qaclims.digest import code_digest
from qaclims.errors import InputError
from qaclims.labelled import IGNORE, LabelledImages
from qaclims.models.irn_net import IRNet
from qaclims.path_index import PathIndex
from qaclims.tables import read_class_names
from qaclims.trainer import NOT_RUN_SETTINGS, run_key, train

log = logging.getLogger(__name__)


PAIR_SOURCES = ("reference", "all")


def affinity_labels(
    labels: Tensor, path_index: PathIndex, sources: str = "reference"
) -> tuple[Tensor, Tensor, Tensor]:
    """(bg-positive, fg-positive, negative) boolean (B, D, h, w) pair labels of B×h×w labels.

    `sources`: "reference" keeps IRNet's source pixels only (the whole radius inside the
    crop); "all" every source whose destination is inside.
    """
    if sources not in PAIR_SOURCES:
        raise InputError(f"irn.pair_sources '{sources}' is not one of {PAIR_SOURCES}")
    src, dst = path_index.to_pairs(labels.long(), fill=IGNORE)
    valid = (src != IGNORE) & (dst != IGNORE)
    if sources == "reference":
        valid &= path_index.reference_sources(*labels.shape[-2:]).to(valid.device)
    same = src == dst
    return valid & same & (src == 0), valid & same & (src > 0), valid & ~same


def irn_loss(
    edge_logits: Tensor,
    displacement: Tensor,
    labels: Tensor,
    path_index: PathIndex,
    sources: str = "reference",
) -> tuple[Tensor, dict[str, float]]:
    """IRNet's affinity and displacement losses of one batch (its formulas, eps 1e-5)."""
    bg_pos, fg_pos, neg = (t.float() for t in affinity_labels(labels, path_index, sources))
    aff = 1.0 - path_index.max_on_path(torch.sigmoid(edge_logits.float()[:, 0]))
    eps = 1e-5
    bg_pos_loss = (-bg_pos * torch.log(aff + eps)).sum() / (bg_pos.sum() + eps)
    fg_pos_loss = (-fg_pos * torch.log(aff + eps)).sum() / (fg_pos.sum() + eps)
    neg_loss = (-neg * torch.log(1.0 + eps - aff)).sum() / (neg.sum() + eps)
    src, dst = path_index.to_pairs(displacement.float())
    disp = src - dst  # B×2×D×h×w
    direction = torch.from_numpy(path_index.directions).to(disp).t()[None, :, :, None, None]
    dp_fg = ((disp - direction).abs() * fg_pos[:, None]).sum() / (2 * fg_pos.sum() + eps)
    dp_bg = (disp.abs() * bg_pos[:, None]).sum() / (2 * bg_pos.sum() + eps)
    loss = (bg_pos_loss / 2 + fg_pos_loss / 2 + neg_loss) / 2 + (dp_fg + dp_bg) / 2
    terms = {
        "pos": (bg_pos_loss / 2 + fg_pos_loss / 2).item(),
        "neg": neg_loss.item(),
        "dp_fg": dp_fg.item(),
        "dp_bg": dp_bg.item(),
    }
    return loss, terms


@torch.no_grad()
def mean_displacement(
    model: IRNet,
    dataset: LabelledImages,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 32,
) -> Tensor:
    """Mean of the displacement field over the (top-left crops of the) dataset's images.

    As IRNet, over whole batches of `batch_size` in dataset order (its loader drops the last
    partial batch: 22 of train_aug's 10,582 images); with fewer images than one batch (IRNet
    would fail), over all of them.
    """
    model.eval()
    used = len(dataset) // batch_size * batch_size or len(dataset)
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(used):
        with autocast(device, precision):
            _, dp = model(dataset[i]["image"][None].to(device))
        total += dp.float().mean(dim=(0, 2, 3)).cpu().double()
    return (total / used).float()


def run(
    *,
    manifest: Path,
    classes: Path,
    ir_labels: list[Path],
    out: Path,
    checkpoint_dir: Path,
    split: str,
    depth: int,
    weights: str | None,
    crop_size: int,
    scale_range: tuple[float, float],
    radius: int,
    pair_sources: str = "reference",
    precision: str = "fp32",
    batch_size: int,
    epochs: int,
    edge_lr: float,
    displacement_lr: float,
    weight_decay: float,
    momentum: float,
    poly_power: float,
    seed: int,
    workers: int = 0,
    out_history: Path | None = None,
) -> dict[str, float]:
    """Train IRNet on the IR labels of `split`; write its state dict (with mean shift) to `out`.

    Checkpoints go to a subfolder of `checkpoint_dir` named by `run_key`, so new IR labels
    never resume a run trained on old ones; the per-step losses go to `out_history`.
    """
    settings = {k: v for k, v in locals().items() if k not in NOT_RUN_SETTINGS}
    checkpoint_dir = checkpoint_dir / run_key(code=code_digest(__name__), **settings)
    device = pick_device()
    num_classes = len(read_class_names(classes))
    log.info("train_irn on %s: depth %d, crop %d, radius %d", device, depth, crop_size, radius)
    dataset = LabelledImages(
        manifest, split, ir_labels, num_classes, crop_size=crop_size, scale_range=scale_range,
        flip=True, label_stride=4, what="IR labels",
    )  # fmt: skip
    path_index = PathIndex.build(radius)
    torch.manual_seed(seed)
    model = IRNet(depth=depth, weights=weights)
    edge_params, dp_params = model.param_groups()

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        edge, dp = model(batch["image"])
        return irn_loss(edge, dp, batch["label"], path_index, pair_sources)

    trained = Path(checkpoint_dir) / "trained.pt"
    summary = train(
        model=model,
        loss_fn=loss_fn,
        dataset=dataset,
        batch_size=batch_size,
        epochs=epochs,
        workers=workers,
        seed=seed,
        param_groups=[
            {"params": edge_params, "lr": edge_lr},
            {"params": dp_params, "lr": displacement_lr},
        ],
        weight_decay=weight_decay,
        momentum=momentum,
        poly_power=poly_power,
        checkpoint_dir=checkpoint_dir,
        out_path=trained,
        device=device,
        precision=precision,
        batch_key="irn.batch_size",
        history_path=out_history,
    )
    plain = LabelledImages(
        manifest, split, ir_labels, num_classes, crop_size=crop_size, scale_range=None,
        flip=False, label_stride=4, what="IR labels",
    )  # fmt: skip
    model.mean_shift.copy_(mean_displacement(model, plain, device, precision, batch_size))
    model.inference_crop.fill_(crop_size)
    log.info("mean displacement %s", model.mean_shift.tolist())
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    trained.unlink(missing_ok=True)
    summary["mean_shift_y"], summary["mean_shift_x"] = model.mean_shift.tolist()
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--ir-labels", type=Path, nargs="+", required=True, help="IR-label folders")
    p.add_argument("--out", type=Path, required=True, help="state dict of the trained IRNet")
    p.add_argument("--out-history", type=Path, default=None, help="per-step loss table (Parquet)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable scratch")
    p.add_argument("--split", default="train_aug")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--weights", default=None, help="torchvision weight name or a file")
    p.add_argument("--crop-size", type=int, default=512)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 1.5))
    p.add_argument("--radius", type=int, default=10)
    p.add_argument("--pair-sources", choices=PAIR_SOURCES, default="reference")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--edge-lr", type=float, default=0.1)
    p.add_argument("--displacement-lr", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=1e-4, help="reference quirk: 1e-4")
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    summary = run(
        manifest=args.manifest, classes=args.classes, ir_labels=args.ir_labels, out=args.out,
        out_history=args.out_history,
        checkpoint_dir=args.checkpoint_dir, split=args.split, depth=args.depth,
        weights=args.weights, crop_size=args.crop_size, scale_range=tuple(args.scale_range),
        radius=args.radius,
        pair_sources=args.pair_sources,
        precision=args.precision,
        batch_size=args.batch_size, epochs=args.epochs, edge_lr=args.edge_lr,
        displacement_lr=args.displacement_lr, weight_decay=args.weight_decay,
        momentum=args.momentum, poly_power=args.poly_power, seed=args.seed, workers=args.workers,
    )  # fmt: skip
    log.info("train_irn done: %s", {k: round(v, 4) for k, v in summary.items()})
