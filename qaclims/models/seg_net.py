"""The final segmentation network: torchvision's DeepLabV3 or the paper's DeepLab-v2 (§8).

`arch` picks it. "deeplabv2" is the paper's model (qaclims.models.deeplab_v2: output-stride-8
ResNet, ASPP-v2 head, frozen BatchNorm). "deeplabv3" is torchvision's DeepLabV3 (ASPP head,
no auxiliary head, ordinary BatchNorm), a documented deviation kept for the demo. Its
ResNet-50/101: torchvision's own builder (dilated, output stride 8), its backbone loaded with
ImageNet weights (a torchvision weight name or a local file; nothing is downloaded) or a
trained CAMNet's backbone (qaclims.models.pretrained). Its ResNet-18/34, which torchvision
cannot dilate: the same DeepLabV3 head on qaclims's output-stride-16 ResNet (demo and
tests). Both return {"out": logits} upsampled to the input size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter

from qaclims.errors import InputError
from qaclims.models.backbone import load_state_file, stage_channels
from qaclims.models.deeplab_v2 import DeepLabV2, build_deeplab_v2
from qaclims.models.pretrained import pretrained_resnet

ARCHS = ("deeplabv3", "deeplabv2")
TORCHVISION_DEPTHS = {50: segmentation.deeplabv3_resnet50, 101: segmentation.deeplabv3_resnet101}
# The head's state-dict prefix of each architecture: tells one's weights from the other's.
HEAD_PREFIX = {"deeplabv3": "classifier.", "deeplabv2": "aspp."}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise InputError(f"segmentation architecture '{arch}' is not one of {list(ARCHS)}")


def _deeplab_v3(num_classes: int, depth: int, weights: str | None) -> nn.Module:
    resnet = pretrained_resnet(depth, weights, fixed_bn=False)
    if depth in TORCHVISION_DEPTHS:
        model = TORCHVISION_DEPTHS[depth](
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        model.backbone.load_state_dict(resnet.state_dict(), strict=True)
        return model
    backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
    head = segmentation.deeplabv3.DeepLabHead(stage_channels(resnet)[-1], num_classes)
    return segmentation.DeepLabV3(backbone, head)


def build_seg_net(
    num_classes: int, *, depth: int, weights: str | None = None, arch: str = "deeplabv3"
) -> nn.Module:
    """`arch` with `num_classes` outputs (background included) on a ResNet of `depth`."""
    _check_arch(arch)
    if arch == "deeplabv2":
        return build_deeplab_v2(num_classes, depth=depth, weights=weights)
    return _deeplab_v3(num_classes, depth, weights)


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) trainable parameters: the head (ASPP) gets 10× the learning rate."""
    head = model.aspp if isinstance(model, DeepLabV2) else model.classifier
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    return backbone, list(head.parameters())


def load_seg_net(
    path: Path,
    num_classes: int,
    *,
    depth: int,
    arch: str = "deeplabv3",
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """An `arch` network with weights from a state-dict file (strict; weights_only)."""
    _check_arch(arch)
    if not Path(path).is_file():
        raise InputError(f"{path}: segmentation weights not found")
    model = build_seg_net(num_classes, depth=depth, arch=arch)
    state = load_state_file(Path(path), "segmentation weights file", map_location=map_location)
    other = next(a for a in ARCHS if a != arch)
    if any(k.startswith(HEAD_PREFIX[other]) for k in state):
        raise InputError(f"{path}: {other} weights, not {arch} (set seg.arch: {other})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path}: weights do not fit a ResNet-{depth} {arch} with {num_classes} classes ({err})"
        ) from err
    return model
