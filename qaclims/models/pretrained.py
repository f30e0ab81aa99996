"""A pretrained ResNet for IRN and segmentation: ImageNet weights, or a trained CAMNet's backbone.

`weights` is what `build_resnet` takes (None, a torchvision weight name, a ResNet state-dict
file) or a CAMNet state-dict file (keys `backbone.*` and `classifier.*`, e.g.
`models/cam_baseline.pt`), whose backbone is used. The demo has no ImageNet weights (nothing
is downloaded), so its IRN and segmentation networks start from the demo's own baseline
classifier instead, the closest stand-in for a pretrained backbone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models.resnet import ResNet

from qaclims.errors import InputError
from qaclims.models.backbone import build_resnet, load_state_file

PREFIX = "backbone."


def _cam_net_backbone(path: Path) -> dict[str, torch.Tensor] | None:
    """The backbone entries of a CAMNet state-dict file, or None for any other file.

    A released IRNet/CLIMS CAM file also has `backbone.*` keys (an nn.ModuleList over its
    stages), so `load_state_file` refuses it first, with the command that converts it.
    """
    if path.suffix not in (".pt", ".pth") or not path.is_file():
        return None
    state = load_state_file(path, "pretrained network file")
    if not any(k.startswith(PREFIX) for k in state):
        return None
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def pretrained_resnet(depth: int, weights: str | None, *, fixed_bn: bool) -> ResNet:
    """`build_resnet(depth, weights, fixed_bn=...)`, also accepting a CAMNet file as weights."""
    backbone = None if weights is None else _cam_net_backbone(Path(weights))
    if backbone is None:
        return build_resnet(depth, weights, fixed_bn=fixed_bn)
    model = build_resnet(depth, None, fixed_bn=fixed_bn)
    try:
        model.load_state_dict(backbone, strict=True)
    except RuntimeError as err:
        raise InputError(f"{weights}: its backbone does not fit ResNet-{depth} ({err})") from err
    return model
