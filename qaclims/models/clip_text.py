"""open_clip text tower: loading by architecture + pretrained tag or file, encoding, tiny variant.

Real runs use `ViT-L-14-quickgelu` with the `openai` tag (ALGORITHM §1: fp32, 77 tokens,
L2-normalised, D = 768), read from the local cache only. A custom architecture (the demo's
tiny one) comes with its open_clip config JSON, registered under the file's stem before
the model is built.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

# Read when huggingface_hub is imported (open_clip imports it): a tag missing from the
# cache then fails at once instead of retrying DNS. A user who set either variable wins.
if "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ:
    os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import open_clip

from qaclims.errors import InputError

log = logging.getLogger(__name__)

# The smallest open_clip model that loads through the real path (OFFLINE_MODELS.md §3):
# the 49408-token BPE vocabulary is what every open_clip tokenizer emits.
TINY_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _looks_like_file(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (what OpenAI's `clip` package downloads), not a tensor file.

    Both are zip files; only TorchScript stores its code constants in `constants.pkl`.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def register_config(config_json: Path, architecture: str) -> None:
    """Make a custom architecture known to open_clip (the name is the file's stem)."""
    if not config_json.is_file():
        raise InputError(f"{config_json}: open_clip model config (models.clip_config) not found")
    if config_json.stem != architecture:
        raise InputError(
            f"{config_json}: open_clip names a config after its file, so it registers "
            f"'{config_json.stem}', not the architecture '{architecture}'"
        )
    try:
        json.loads(config_json.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_json}: not valid JSON ({err})") from err
    open_clip.add_model_config(config_json)


def load_clip(
    architecture: str,
    pretrained: str,
    device: torch.device,
    config_json: Path | None = None,
) -> tuple[torch.nn.Module, open_clip.tokenizer.SimpleTokenizer]:
    """The open_clip model (eval, fp32, on `device`) and its tokenizer.

    `pretrained` is an open_clip tag (e.g. "openai", from the local cache) or a weights
    file (.safetensors or a torch state dict, loaded weights-only). OpenAI's own TorchScript
    `ViT-L-14.pt` is refused with the command that converts it.
    """
    if config_json is not None:
        register_config(config_json, architecture)
    if architecture not in open_clip.list_models():
        raise InputError(
            f"open_clip architecture '{architecture}' is unknown; give its config JSON "
            "(models.clip_config) for a custom one"
        )
    if _looks_like_file(pretrained):
        if not Path(pretrained).is_file():
            raise InputError(f"{pretrained}: CLIP weights file not found")
        if is_torchscript(Path(pretrained)):
            raise InputError(
                f"{pretrained}: a TorchScript archive (OpenAI's CLIP download), which a "
                "weights-only load cannot read; convert it once: python -m qaclims "
                f"convert openai-clip {pretrained} OUT.safetensors --architecture {architecture}"
            )
    elif pretrained not in open_clip.list_pretrained_tags_by_model(architecture):
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        raise InputError(f"'{pretrained}' is not a pretrained tag of {architecture} ({tags})")
    try:
        model = open_clip.create_model(
            architecture, pretrained=pretrained, device=device, require_pretrained=True
        )
    except (RuntimeError, OSError, ValueError) as err:
        raise InputError(
            f"cannot load CLIP {architecture} weights '{pretrained}' (offline: a tag must be in "
            f"the local cache, a file a matching state dict) ({err})"
        ) from err
    return model.eval(), open_clip.get_tokenizer(architecture)


@torch.inference_mode()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: open_clip.tokenizer.SimpleTokenizer,
    texts: list[str],
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """N×D float32 L2-normalised text embeddings, in fp32, `batch_size` texts per call.

    Texts are batched by token length so that each batch runs only as many positions as
    its longest text needs (`_encode_trimmed`).
    """
    device = next(model.parameters()).device
    tokens = tokenizer(texts)
    order = torch.argsort((tokens != 0).sum(1), stable=True)
    out = torch.empty((len(texts), embed_dim(model)), dtype=torch.float32)
    for i in range(0, len(texts), batch_size):
        rows = order[i : i + batch_size]
        out[rows] = _encode_trimmed(model, tokens[rows].to(device)).float().cpu()
    return out.numpy()


def _encode_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)` over the positions up to the last EOT.

    The text tower is causal and pools the EOT token, so the padding after it never
    reaches the result: cutting it off gives the same embedding (up to float rounding) for
    a fraction of the work (a short answer is ~8 of the 77 positions).
    """
    causal = isinstance(model, open_clip.CLIP) and model.attn_mask is not None
    if not causal or model.text_pool_type != "argmax":
        return model.encode_text(tokens, normalize=True)
    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)


def embed_dim(model: torch.nn.Module) -> int:
    """Width of the joint embedding (the text projection's output)."""
    projection = model.text_projection
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    return int(projection.shape[1]) if projection is not None else model.transformer.width


def tiny_clip(name: str, weights: Path, *, seed: int) -> torch.nn.Module:
    """Build a random tiny CLIP registered as `name` and save its weights (safetensors).

    The caller writes TINY_CONFIG to `<name>.json` beside the weights for later loads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config_json = Path(tmp) / f"{name}.json"
        config_json.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(config_json)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return model
