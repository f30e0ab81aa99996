"""IRNet's inter-pixel relation network (Ahn et al., CVPR 2019; ALGORITHM §7).

A frozen ResNet (output stride 16, FixedBatchNorm, ImageNet weights or, in the demo, the
baseline classifier's backbone: qaclims.models.pretrained) feeds all five of its
stages to two branches with GroupNorm:
- the class-boundary (edge) branch: 32 channels per stage, upsampled to stride 4, one 1×1
  convolution to a boundary logit;
- the displacement branch: stages 3-5 fused at stride 8, upsampled and fused with stages 1-2
  at stride 4, a 2-channel displacement field.
Both outputs have ⌈H/4⌉ × ⌈W/4⌉ positions, the size of the strided CAMs. The mean displacement
over the training set (`mean_shift`) is subtracted from the field in eval mode, as IRNet does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from qaclims.errors import InputError
from qaclims.models.backbone import stage_channels
from qaclims.models.pretrained import pretrained_resnet


def _block(cin: int, cout: int, groups: int, upsample: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class IRNet(nn.Module):
    def __init__(self, *, depth: int = 50, weights: str | None = None) -> None:
        super().__init__()
        self.depth = depth
        self.backbone = pretrained_resnet(depth, weights, fixed_bn=True)
        self.backbone.requires_grad_(False)
        c1, c2, c3, c4, c5 = stage_channels(self.backbone)
        self.edge_layers = nn.ModuleList(
            [
                _block(c1, 32, 4),
                _block(c2, 32, 4),
                _block(c3, 32, 4, upsample=2),
                _block(c4, 32, 4, upsample=4),
                _block(c5, 32, 4, upsample=4),
                nn.Conv2d(160, 1, 1, bias=True),
            ]
        )
        self.dp_layers = nn.ModuleList(
            [
                _block(c1, 64, 8),
                _block(c2, 128, 16),
                _block(c3, 256, 16),
                _block(c4, 256, 16, upsample=2),
                _block(c5, 256, 16, upsample=2),
                _block(768, 256, 16, upsample=2),
                nn.Sequential(
                    nn.Conv2d(448, 256, 1, bias=False),
                    nn.GroupNorm(16, 256),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(256, 2, 1, bias=False),
                ),
            ]
        )
        self.register_buffer("mean_shift", torch.zeros(2))
        # the training crop, stored with the weights: inference pads images to it (0: never)
        self.register_buffer("inference_crop", torch.tensor(0))

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of the five backbone stages (strides 4, 4, 8, 16, 16), without gradient."""
        b = self.backbone
        x1 = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x2 = b.layer1(x1)
        x3 = b.layer2(x2)
        x4 = b.layer3(x3)
        return [x1, x2, x3, x4, b.layer4(x4)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(boundary logits B×1×h×w, displacement field B×2×h×w) at stride 4."""
        x1, x2, x3, x4, x5 = self.stages(x)
        e = self.edge_layers
        h, w = x2.shape[-2:]
        edges = [e[0](x1), e[1](x2)] + [
            f(t)[..., :h, :w] for f, t in zip(e[2:5], (x3, x4, x5), strict=True)
        ]
        edge = e[5](torch.cat(edges, dim=1))
        d = self.dp_layers
        d3 = d[2](x3)
        h3, w3 = d3.shape[-2:]
        fused = torch.cat([d3, d[3](x4)[..., :h3, :w3], d[4](x5)[..., :h3, :w3]], dim=1)
        up = d[5](fused)[..., :h, :w]
        dp = d[6](torch.cat([d[0](x1), d[1](x2), up], dim=1))
        if not self.training:
            dp = dp - self.mean_shift.view(1, 2, 1, 1)
        return edge, dp

    @torch.no_grad()
    def boundary(self, image: torch.Tensor) -> torch.Tensor:
        """h×w class-boundary map of one image (1×3×H×W) and its flip: σ of the mean logit.

        As IRNet's `EdgeDisplacement.forward`: the image and its flip are zero-padded at the
        right and bottom to the training crop (GroupNorm then sees the canvas it was trained
        on), and the logits are cut to ((H−1)//4+1, (W−1)//4+1) before the flip fusion. An
        image larger than the crop is not cut (the reference's negative padding would).
        """
        height, width = image.shape[-2:]
        crop = int(self.inference_crop)
        pair = torch.cat([image, image.flip(-1)], dim=0)
        pair = F.pad(pair, (0, max(crop - width, 0), 0, max(crop - height, 0)))
        logits, _ = self(pair)
        logits = logits[..., : (height - 1) // 4 + 1, : (width - 1) // 4 + 1]
        return torch.sigmoid((logits[0, 0] + logits[1, 0].flip(-1)) / 2)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(edge branch, displacement branch) parameters: lr 0.1 and 1.0 in ALGORITHM §7."""
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())


def load_irn(path: Path, *, depth: int, map_location: str | torch.device = "cpu") -> IRNet:
    """An IRNet with weights from a state-dict file (strict; weights_only)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: IRN weights not found")
    model = IRNet(depth=depth, weights=None)
    state = torch.load(path, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit a {depth}-layer IRNet ({err})") from err
    return model
