"""torchvision ResNet backbones as IRNet/CLIMS use them (ALGORITHM §2, §3, §7).

Output stride 16: strides 2,2,2,1 (the last stage keeps its resolution, no dilation).
Norm layers are either ordinary BatchNorm (RITC) or "fixed" BatchNorm, whose running
statistics stay frozen in train mode (baseline CAM classifier, IRN). Weights: None (random
init), a torchvision weight name (e.g. "IMAGENET1K_V1", read from the torch hub cache: no
download happens when it is missing, the error says where to put it) or a local state-dict
file loaded with `weights_only=True`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

from qaclims.errors import InputError

DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
WEIGHT_ENUMS = {
    18: resnet.ResNet18_Weights,
    34: resnet.ResNet34_Weights,
    50: resnet.ResNet50_Weights,
    101: resnet.ResNet101_Weights,
}


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (never updates them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


# IRNet/CLIMS `net/resnet50_cam.py` keeps its ResNet under `self.resnet50`.
RELEASED_CAM_PREFIX = "resnet50."


def load_state_file(path: Path, what: str, *, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """A weights-only torch state dict; a file that needs converting first says how.

    Two cases do: a pickled training dict (weights-only loading refuses it) and the
    released IRNet/CLIMS `res50_cam.pth`, whose layout (`resnet50.*` plus `stage*` views of
    the same tensors) is not ours.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise InputError(
            f"{path}: {what} is not a weights-only torch state dict ({str(err).splitlines()[0]}); "
            f"a released checkpoint is converted once by `python -m qaclims convert cam {path} "
            "OUT.pt --trust-pickle` (trusted files only; see `python -m qaclims convert --help`)"
        ) from err
    if not isinstance(state, dict):
        raise InputError(f"{path}: {what} holds a {type(state).__name__}, not a state dict")
    if any(k.startswith(RELEASED_CAM_PREFIX) for k in state):
        raise InputError(
            f"{path}: a released IRNet/CLIMS CAM file (keys resnet50.*, stage1..4.*), not a "
            f"{what}; convert it once: python -m qaclims convert cam {path} OUT.pt"
        )
    return state


def _state_dict(weights: str, depth: int) -> dict[str, torch.Tensor]:
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".bin", ".safetensors") or os.sep in weights:
        if not path.is_file():
            raise InputError(f"{path}: backbone weights file not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return load_state_file(path, "backbone weights file")
    try:
        enum = WEIGHT_ENUMS[depth][weights]
    except KeyError as err:
        names = [w.name for w in WEIGHT_ENUMS[depth]]
        raise InputError(
            f"backbone weights '{weights}' unknown for ResNet-{depth}: {names}"
        ) from err
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not cached.is_file():
        raise InputError(
            f"backbone weights '{weights}' are not in the torch hub cache ({cached}); "
            "download them once on a connected machine or give a local file path"
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


def build_resnet(depth: int, weights: str | None = None, *, fixed_bn: bool) -> resnet.ResNet:
    """ResNet of `depth` with output stride 16, its fc removed, weights loaded strictly."""
    if depth not in DEPTHS:
        raise InputError(f"ResNet depth {depth} is not one of {sorted(DEPTHS)}")
    norm = FixedBatchNorm if fixed_bn else nn.BatchNorm2d
    model = DEPTHS[depth](weights=None, norm_layer=norm)
    block = model.layer4[0]
    first_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    first_conv.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    if weights is not None:
        state = {k: v for k, v in _state_dict(weights, depth).items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise InputError(
                f"backbone weights '{weights}' do not fit ResNet-{depth}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    model.fc = nn.Identity()
    return model


def stage_channels(model: resnet.ResNet) -> list[int]:
    """Output channels of the stem and the four stages (IRN uses all five)."""
    last = [layer[-1] for layer in (model.layer1, model.layer2, model.layer3, model.layer4)]
    widths = [b.bn3.num_features if hasattr(b, "bn3") else b.bn2.num_features for b in last]
    return [model.bn1.num_features, *widths]
