"""RITC: region image-text contrastive training of the CAM network (ALGORITHM §3).

CAMNet (ordinary BatchNorm in train mode, initialised strictly from the baseline) gives
activation maps A = σ(W * f(x)). For every pair (b, c) with y_bc = 1 the map is upsampled
to the CLIP input size, thresholded by FAT (α · its max, no gradient), and the crop is split
into a foreground a⊙x and a background (1−a)⊙x image for the frozen CLIP image tower
(mask-adapted or plain, §4). The losses pull the foreground towards the pair's FG text and
away from its BG texts (L_FRC), the background the other way (L_BRC), plus L_REG = mean(A).

The step is vectorised: the pairs of a batch are gathered by tensor indexing and all their
region images go through CLIP in one call; no Python loop runs over images, classes or
pairs (the reference loops over all three and calls CLIP per region image).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from qaclims.augment import IMAGENET_MEAN, IMAGENET_STD, ManifestImages
from qaclims.devices import PRECISIONS
from qaclims.digest import code_digest
from qaclims.errors import InputError
from qaclims.models.cam_net import load_cam_net
from qaclims.models.mask_clip import MaskCLIPImage, PlainCLIPImage, load_image_tower
from qaclims.pair_text import PairTexts, load_pair_texts
from qaclims.tables import read_class_names
from qaclims.trainer import NOT_RUN_SETTINGS, rank_device, run_key, train

log = logging.getLogger(__name__)


def fat_mask(maps: Tensor, alpha: float) -> Tensor:
    """Foreground activation threshold: 1[a ≥ α · max(a)] per map (K×1×S×S), no gradient."""
    with torch.no_grad():
        peak = maps.amax(dim=(-2, -1), keepdim=True)
        return (maps >= alpha * peak).to(maps.dtype)


def contrastive_losses(
    v_fg: Tensor, v_bg: Tensor, t_fg: Tensor, t_bg: Tensor, valid: Tensor, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair L_FRC and L_BRC (K each) and which pairs have any BG text (K bool).

    v_* are L2-normalised image features (K×D), t_fg K×D, t_bg K×L×D with `valid` K×L.
    Written in log space (same value as the exp form; no 0/0 for an empty BG set, whose
    terms are finite and get zero weight from the caller).
    """
    has_bg = valid.any(dim=1)
    hide = ~valid & has_bg[:, None]
    n_bg = valid.sum(dim=1).clamp(min=1)
    fg_pos = (v_fg * t_fg).sum(-1) / tau
    fg_neg = torch.einsum("kd,kld->kl", v_fg, t_bg).div(tau).masked_fill(hide, float("-inf"))
    frc = torch.logsumexp(torch.cat([fg_pos[:, None], fg_neg], dim=1), dim=1) - fg_pos
    bg_neg = (v_bg * t_fg).sum(-1) / tau
    bg_pos = torch.einsum("kd,kld->kl", v_bg, t_bg).div(tau).masked_fill(hide, float("-inf"))
    log_mean = torch.logsumexp(bg_pos, dim=1) - n_bg.log() if t_bg.shape[1] else bg_neg * 0
    brc = torch.logaddexp(log_mean, bg_neg) - log_mean
    return frc, brc, has_bg


@dataclass
class RITCLoss:
    """loss_fn for `trainer.train`: the RITC loss of one batch, vectorised over its pairs."""

    clip: MaskCLIPImage | PlainCLIPImage
    texts: PairTexts
    alpha: float = 0.1
    tau: float = 0.7
    w_frc: float = 10.0
    w_brc: float = 8.0
    w_reg: float = 0.2
    pair_sum_divisor: float = 2.0
    mask_adapted: bool = True
    clip_input_norm: str = "imagenet"

    def __post_init__(self) -> None:
        if self.clip_input_norm not in ("imagenet", "clip"):
            raise InputError(f"clip_input_norm '{self.clip_input_norm}' is not imagenet or clip")

    def clip_input(self, x: Tensor) -> Tensor:
        """The ImageNet-normalised crop at CLIP size, re-normalised for CLIP if asked.

        "clip" uses the loaded model's own mean and std (OpenAI's for CLIP, 0.5 for SigLIP).
        """
        size = self.clip.image_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
        if self.clip_input_norm == "clip":
            shape = (1, 3, 1, 1)
            imagenet_std, imagenet_mean = x.new_tensor(IMAGENET_STD), x.new_tensor(IMAGENET_MEAN)
            clip_std, clip_mean = x.new_tensor(self.clip.std), x.new_tensor(self.clip.mean)
            pixels = x * imagenet_std.view(shape) + imagenet_mean.view(shape)
            x = (pixels - clip_mean.view(shape)) / clip_std.view(shape)
        return x

    def region_features(self, maps: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """(v_fg, v_bg), L2-normalised, of K upsampled maps (K×1×S×S) and crops (K×3×S×S)."""
        mask = fat_mask(maps, self.alpha)
        fg, bg = maps * images, (1 - maps) * images
        if self.mask_adapted:
            v = self.clip(torch.cat([fg, bg]), torch.cat([mask, 1 - mask]))
        else:
            v = self.clip(torch.cat([fg * mask, bg * (1 - mask)]))
        v = F.normalize(v.float(), dim=-1)
        return v[: len(maps)], v[len(maps) :]

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        x, labels, index = batch["image"], batch["label"], batch["index"]
        maps = model.activation_maps(x)
        reg = maps.float().mean()
        b, c = torch.nonzero(labels > 0, as_tuple=True)  # image-major, as the reference
        world = dist.get_world_size() if dist.is_initialized() else 1
        if len(b) == 0:  # no present class in the batch: L_REG alone
            frc_sum = brc_sum = reg * 0
        else:
            size = self.clip.image_size
            a = F.interpolate(
                maps[b, c][:, None], size=(size, size), mode="bilinear", align_corners=True
            )
            v_fg, v_bg = self.region_features(a, self.clip_input(x)[b])
            t_fg, t_bg, valid = self.texts.gather(self.texts.pair_of[index[b], c])
            with torch.autocast(x.device.type, enabled=False):  # similarities in fp32
                frc, brc, has_bg = contrastive_losses(v_fg, v_bg, t_fg, t_bg, valid, self.tau)
            # Sums over pairs; × world so that averaging gradients over N processes gives
            # Σ over the global batch / divisor whatever N is (ALGORITHM §3).
            scale = has_bg.float() * world / self.pair_sum_divisor
            frc_sum, brc_sum = (frc * scale).sum(), (brc * scale).sum()
        loss = self.w_frc * frc_sum + self.w_brc * brc_sum + self.w_reg * reg
        terms = {"frc": frc_sum.item() / world, "brc": brc_sum.item() / world, "reg": reg.item()}
        return loss, terms


def run(
    *,
    manifest: Path,
    classes: Path,
    baseline: Path,
    corpus_fg: Path,
    corpus_bg: Path,
    features: Path,
    out: Path,
    checkpoint_dir: Path,
    split: str,
    depth: int,
    clip_architecture: str,
    clip_pretrained: str,
    clip_config: Path | None,
    ovseg: Path | None,
    clip_mode: str,
    mask_prompt_depth: int,
    clip_input_norm: str,
    batchnorm: str,
    prompt: str,
    crop_size: int,
    resize_range: tuple[int, int],
    batch_size: int,
    epochs: int,
    lr: float,
    classifier_lr: float,
    weight_decay: float,
    momentum: float,
    poly_power: float,
    alpha: float,
    tau: float,
    loss_weights: tuple[float, float, float],
    pair_sum_divisor: float,
    label_weight: float = 0.5,
    precision: str = "fp32",
    seed: int,
    workers: int = 0,
    out_history: Path | None = None,
) -> dict[str, float]:
    """Train the CAM network with RITC from `baseline`; write its state dict to `out`.

    `clip_mode` is "mask_adapted" (OV-Seg mask prompts, §4) or "plain".
    Checkpoints go to a subfolder of `checkpoint_dir` named by `run_key`; the per-step
    L_FRC, L_BRC, L_REG and total to `out_history` (`qaclims.history`).
    """
    settings = {k: v for k, v in locals().items() if k not in NOT_RUN_SETTINGS}
    checkpoint_dir = checkpoint_dir / run_key(code=code_digest(__name__), **settings)
    if clip_mode not in ("mask_adapted", "plain"):
        raise InputError(f"clip mode '{clip_mode}' is not mask_adapted or plain")
    device = rank_device()
    names = read_class_names(classes)
    dataset = ManifestImages(
        manifest,
        split,
        len(names),
        crop_size=crop_size,
        resize_range=resize_range,
        keep_unlabelled=True,  # the reference's RITC runs over every image (ALGORITHM §9)
    )
    texts = load_pair_texts(
        corpus_fg=corpus_fg,
        corpus_bg=corpus_bg,
        features=features,
        image_ids=dataset.image_ids,
        labels=dataset.labels,
        class_names=names,
        prompt=prompt,
        label_weight=label_weight,
    )
    if batchnorm not in ("train", "frozen"):
        raise InputError(f"batchnorm '{batchnorm}' is not train or frozen")
    model = load_cam_net(baseline, len(names), depth=depth, fixed_bn=batchnorm == "frozen")
    depth_prompts = mask_prompt_depth if clip_mode == "mask_adapted" else 0
    if depth_prompts and ovseg is None:
        log.warning(
            "clip_mode mask_adapted without an OV-Seg checkpoint: the mask prompts are all "
            "zero, so this is NOT the paper's mask-adapted CLIP (models.ovseg)"
        )
    clip = load_image_tower(
        clip_architecture,
        clip_pretrained,
        device,
        config_json=clip_config,
        ovseg=ovseg,
        mask_prompt_depth=depth_prompts,
        mask_adapted=clip_mode == "mask_adapted",
    )
    if clip.output_dim != texts.fg.shape[1]:
        raise InputError(
            f"{features}: text features have {texts.fg.shape[1]} dimensions, "
            f"the CLIP image tower {clip_architecture} gives {clip.output_dim}"
        )
    loss_fn = RITCLoss(
        clip=clip,
        texts=texts.to(device),
        alpha=alpha,
        tau=tau,
        w_frc=loss_weights[0],
        w_brc=loss_weights[1],
        w_reg=loss_weights[2],
        pair_sum_divisor=pair_sum_divisor,
        mask_adapted=clip_mode == "mask_adapted",
        clip_input_norm=clip_input_norm,
    )
    log.info(
        "RITC: %d images, CLIP %s (%s), input size %d",
        len(dataset),
        clip_architecture,
        clip_mode,
        clip.image_size,
    )
    backbone, head = model.param_groups()
    return train(
        model=model,
        loss_fn=loss_fn,
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
        batch_key="ritc.batch_size",
        history_path=out_history,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--baseline", type=Path, required=True, help="baseline CAMNet state dict")
    p.add_argument("--corpus-fg", type=Path, required=True)
    p.add_argument("--corpus-bg", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="text/features.parquet")
    p.add_argument("--out", type=Path, required=True, help="state dict of the RITC CAMNet")
    p.add_argument("--out-history", type=Path, default=None, help="per-step loss table (Parquet)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable scratch")
    p.add_argument("--split", default="train_aug")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--clip-architecture", default="ViT-L-14-quickgelu")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip tag or weights file")
    p.add_argument(
        "--clip-config", type=Path, default=None, help="config JSON of a custom architecture"
    )
    p.add_argument(
        "--ovseg", type=Path, default=None, help="OV-Seg checkpoint; absent: CLIP weights only"
    )
    p.add_argument("--clip-mode", choices=("mask_adapted", "plain"), default="mask_adapted")
    p.add_argument("--mask-prompt-depth", type=int, default=3)
    p.add_argument("--clip-input-norm", choices=("imagenet", "clip"), default="imagenet")
    p.add_argument(
        "--batchnorm",
        choices=("train", "frozen"),
        default="train",
        help="train: batch statistics, running stats updated (paper); frozen: keep the baseline's",
    )
    p.add_argument("--prompt", default="a photo of {}.")
    p.add_argument("--crop-size", type=int, default=512)
    p.add_argument("--resize-range", type=int, nargs=2, default=(320, 640))
    p.add_argument("--batch-size", type=int, default=8, help="global batch")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3.5e-4, help="backbone LR")
    p.add_argument("--classifier-lr", type=float, default=3.5e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=1e-4, help="reference quirk: 1e-4")
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--alpha", type=float, default=0.1, help="FAT: fraction of each map's max")
    p.add_argument("--tau", type=float, default=0.7)
    p.add_argument(
        "--loss-weights", type=float, nargs=3, default=(10.0, 8.0, 0.2), help="L_FRC L_BRC L_REG"
    )
    p.add_argument("--pair-sum-divisor", type=float, default=2.0, help="reference: B_global / 4")
    p.add_argument("--label-weight", type=float, default=0.5, help="w of t_fg = w·e(label) + …")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    log.info("ritc: %s", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    summary = run(
        manifest=args.manifest,
        classes=args.classes,
        baseline=args.baseline,
        corpus_fg=args.corpus_fg,
        corpus_bg=args.corpus_bg,
        features=args.features,
        out=args.out,
        out_history=args.out_history,
        checkpoint_dir=args.checkpoint_dir,
        split=args.split,
        depth=args.depth,
        clip_architecture=args.clip_architecture,
        clip_pretrained=args.clip_pretrained,
        clip_config=args.clip_config,
        ovseg=args.ovseg,
        clip_mode=args.clip_mode,
        mask_prompt_depth=args.mask_prompt_depth,
        clip_input_norm=args.clip_input_norm,
        batchnorm=args.batchnorm,
        prompt=args.prompt,
        crop_size=args.crop_size,
        resize_range=tuple(args.resize_range),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        classifier_lr=args.classifier_lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        poly_power=args.poly_power,
        alpha=args.alpha,
        tau=args.tau,
        loss_weights=tuple(args.loss_weights),
        pair_sum_divisor=args.pair_sum_divisor,
        label_weight=args.label_weight,
        precision=args.precision,
        seed=args.seed,
        workers=args.workers,
    )
    log.info("ritc done: %s", {k: round(v, 4) for k, v in summary.items()})
