"""open_clip model: loading by architecture + pretrained tag or file, text encoding, tiny variants.

Real runs use `ViT-L-14-quickgelu` with the `openai` tag (ALGORITHM §1: fp32, 77 tokens,
L2-normalised, D = 768), read from the local cache only. Any open_clip architecture loads
the same way, SigLIP's too (CustomTextCLIP: sigmoid-loss `logit_bias`, text pooled at the
last position without a causal mask, mean = std = 0.5): nothing here assumes CLIP's EOT
pooling, text projection or normalisation; they are read from the loaded model. A custom
architecture (the demo's tiny one) comes with its open_clip config JSON, registered under
the file's stem before the model is built; its optional `preprocess_cfg` (as in the
`open_clip_config.json` of open_clip's hub repos) sets the image mean/std that a weights
file, unlike a tag, does not carry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg
from safetensors.torch import save_file

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

# A tiny SigLIP, offline: open_clip's SigLIP configs (ViT-B-16-SigLIP.json) with timm's
# 64-wide `test_vit` (random init, nothing fetched; it resizes its 160 px position table to
# the 64 px input) under the same MAP attention pooling, the sigmoid loss's
# `init_logit_bias`, a bidirectional text tower pooled at the last position, SigLIP's
# normalisation and squash resize. Its tokenizer is open_clip's BPE one (the real one is an
# HF tokenizer from the hub cache). Its name must not contain "siglip": open_clip gives
# such a name without `hf_tokenizer_name` a SentencePiece vocabulary it downloads.
TINY_SIGLIP_CONFIG = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 64,
        "timm_model_name": "test_vit",
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 64,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
    "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    },
}
PREPROCESS_KEYS = frozenset(PreprocessCfg.__dataclass_fields__)


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


def _preprocess(config_json: Path, cfg: object) -> dict:
    """A config's `preprocess_cfg`, checked: open_clip's keys, 3 mean and 3 std values."""
    if not isinstance(cfg, dict) or not set(cfg) <= PREPROCESS_KEYS:
        raise InputError(
            f"{config_json}: preprocess_cfg must be a mapping of {sorted(PREPROCESS_KEYS)}"
        )
    for key in ("mean", "std"):
        if key not in cfg:
            continue
        values = cfg[key]
        if not (isinstance(values, list) and len(values) == 3):
            raise InputError(f"{config_json}: preprocess_cfg.{key} must list 3 channel values")
        if not all(isinstance(v, (int, float)) and (key == "mean" or v > 0) for v in values):
            raise InputError(f"{config_json}: preprocess_cfg.{key} {values} is not valid")
    return cfg


def register_config(config_json: Path, architecture: str) -> dict:
    """Make a custom architecture known to open_clip (the name is the file's stem).

    The file is an open_clip model config, or an `open_clip_config.json` of a hub repo
    (`model_cfg` beside `preprocess_cfg`); either may carry `preprocess_cfg`, which is
    returned (empty if absent) and kept out of what open_clip builds the model from.
    """
    if not config_json.is_file():
        raise InputError(f"{config_json}: open_clip model config (models.clip_config) not found")
    if config_json.stem != architecture:
        raise InputError(
            f"{config_json}: open_clip names a config after its file, so it registers "
            f"'{config_json.stem}', not the architecture '{architecture}'"
        )
    try:
        data = json.loads(config_json.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_json}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{config_json}: not an open_clip model config (a JSON object)")
    model_cfg = dict(data.get("model_cfg", data))
    preprocess = _preprocess(
        config_json, model_cfg.pop("preprocess_cfg", data.get("preprocess_cfg", {}))
    )
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise InputError(f"{config_json}: open_clip model config lacks {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        registered = Path(tmp) / config_json.name
        registered.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(registered)
    return preprocess


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
    preprocess = register_config(config_json, architecture) if config_json is not None else {}
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
            architecture,
            pretrained=pretrained,
            device=device,
            require_pretrained=True,
            force_preprocess_cfg=preprocess or None,
        )
    except (RuntimeError, OSError, ValueError) as err:
        raise InputError(
            f"cannot load CLIP {architecture} weights '{pretrained}' (offline: a tag must be in "
            f"the local cache, a file a matching state dict) ({err})"
        ) from err
    try:
        tokenizer = open_clip.get_tokenizer(architecture)
    except (OSError, ImportError, ValueError, RuntimeError) as err:
        raise InputError(
            f"cannot load the tokenizer of {architecture} (offline: an HF tokenizer, "
            "text_cfg.hf_tokenizer_name, must be in the local cache or a local folder; open_clip "
            f"downloads one for a name containing 'siglip' that names none) ({err})"
        ) from err
    return model.eval(), tokenizer


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

    A causal CLIP text tower pooling the EOT token (the highest id, `argmax`) never lets
    the padding after it reach the result: cutting it off gives the same embedding (up to
    float rounding) for a fraction of the work (a short answer is ~8 of the 77 positions).
    Any other tower (SigLIP's pools the last position of a bidirectional one) runs whole.
    """
    causal = isinstance(model, open_clip.CLIP) and model.attn_mask is not None
    if not causal or model.text_pool_type != "argmax":
        return model.encode_text(tokens, normalize=True)
    length = int(tokens.argmax(dim=-1).max()) + 1
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
    """Width of the joint embedding: the text tower's output."""
    text = getattr(model, "text", None)  # CustomTextCLIP (SigLIP, HF text towers)
    if text is not None:
        return int(text.output_dim)
    projection = model.text_projection
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    return int(projection.shape[1]) if projection is not None else model.transformer.width


def tiny_clip(
    name: str, weights: Path, *, seed: int, config: dict | None = None
) -> torch.nn.Module:
    """Build a random tiny model (`config`, default TINY_CONFIG) as `name`, save its weights.

    The caller writes the config to `<name>.json` beside the weights for later loads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config_json = Path(tmp) / f"{name}.json"
        config_json.write_text(json.dumps(TINY_CONFIG if config is None else config))
        preprocess = register_config(config_json, name)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, force_preprocess_cfg=preprocess or None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return model
