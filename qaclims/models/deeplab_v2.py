"""DeepLab-v2 (Chen et al. 2017), the paper's final segmentation network (ALGORITHM §8).

As CLIMS's seg step (deeplab-pytorch's `DeepLabV2`): a ResNet at output stride 8 (every
block of layer3 dilated 2, of layer4 dilated 4, both stages at stride 1; done by hand on
qaclims's ResNet, so ResNet-18/34's BasicBlocks get output stride 8 too) and the ASPP-v2
head: four parallel 3×3 convolutions of dilation 6, 12, 18, 24 from the last stage straight
to the class logits, summed (bias on, initialised normal std 0.01, bias 0). The logits are
upsampled bilinearly to the input size and returned as {"out": logits}, like torchvision's
segmentation models, so training and evaluation treat both architectures alike.

BatchNorm is frozen as in deeplab-pytorch (batch 10 is too small for batch statistics):
FixedBatchNorm keeps the running statistics, and the BN scale and shift get no gradient
(deeplab-pytorch leaves them out of the optimiser). Frozen statistics assume a pretrained
backbone; with random weights (`weights` null) they are the identity.

Documented deviations from the paper's model: the backbone is torchvision's ResNet (stride
in the 3×3 convolution, maxpool without ceil mode) started from ImageNet weights, a ResNet
file or a trained CAMNet's backbone (qaclims.models.pretrained); the paper used
deeplab-pytorch's caffe ResNet-101 with COCO-pretrained weights. The MSC multi-scale
training wrapper is not used, the loss is taken on the upsampled logits (deeplab-pytorch
downsamples the labels instead), and the ASPP biases share the head's LR and weight decay
(deeplab-pytorch: 20× LR, no decay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from qaclims.models.backbone import stage_channels
from qaclims.models.pretrained import pretrained_resnet

ASPP_RATES = (6, 12, 18, 24)
# (stage, dilation) of the output-stride-8 backbone; the stem and layer1/2 stride 8 in all.
DILATIONS = (("layer3", 2), ("layer4", 4))


def dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Stride 1 and `dilation` for every block of `stage` (deeplab-pytorch's `_ResLayer`).

    Strided convolutions (the first block's 3×3 and its 1×1 shortcut) get stride 1; every
    3×3 convolution gets the dilation and a padding that keeps the resolution.
    """
    for conv in stage.modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        conv.stride = (1, 1)
        if conv.kernel_size == (3, 3):
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


class ASPPv2(nn.Module):
    """Four parallel dilated 3×3 convolutions to the class logits, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class DeepLabV2(nn.Module):
    """Output-stride-8 ResNet + ASPP-v2; logits upsampled to the input size."""

    def __init__(self, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        for name, dilation in DILATIONS:
            dilate_stage(getattr(backbone, name), dilation)
        self.backbone = backbone
        self.aspp = ASPPv2(stage_channels(backbone)[-1], num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The last stage's features, at 1/8 of the input resolution."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.aspp(self.features(x))
        return {"out": F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)}


def build_deeplab_v2(num_classes: int, *, depth: int, weights: str | None = None) -> DeepLabV2:
    """DeepLab-v2 on a ResNet of `depth` with frozen BatchNorm (statistics and affine)."""
    backbone = pretrained_resnet(depth, weights, fixed_bn=True)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(False)
    return DeepLabV2(backbone, num_classes)
