"""The released baseline `res50_cam.pth` (CLIMS/IRNet `net/resnet50_cam.py` `Net`) -> a CAMNet file.

IRNet's `Net` registers one ResNet-50 several times, and `state_dict` writes every alias:
- `resnet50.*`: the ResNet (conv1, bn1, layer1..4; an `fc.*` only in files of other forks);
- `stage1.*`: nn.Sequential(conv1, bn1, relu, maxpool, layer1), so `stage1.0` is conv1,
  `stage1.1` bn1, `stage1.4` layer1; `stage2..4.0` are layer2..4;
- `backbone.<i>.*`: nn.ModuleList([stage1..4]), the same tensors once more;
- `classifier.weight` (C×2048×1×1, no bias) and its view `newly_added.0.weight`.
Our CAMNet holds the ResNet under `backbone.` (torchvision names, the same as IRNet's) and
the same classifier. Each alias must equal the tensor it views (a file whose copies differ
was edited, and which copy the reference would use is unclear), so it is dropped only
after that check.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qaclims.atomic import atomic_path
from qaclims.converters.checkpoint import load_checkpoint, tensors
from qaclims.converters.keys import check_state
from qaclims.errors import InputError
from qaclims.models.backbone import RELEASED_CAM_PREFIX
from qaclims.models.cam_net import CAMNet, load_cam_net

log = logging.getLogger(__name__)

DEPTH = 50
# nn.Sequential child index -> the resnet50 module it is, per IRNet stage.
STAGES = {
    "stage1": {"0": "conv1", "1": "bn1", "4": "layer1"},
    "stage2": {"0": "layer2"},
    "stage3": {"0": "layer3"},
    "stage4": {"0": "layer4"},
}


def _viewed(key: str) -> str | None:
    """The `resnet50.*` / `classifier.*` key an alias key views, or None for a non-alias."""
    head, _, rest = key.partition(".")
    index, _, rest = rest.partition(".")
    if head == "newly_added" and index == "0":
        return f"classifier.{rest}"
    if head == "backbone" and index in ("0", "1", "2", "3"):
        head = f"stage{int(index) + 1}"
        index, _, rest = rest.partition(".")
    module = STAGES.get(head, {}).get(index)
    return f"{RELEASED_CAM_PREFIX}{module}.{rest}" if module else None


def _drop_aliases(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`state` without its alias entries, each checked equal to the tensor it views."""
    kept = {}
    for key, value in state.items():
        viewed = _viewed(key)
        if viewed is None:
            kept[key] = value
        elif viewed not in state:
            raise InputError(f"{path}: '{key}' is a view of '{viewed}', which the file lacks")
        elif not torch.equal(value, state[viewed]):
            raise InputError(
                f"{path}: '{key}' differs from '{viewed}', the tensor it is a view of in "
                "IRNet's Net (an edited file?); refusing to guess which copy is right"
            )
    return kept


def _rename(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`resnet50.*` -> `backbone.*` (its `fc.*` dropped), `classifier.*` kept, nothing else."""
    out, other = {}, []
    for key, value in state.items():
        if key.startswith(f"{RELEASED_CAM_PREFIX}fc."):
            continue
        if key.startswith(RELEASED_CAM_PREFIX):
            out[f"backbone.{key[len(RELEASED_CAM_PREFIX) :]}"] = value
        elif key.startswith("classifier."):
            out[key] = value
        else:
            other.append(key)
    if other:
        raise InputError(f"{path}: keys outside IRNet's resnet50_cam Net: {sorted(other)[:5]}")
    return out


def _fill_batch_counts(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Add BatchNorm `num_batches_tracked` counters when they are the only keys missing.

    Files saved before torch 0.4.1 have none; torch itself fills them with 0 for such old
    state. The count is read only by BatchNorm with momentum=None, which neither IRNet nor
    we use, so 0 changes no output.
    """
    missing = expected.keys() - state.keys()
    others = sorted(k for k in missing if not k.endswith(".num_batches_tracked"))
    if len(others) == len(missing):
        return state  # no counter missing: check_state names any other gap
    if others:
        raise InputError(
            f"{path}: missing {others[:5]} ({len(others)} in all) besides "
            f"{len(missing) - len(others)} BatchNorm num_batches_tracked counters, which are "
            "filled in only when they are the only gap"
        )
    log.warning("%s: no BatchNorm num_batches_tracked (torch < 0.4.1 file); set to 0", path)
    return {**state, **{k: torch.zeros((), dtype=torch.long) for k in missing}}


def _classes(state: dict[str, torch.Tensor], path: Path) -> int:
    weight = state.get("classifier.weight")
    if weight is None or weight.dim() != 4 or weight.shape[2:] != (1, 1):
        shape = None if weight is None else tuple(weight.shape)
        raise InputError(f"{path}: 'classifier.weight' is {shape}, not C×2048×1×1 (no bias)")
    return weight.shape[0]


def convert_cam(src: Path, dst: Path, *, trust_pickle: bool = False) -> None:
    """Write `src` (a released res50_cam.pth) as a CAMNet state dict at `dst` (.pt/.pth).

    The result loads weights-only through `load_cam_net` (checked before returning).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in (".pt", ".pth"):
        raise InputError(f"{dst}: a CAM network file ends in .pt or .pth")
    state = tensors(load_checkpoint(src, trust_pickle=trust_pickle), src)
    if not any(k.startswith(RELEASED_CAM_PREFIX) for k in state):
        raise InputError(f"{src}: no 'resnet50.*' entries: not an IRNet/CLIMS res50_cam.pth")
    state = _rename(_drop_aliases(state, src), src)
    num_classes = _classes(state, src)
    model = CAMNet(num_classes, depth=DEPTH, weights=None)
    expected = model.state_dict()
    state = _fill_batch_counts(state, expected, src)
    check_state(state, expected, src, f"a ResNet-{DEPTH} CAMNet with {num_classes} classes")
    model.load_state_dict(state, strict=True)
    with atomic_path(dst) as tmp:
        torch.save(model.state_dict(), tmp)
    load_cam_net(dst, num_classes, depth=DEPTH, fixed_bn=True)
    log.info("%s -> %s: ResNet-%d CAMNet, %d classes", src, dst, DEPTH, num_classes)
