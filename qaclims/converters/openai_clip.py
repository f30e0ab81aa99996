"""OpenAI's TorchScript CLIP (`ViT-L-14.pt`, what the `clip` package and OV-Seg download to
~/.cache/clip/) -> an open_clip safetensors file (`models.clip.pretrained`).

OpenAI's state-dict names are open_clip's (open_clip's `build_model_from_openai_state_dict`
loads them unchanged), so the conversion keeps every tensor under its name, casts the fp16
ones to fp32 (the reference runs CLIP in fp32) and drops the three int entries the archive
carries as metadata. The OpenAI weights were trained with quick GELU: the architecture
must be a `*-quickgelu` one (default `ViT-L-14-quickgelu`). Loading cannot check this
(GELU has no weights), so a plain `ViT-L-14` would load and give subtly wrong features.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from qaclims.atomic import atomic_path
from qaclims.converters.checkpoint import load_checkpoint, tensors
from qaclims.converters.keys import check_state
from qaclims.errors import InputError
from qaclims.models.clip_text import is_torchscript, load_clip, register_config

log = logging.getLogger(__name__)

METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _archive_state(src: Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive (its code is compiled, never called)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            return dict(torch.jit.load(src, map_location="cpu").state_dict())
    except RuntimeError as err:
        raise InputError(f"{src}: unreadable TorchScript archive ({err})") from err


def _drop_metadata(state: dict, src: Path) -> dict:
    """`state` without OpenAI's int entries; each must be an integer scalar."""
    for key in METADATA_KEYS:
        value = state.get(key)
        integer = isinstance(value, int) or (
            isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point()
        )
        if key in state and not integer:
            raise InputError(f"{src}: '{key}' should be an integer scalar, not {value!r:.60}")
    return {k: v for k, v in state.items() if k not in METADATA_KEYS}


def read_openai_state(src: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """OpenAI CLIP tensors in fp32 from a TorchScript archive or a plain state-dict file."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src}: OpenAI CLIP file not found")
    if is_torchscript(src):
        state = _archive_state(src)
    else:
        state = load_checkpoint(src, trust_pickle=trust_pickle)
    state = tensors(_drop_metadata(state, src), src)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _expected_state(architecture: str, config_json: Path | None) -> dict[str, torch.Tensor]:
    """Names and shapes of the open_clip model (built on the meta device: no memory).

    A config without quick GELU gets a warning, not a refusal: the weights cannot tell.
    """
    if config_json is not None:
        register_config(config_json, architecture)
    if architecture not in open_clip.list_models():
        raise InputError(
            f"open_clip architecture '{architecture}' is unknown; give --config-json for a "
            "custom one"
        )
    if not open_clip.get_model_config(architecture).get("quick_gelu", False):
        log.warning("%s has no quick GELU; OpenAI CLIP was trained with it", architecture)
    return open_clip.create_model(architecture, device="meta").state_dict()


def convert_openai_clip(
    src: Path,
    dst: Path,
    *,
    architecture: str = "ViT-L-14-quickgelu",
    config_json: Path | None = None,
    trust_pickle: bool = False,
) -> None:
    """Write OpenAI's `src` as open_clip safetensors at `dst`, checked strictly against
    `architecture`, then loaded back through `load_clip`.

    Quick GELU is not checkable from the weights: pass a `*-quickgelu` architecture.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise InputError(f"{dst}: the converted CLIP file must end in .safetensors")
    state = read_openai_state(src, trust_pickle=trust_pickle)
    check_state(state, _expected_state(architecture, config_json), src, f"open_clip {architecture}")
    with atomic_path(dst) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    load_clip(architecture, str(dst), torch.device("cpu"), config_json)
    log.info("%s -> %s: %d tensors, open_clip %s (fp32)", src, dst, len(state), architecture)
