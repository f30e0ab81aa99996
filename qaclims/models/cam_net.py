"""The CAM network shared by the baseline classifier, RITC and CAM inference.

ResNet (output stride 16) + a 1×1 convolution classifier without bias (ALGORITHM §2, §3):
- `forward` gives image-level logits (GAP then classifier): the baseline's training output;
- `cams` gives ReLU(W * f(x)) per location: CAM inference (§5);
- `activation_maps` gives σ(W * f(x)): the maps RITC trains (§3).
conv1/bn1 are frozen as in the reference (their parameters never get gradients).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qaclims.errors import InputError
from qaclims.models.backbone import build_resnet, load_state_file


class CAMNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        weights: str | None = None,
        fixed_bn: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.depth = depth
        self.backbone = build_resnet(depth, weights, fixed_bn=fixed_bn)
        width = self.backbone.layer4[-1].conv1.in_channels
        self.classifier = nn.Conv2d(width, num_classes, 1, bias=False)
        for p in (*self.backbone.conv1.parameters(), *self.backbone.bn1.parameters()):
            p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.classifier(f.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.classifier(self.features(x)))

    def activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.features(x)))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, classifier) trainable parameters: the classifier gets 10× the LR."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())


def load_cam_net(
    path: Path, num_classes: int, *, depth: int, fixed_bn: bool, map_location: str = "cpu"
) -> CAMNet:
    """A CAMNet with weights from a state-dict file (strict; weights_only).

    The released IRNet/CLIMS `res50_cam.pth` is refused with the command that converts it.
    """
    if not Path(path).is_file():
        raise InputError(f"{path}: CAM network weights not found")
    state = load_state_file(Path(path), "CAM network file", map_location=map_location)
    model = CAMNet(num_classes, depth=depth, weights=None, fixed_bn=fixed_bn)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path}: weights do not fit a {depth}-layer CAMNet with {num_classes} classes ({err})"
        ) from err
    return model
