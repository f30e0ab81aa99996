"""The final segmentation network: torchvision's DeepLabV3 (ALGORITHM §8, a documented deviation).

The paper trains DeepLab-v2 ResNet-101; qaclims uses torchvision's DeepLabV3 (ASPP head, no
auxiliary head). ResNet-50/101: torchvision's own builder (dilated, output stride 8), its
backbone loaded with ImageNet weights (a torchvision weight name or a local file; nothing is
downloaded) or a trained CAMNet's backbone (qaclims.models.pretrained). ResNet-18/34, which
torchvision cannot dilate: the same DeepLabV3 head on qaclims's output-stride-16 ResNet (demo
and tests). Ordinary BatchNorm throughout. The output is upsampled to the input size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter

from qaclims.errors import InputError
from qaclims.models.backbone import stage_channels
from qaclims.models.pretrained import pretrained_resnet

TORCHVISION_DEPTHS = {50: segmentation.deeplabv3_resnet50, 101: segmentation.deeplabv3_resnet101}


def build_seg_net(num_classes: int, *, depth: int, weights: str | None = None) -> nn.Module:
    """DeepLabV3 with `num_classes` outputs (background included) on a ResNet of `depth`."""
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


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters: the head gets 10× the learning rate."""
    return list(model.backbone.parameters()), list(model.classifier.parameters())


def load_seg_net(
    path: Path, num_classes: int, *, depth: int, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """A DeepLabV3 with weights from a state-dict file (strict; weights_only)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: segmentation weights not found")
    model = build_seg_net(num_classes, depth=depth)
    state = torch.load(path, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path}: weights do not fit a ResNet-{depth} DeepLabV3 with {num_classes} classes"
            f" ({err})"
        ) from err
    return model
