"""Test-time protocol of the final segmentation model: scales, flip, fusion, dense CRF (§8).

Shared by the evaluation (`eval_seg`) and the VOC test-server export (`export_voc`), so both
predict an image the same way. Per image (CLIMS's deeplab-pytorch test + crf steps):

1. The ImageNet-normalised image is resized bilinearly (align_corners=False) to
   (int(H·s), int(W·s)) for each scale s, as deeplab-pytorch's MSC does on its input tensor;
   scale 1 is the image itself. With `flip`, each scale also runs on the mirrored image,
   whose output is mirrored back.
2. Each output (the network's logits, already at its input size) is resized bilinearly
   back to H×W.
3. Fusion. "max": the pixel-wise max of the logits over every scale and flip, then softmax
   (deeplab-pytorch's MSC; CLIMS tests DeepLabV2_ResNet101_MSC, scales 1, 0.5, 0.75, no
   flip). "mean": the mean of the softmax probabilities (a smoother vote that flips and
   extra scales cannot win alone). Either way one scale without flip is the plain
   single-scale prediction.
4. CRF (optional): pydensecrf on the fused probabilities (softmax unary), a Gaussian and a
   bilateral pairwise term (CLIMS's configs/voc12_*_pretrained.yaml: 10 iterations,
   POS_XY_STD 1, POS_W 3, BI_XY_STD 67, BI_RGB_STD 3, BI_W 4). The bilateral term sees the
   stored uint8 RGB image; the reference's crf step hands it the mean-subtracted BGR array
   cast to uint8 (its dataset's __getitem__ output), a quirk not reproduced.

The label map is the argmax of the (refined) probabilities.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_softmax
from torch import nn

from qaclims.augment import normalize
from qaclims.devices import PRECISIONS, autocast
from qaclims.errors import InputError
from qaclims.models.seg_net import ARCHS

FUSIONS = ("max", "mean")


@dataclass(frozen=True)
class SegCRF:
    """Dense-CRF post-processing on softmax probabilities (deeplab-pytorch's DenseCRF)."""

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


CRF_FIELDS = tuple(f.name for f in fields(SegCRF))


@dataclass(frozen=True)
class Protocol:
    """How the final model predicts an image; `crf` None: no post-processing."""

    scales: tuple[float, ...]
    flip: bool
    fusion: str
    crf: SegCRF | None

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise InputError(f"seg_eval.scales {list(self.scales)}: give positive scales")
        if self.fusion not in FUSIONS:
            raise InputError(f"seg_eval.fusion '{self.fusion}' is not one of {list(FUSIONS)}")

    def record(self) -> dict[str, object]:
        """The protocol as the evaluation report records it."""
        return {
            "scales": list(self.scales),
            "flip": self.flip,
            "fusion": self.fusion,
            "crf": False if self.crf is None else asdict(self.crf),
        }


def _resized(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return x
    size = [max(1, int(side * scale)) for side in x.shape[-2:]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def fused_probabilities(
    model: nn.Module,
    rgb: np.ndarray,
    protocol: Protocol,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """C×H×W class probabilities of one H×W×3 uint8 image, fused over scales and flips."""
    height, width = rgb.shape[:2]
    x = normalize(rgb)[None].to(device)
    fused: torch.Tensor | None = None
    for scale in protocol.scales:
        scaled = _resized(x, scale)
        batch = torch.cat([scaled, scaled.flip(-1)]) if protocol.flip else scaled
        with autocast(device, precision):
            out = model(batch)["out"]
        out = F.interpolate(out.float(), (height, width), mode="bilinear", align_corners=False)
        members = [out[0], out[1].flip(-1)] if protocol.flip else [out[0]]
        for logits in members:
            term = logits if protocol.fusion == "max" else logits.softmax(dim=0)
            if fused is None:
                fused = term
            elif protocol.fusion == "max":
                fused = torch.maximum(fused, term)
            else:
                fused = fused + term
    assert fused is not None  # Protocol has at least one scale
    if protocol.fusion == "max":
        return fused.softmax(dim=0)
    return fused / (len(protocol.scales) * (2 if protocol.flip else 1))


def crf_refine(rgb: np.ndarray, probs: np.ndarray, params: SegCRF) -> np.ndarray:
    """C×H×W probabilities refined by a dense CRF on the H×W×3 uint8 image."""
    classes, height, width = probs.shape
    if rgb.shape[:2] != (height, width):
        raise InputError(f"CRF: image is {rgb.shape[:2]}, probabilities are {(height, width)}")
    d = dcrf.DenseCRF2D(width, height, classes)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(rgb, dtype=np.uint8, order="C"),  # pydensecrf needs a writable copy
        compat=params.bilateral_compat,
    )
    return np.asarray(d.inference(params.iterations)).reshape(classes, height, width)


def predict_labels(
    model: nn.Module,
    rgb: np.ndarray,
    protocol: Protocol,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """H×W uint8 class ids (0 background) of one image under `protocol`."""
    probs = fused_probabilities(model, rgb, protocol, device, precision)
    if protocol.crf is None:
        return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
    refined = crf_refine(rgb, probs.cpu().numpy(), protocol.crf)
    return refined.argmax(axis=0).astype(np.uint8)


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The Protocol of parsed stage arguments; with --crf every --crf-* value is required."""
    crf = None
    if args.crf:
        values = {name: getattr(args, f"crf_{name}") for name in CRF_FIELDS}
        missing = [f"--crf-{k.replace('_', '-')}" for k, v in values.items() if v is None]
        if missing:
            raise InputError(f"--crf needs {', '.join(missing)}")
        crf = SegCRF(**values)
    return Protocol(tuple(args.scales), args.flip, args.fusion, crf)


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The model's and the protocol's flags, shared by eval_seg and export_voc."""
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--arch", choices=ARCHS, default="deeplabv3")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--scales", type=float, nargs="+", required=True, help="test scales")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--fusion", choices=FUSIONS, default="max", help="max: logits | mean: softmax")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=False)
    for name in CRF_FIELDS:
        kind = int if name == "iterations" else float
        p.add_argument(f"--crf-{name.replace('_', '-')}", type=kind, default=None)
