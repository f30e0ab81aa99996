"""OV-Seg's `ovseg_swinbase_vitL14_ft_mpt.pth` -> safetensors of its CLIP image tower.

The source is a detectron2 training dict, `{'model': state, 'trainer': ..., 'iteration':
...}`; its non-tensor objects make weights-only loading fail, so it is read with
`--trust-pickle` (the one trusted unpickling, with a warning). QA-CLIMS uses only the
CLIP inside it (`clip_adapter.clip_model.*`, OpenAI names), and of that only the image
tower: the text tower was locked during OV-Seg's fine-tuning. The output holds
- `visual.<name>`: the image tower, named as in open_clip's `VisionTransformer`;
- `visual.mask_embedding`: the mask prompts E, depth × grid² × width (3 × 256 × 1024 for
  ViT-L/14 at 224 px),
all fp32. `mask_clip.load_ovseg` reads it (`models.ovseg`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from qaclims.atomic import atomic_path
from qaclims.converters.checkpoint import load_checkpoint, tensors
from qaclims.errors import InputError
from qaclims.models.mask_clip import MASK_EMBEDDING_KEY, OVSEG_PREFIX, visual_entries

log = logging.getLogger(__name__)


def _check_prompts(entries: dict[str, torch.Tensor], src: Path) -> None:
    """Mask prompts, when present, are depth × grid² × width of this tower."""
    prompts = entries.get(MASK_EMBEDDING_KEY)
    if prompts is None:
        log.warning("%s: no %s: usable only as a plain tower", src, MASK_EMBEDDING_KEY)
        return
    positions = entries.get("visual.positional_embedding")
    conv1 = entries.get("visual.conv1.weight")
    if positions is None or conv1 is None:
        raise InputError(f"{src}: visual.positional_embedding or visual.conv1.weight is missing")
    grid_width = (positions.shape[0] - 1, conv1.shape[0])
    if prompts.dim() != 3 or tuple(prompts.shape[1:]) != grid_width:
        raise InputError(
            f"{src}: {MASK_EMBEDDING_KEY} is {tuple(prompts.shape)}, not depth × "
            f"{grid_width[0]} × {grid_width[1]} (depth × grid² × width)"
        )


def convert_ovseg(src: Path, dst: Path, *, trust_pickle: bool = False) -> None:
    """Write the CLIP image tower and mask prompts of OV-Seg checkpoint `src` to `dst`."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise InputError(f"{dst}: the converted OV-Seg file must end in .safetensors")
    checkpoint = load_checkpoint(src, trust_pickle=trust_pickle)
    model = checkpoint.get("model", checkpoint)
    if not isinstance(model, dict):
        raise InputError(f"{src}: 'model' is a {type(model).__name__}, not a state dict")
    tower = tensors({k: v for k, v in model.items() if k.startswith(f"{OVSEG_PREFIX}visual.")}, src)
    entries = visual_entries(tower, OVSEG_PREFIX)
    if not entries:
        raise InputError(
            f"{src}: no '{OVSEG_PREFIX}visual.*' entries: not an OV-Seg checkpoint "
            "(a mask-adapted CLIP inside detectron2's 'model' dict)"
        )
    _check_prompts(entries, src)
    entries = {k: v.float().contiguous() for k, v in entries.items()}
    with atomic_path(dst) as tmp:
        save_file(entries, tmp, metadata={"source": src.name, "layout": "open_clip visual.*"})
    log.info("%s -> %s: %d image-tower tensors (fp32)", src, dst, len(entries))
