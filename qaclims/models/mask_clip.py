"""Frozen CLIP image tower, plain or mask-adapted as in OV-Seg (ALGORITHM §4).

Mask prompts E (depth × grid² × width) stand in for the patches outside a region: the
binary region mask is pooled to patches (a patch is visible if any of its pixels is,
`ceil(avgpool)`), and right after the patch convolution (before the CLS token, positional
embedding and ln_pre) the patch tokens become x·m + E[0]·(1 − m); after blocks 1..depth−1
the patch tokens (not CLS) are blended again with E[1..]. The output is ln_post(CLS)·proj.
A mask of ones gives exactly the plain tower. This re-implements the forward of open_clip
3.3.0's `VisionTransformer` on its own submodules, so the same weights serve both modes.

The tower is frozen (no parameter takes gradients, eval mode) but differentiable with
respect to its input: RITC trains the CAM network through it. Mask prompts need open_clip's
own ViT with CLS pooling; any other open_clip image tower (a SigLIP's timm ViT with MAP
pooling, a ResNet) serves the plain mode through `PlainCLIPImage`. Both give the image
size, embedding width and normalisation (mean, std) of the loaded model's preprocess config.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from open_clip.transform import PreprocessCfg
from open_clip.transformer import VisionTransformer
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from qaclims.errors import InputError
from qaclims.models.clip_text import embed_dim, load_clip

log = logging.getLogger(__name__)

OVSEG_PREFIX = "clip_adapter.clip_model."
MASK_EMBEDDING_KEY = "visual.mask_embedding"


def mask_adaptable(visual: nn.Module) -> bool:
    """Whether mask prompts fit the tower: open_clip's own ViT pooling its CLS token."""
    return (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
    )


def tower_kind(visual: nn.Module) -> str:
    """What the tower is, for messages: its class, or the timm model and its pooling."""
    trunk = getattr(visual, "trunk", None)  # open_clip's TimmModel
    if trunk is not None:
        name = (getattr(trunk, "default_cfg", None) or {}).get("architecture", type(trunk).__name__)
        return f"a timm {name} tower pooling '{getattr(trunk, 'global_pool', '?')}'"
    if isinstance(visual, VisionTransformer):
        pooling = "attention" if visual.attn_pool is not None else visual.pool_type
        return f"a VisionTransformer tower pooling '{pooling}'"
    return f"a {type(visual).__name__} tower"


class FrozenTower(nn.Module):
    """Common part of the RITC image towers: frozen, eval, normalisation of the model."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        cfg = getattr(visual, "preprocess_cfg", None) or asdict(PreprocessCfg())
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        size = getattr(visual, "image_size", None) or cfg["size"]
        sides = (size, size) if isinstance(size, int) else tuple(size)
        if sides[0] != sides[1]:
            raise InputError(f"CLIP image tower input {sides} is not square (RITC crops are)")
        self._image_size = int(sides[0])

    @property
    def image_size(self) -> int:
        """Side of the square input the tower was built for (else its preprocess config)."""
        return self._image_size

    def train(self, mode: bool = True) -> FrozenTower:
        """Always eval: the tower is a fixed feature extractor."""
        return super().train(False)


class PlainCLIPImage(FrozenTower):
    """Any open_clip image tower, without masks (ritc.clip_mode plain); frozen."""

    def __init__(self, visual: nn.Module, output_dim: int) -> None:
        super().__init__(visual)
        self.output_dim = output_dim
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """B×3×S×S normalised images -> B×D embeddings; masks need MaskCLIPImage."""
        if mask is not None:
            raise InputError(f"the {tower_kind(self.visual)} image tower takes no region masks")
        return self.visual(x)


class MaskCLIPImage(FrozenTower):
    """open_clip `VisionTransformer` with optional mask prompts; frozen, grads reach the input."""

    def __init__(self, visual: nn.Module, mask_prompt_depth: int) -> None:
        if not mask_adaptable(visual):
            raise InputError(
                "mask-adapted CLIP needs open_clip's VisionTransformer image tower with CLS "
                f"pooling, not {tower_kind(visual)}"
            )
        super().__init__(visual)
        layers = len(visual.transformer.resblocks)
        if not 0 <= mask_prompt_depth <= layers:
            raise InputError(f"mask prompt depth {mask_prompt_depth} is not in 0..{layers}")
        self.patch = visual.patch_size[0]
        grid = visual.grid_size[0] * visual.grid_size[1]
        width = visual.conv1.out_channels
        self.mask_embedding = nn.Parameter(torch.zeros(mask_prompt_depth, grid, width))
        self.requires_grad_(False)
        self.eval()

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    def patch_mask(self, mask: Tensor) -> Tensor:
        """B×1×S×S region mask -> B×grid²×1 binary patch visibility."""
        pooled = torch.ceil(F.avg_pool2d(mask.float(), self.patch, self.patch))
        return pooled.flatten(1).unsqueeze(-1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """B×3×S×S normalised images (and B×1×S×S binary masks) -> B×D embeddings."""
        v = self.visual
        tokens = v.conv1(x).flatten(2).transpose(1, 2)
        depth = self.mask_embedding.shape[0] if mask is not None else 0
        if depth:
            m = self.patch_mask(mask).to(tokens.dtype)
            prompts = self.mask_embedding.to(tokens.dtype)
            tokens = tokens * m + prompts[0] * (1 - m)
        cls = v.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        h = torch.cat([cls, tokens], dim=1) + v.positional_embedding.to(tokens.dtype)
        h = v.ln_pre(v.patch_dropout(h))
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, block in enumerate(v.transformer.resblocks):
            h = block(h) if batch_first else block(h.transpose(0, 1)).transpose(0, 1)
            if i + 1 < depth:
                patches = h[:, 1:] * m + prompts[i + 1] * (1 - m)
                h = torch.cat([h[:, :1], patches], dim=1)
        pooled, _ = v._pool(h)
        return pooled @ v.proj if v.proj is not None else pooled


def visual_entries(state: dict, prefix: str) -> dict:
    """The `<prefix>visual.*` entries of `state`, named `visual.*`."""
    start = f"{prefix}visual."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(start)}


def _read_ovseg(path: Path) -> dict[str, Tensor]:
    """`visual.*` tensors of a converted .safetensors file or an original weights-only .pth."""
    if path.suffix == ".safetensors":
        try:
            return visual_entries(load_file(path), "")
        except SafetensorError as err:
            raise InputError(f"{path}: not a safetensors file ({err})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise InputError(
            f"{path}: not a weights-only torch checkpoint ({str(err).splitlines()[0]}); OV-Seg's "
            "detectron2 checkpoint is converted once: python -m qaclims convert ovseg "
            f"{path} OUT.safetensors --trust-pickle (then give OUT.safetensors as models.ovseg)"
        ) from err
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not an OV-Seg checkpoint")
    return visual_entries(state.get("model", state), OVSEG_PREFIX)


def _load_prompts(tower: MaskCLIPImage, prompts: Tensor | None, path: Path) -> None:
    """Copy the file's mask prompts; their depth must be the configured one.

    The reference builds its tower with depth 3 and loads OV-Seg's prompts into it, so a
    file of another depth raises there too; truncating or zero-filling would run a tower
    that OV-Seg never trained. A plain tower (depth 0) has no use for prompts.
    """
    depth = tower.mask_embedding.shape[0]
    if depth == 0:
        return
    if prompts is not None and prompts.shape[1:] != tower.mask_embedding.shape[1:]:
        raise InputError(f"{path}: mask prompts {tuple(prompts.shape)} do not fit the tower")
    file_depth = 0 if prompts is None else prompts.shape[0]
    if file_depth != depth:
        raise InputError(
            f"{path}: its mask prompts ({MASK_EMBEDDING_KEY}) have depth {file_depth}, "
            f"the configured mask_prompt_depth (ritc.mask_prompt_depth) is {depth}"
        )
    tower.mask_embedding.data.copy_(prompts)


def load_ovseg(tower: MaskCLIPImage, path: Path) -> None:
    """Image-tower entries and mask prompts of an OV-Seg file; every tower key must match.

    `path` is the converted `.safetensors` (`python -m qaclims convert ovseg`) or an
    original checkpoint that loads weights-only (OV-Seg's own needs converting).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: OV-Seg checkpoint (models.ovseg) not found")
    visual = {k[len("visual.") :]: v for k, v in _read_ovseg(path).items()}
    prompts = visual.pop("mask_embedding", None)
    if not visual:
        raise InputError(
            f"{path}: no image-tower entries ('{OVSEG_PREFIX}visual.*' in OV-Seg's .pth, "
            "'visual.*' in a converted file): not an OV-Seg checkpoint"
        )
    try:
        missing, unexpected = tower.visual.load_state_dict(visual, strict=False)
    except RuntimeError as err:  # a shape mismatch, e.g. a ViT-B OV-Seg over a ViT-L tower
        raise InputError(
            f"{path}: its image tower does not fit {type(tower.visual).__name__} ({err})"
        ) from err
    if missing or unexpected:
        raise InputError(
            f"{path}: OV-Seg image tower keys do not match the CLIP tower: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected in all)"
        )
    _load_prompts(tower, prompts, path)
    log.info(
        "OV-Seg %s: %d image-tower tensors loaded, mask prompts %s",
        path,
        len(visual),
        tuple(tower.mask_embedding.shape),
    )


def load_image_tower(
    architecture: str,
    pretrained: str,
    device: torch.device,
    *,
    config_json: Path | None = None,
    ovseg: Path | None = None,
    mask_prompt_depth: int = 3,
    mask_adapted: bool = True,
) -> MaskCLIPImage | PlainCLIPImage:
    """The frozen image tower: open_clip weights, then optionally OV-Seg's on top.

    An open_clip ViT with CLS pooling gets the re-implemented forward (`mask_prompt_depth`
    0: no prompts, masks ignored, the plain tower's output); any other tower serves only the
    plain mode (`mask_adapted` False, no OV-Seg, no prompts), through its own forward.
    """
    model, _ = load_clip(architecture, pretrained, torch.device("cpu"), config_json=config_json)
    if not mask_adaptable(model.visual):
        if mask_adapted or ovseg is not None or mask_prompt_depth:
            raise InputError(
                f"CLIP {architecture}: mask-adapted CLIP (ritc.clip_mode: mask_adapted, OV-Seg "
                "mask prompts) needs open_clip's VisionTransformer image tower with CLS "
                f"pooling; {architecture} has {tower_kind(model.visual)}. Use "
                "ritc.clip_mode: plain (and models.ovseg: null) for this tower"
            )
        return PlainCLIPImage(model.visual, embed_dim(model)).to(device)
    tower = MaskCLIPImage(model.visual, mask_prompt_depth if mask_adapted else 0)
    if ovseg is not None:
        load_ovseg(tower, ovseg)
    return tower.to(device)
