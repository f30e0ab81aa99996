"""Tiny files with the key layouts of the paper's checkpoints, built from the original code.

Each builder follows the original project's module layout (OpenAI CLIP `clip/model.py`,
OV-Seg's detectron2 training dict, IRNet/CLIMS `net/resnet50_cam.py`, BLIP `models/vit.py`
and `models/med.py`), not our converters' rename tables, so a converter is checked against
an independent statement of the layout. Used by the converter tests and the workflow test
that plans the VOC config on converted files.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet50

from qaclims.models import blip, clip_text

TINY = clip_text.TINY_CONFIG

VISION = TEXT = 128  # widths, equal as transformers needs (2 heads of 64)
PATCH, GRID = 16, 6  # 96 px
LAYERS, VISION_MLP, TEXT_MLP, POSITIONS = 2, 192, 96, 40


# OpenAI CLIP (clip/model.py): the module tree whose names the TorchScript archive keeps.
class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        mlp = [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU())]
        self.mlp = nn.Sequential(OrderedDict([*mlp, ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        blocks = [ResidualAttentionBlock(width, max(width // 64, 1)) for _ in range(layers)]
        self.resblocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).flatten(2).permute(2, 0, 1)
        cls = self.class_embedding.expand(1, x.shape[1], -1)
        x = self.ln_pre(torch.cat([cls, x]) + self.positional_embedding.unsqueeze(1))
        return self.ln_post(self.transformer(x)[0]) @ self.proj


class OpenAICLIP(nn.Module):
    def __init__(self, vision_width: int) -> None:
        super().__init__()
        v, t = TINY["vision_cfg"], TINY["text_cfg"]
        args = (v["image_size"], v["patch_size"], vision_width, v["layers"], TINY["embed_dim"])
        self.visual = VisionTransformer(*args)
        self.transformer = Transformer(t["width"], t["layers"])
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.positional_embedding = nn.Parameter(torch.randn(t["context_length"], t["width"]))
        self.ln_final = nn.LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.randn(t["width"], TINY["embed_dim"]) * 0.1)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.register_buffer("input_resolution", torch.tensor(v["image_size"]))
        self.register_buffer("context_length", torch.tensor(t["context_length"]))
        self.register_buffer("vocab_size", torch.tensor(t["vocab_size"]))

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
        x = self.ln_final(self.transformer(x).permute(1, 0, 2))
        texts = x[torch.arange(x.shape[0]), text.argmax(-1)] @ self.text_projection
        return self.visual(image) @ texts.t()


def openai_fp16(model: nn.Module) -> None:
    """What OpenAI's `convert_weights` halves; LayerNorms and embeddings stay fp32."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.half()
        if isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight.data = m.in_proj_weight.data.half()
            m.in_proj_bias.data = m.in_proj_bias.data.half()
        for name in ("text_projection", "proj"):
            if isinstance(getattr(m, name, None), nn.Parameter):
                getattr(m, name).data = getattr(m, name).data.half()


def openai_archive(path: Path, vision_width: int = TINY["vision_cfg"]["width"]) -> dict:
    torch.manual_seed(0)
    model = OpenAICLIP(vision_width).eval()
    openai_fp16(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(model).save(str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


# OV-Seg: detectron2's {'model': ..., 'trainer': ..., 'iteration': ...} around the mask-
# prompted OpenAI CLIP (`clip_adapter.clip_model.*`) and the rest of the segmenter.
class TrainerState:
    """Stands in for detectron2's trainer state, which weights-only loading refuses."""

    def __init__(self) -> None:
        self.iter = 119999


# IRNet/CLIMS net/resnet50_cam.py Net (stride 16): one ResNet-50 under several names.
class IRNetCAM(nn.Module):
    def __init__(self, n_classes: int = 20) -> None:
        super().__init__()
        self.resnet50 = resnet50(weights=None)  # IRNet's ResNet has torchvision's names
        del self.resnet50.fc  # IRNet's has no fc
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, n_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])


def plain_tokenizer(folder: Path, words: list[str]) -> Path:
    """A bert-base-uncased-like tokenizer folder: no [DEC], no [ENC] (as the hub's)."""
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*blip.SPECIAL_WORDS, *words]) + "\n")
    blip.BertTokenizer(vocab=str(vocab), model_max_length=512).save_pretrained(folder)
    vocab.unlink()  # the saved tokenizer.json is what from_pretrained reads
    return folder


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def _linear(out: dict, name: str, g: torch.Generator, rows: int, cols: int) -> None:
    out[f"{name}.weight"] = _randn(g, rows, cols, scale=cols**-0.5)
    out[f"{name}.bias"] = _randn(g, rows, scale=0.1)


def _norm(out: dict, name: str, g: torch.Generator, width: int) -> None:
    out[f"{name}.weight"] = 1 + _randn(g, width, scale=0.1)
    out[f"{name}.bias"] = _randn(g, width, scale=0.1)


def _vit(g: torch.Generator) -> dict[str, torch.Tensor]:
    """BLIP's VisionTransformer state: cls_token, pos_embed, patch_embed, blocks, norm.

    The embeddings are tiny so the first LayerNorm's eps (1e-6) shows in its output.
    """
    p = "visual_encoder."
    out = {
        p + "cls_token": _randn(g, 1, 1, VISION, scale=1e-3),
        p + "pos_embed": _randn(g, 1, 1 + GRID * GRID, VISION, scale=1e-3),
        p + "patch_embed.proj.weight": _randn(g, VISION, 3, PATCH, PATCH, scale=3e-5),
        p + "patch_embed.proj.bias": _randn(g, VISION, scale=1e-3),
    }
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        _norm(out, b + "norm1", g, VISION)
        _linear(out, b + "attn.qkv", g, 3 * VISION, VISION)
        _linear(out, b + "attn.proj", g, VISION, VISION)
        _norm(out, b + "norm2", g, VISION)
        _linear(out, b + "mlp.fc1", g, VISION_MLP, VISION)
        _linear(out, b + "mlp.fc2", g, VISION, VISION_MLP)
    _norm(out, p + "norm", g, VISION)
    return out


def _bert(p: str, g: torch.Generator, vocab: int, reads: int) -> dict[str, torch.Tensor]:
    """med.py's BertModel, no pooler: embeddings (no token types), cross-attention to `reads`."""
    out = {
        p + "embeddings.word_embeddings.weight": _randn(g, vocab, TEXT),
        p + "embeddings.position_embeddings.weight": _randn(g, POSITIONS, TEXT, scale=0.1),
        p + "embeddings.position_ids": torch.arange(POSITIONS).expand((1, -1)),
    }
    _norm(out, p + "embeddings.LayerNorm", g, TEXT)
    for i in range(LAYERS):
        b = f"{p}encoder.layer.{i}."
        for attention, source in (("attention", TEXT), ("crossattention", reads)):
            _linear(out, f"{b}{attention}.self.query", g, TEXT, TEXT)
            _linear(out, f"{b}{attention}.self.key", g, TEXT, source)
            _linear(out, f"{b}{attention}.self.value", g, TEXT, source)
            _linear(out, f"{b}{attention}.output.dense", g, TEXT, TEXT)
            _norm(out, f"{b}{attention}.output.LayerNorm", g, TEXT)
        _linear(out, b + "intermediate.dense", g, TEXT_MLP, TEXT)
        _linear(out, b + "output.dense", g, TEXT, TEXT_MLP)
        _norm(out, b + "output.LayerNorm", g, TEXT)
    return out


def blip_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """BLIP_VQA.state_dict(): visual_encoder, text_encoder, text_decoder (bert + cls head)."""
    g = torch.Generator().manual_seed(seed)
    # BLIP_VQA: the encoder's cross-attention reads the image tokens (encoder_width = vision
    # width), the decoder's the question states (med_config's encoder_width = text width)
    out = {
        **_vit(g),
        **_bert("text_encoder.", g, vocab, reads=VISION),
        **_bert("text_decoder.bert.", g, vocab, reads=TEXT),
    }
    head = "text_decoder.cls.predictions."
    _linear(out, head + "transform.dense", g, TEXT, TEXT)
    _norm(out, head + "transform.LayerNorm", g, TEXT)
    out[head + "bias"] = _randn(g, vocab)
    # tied as in BLIP: decoder.weight = the decoder's word embeddings, decoder.bias = bias
    out[head + "decoder.weight"] = out["text_decoder.bert.embeddings.word_embeddings.weight"]
    out[head + "decoder.bias"] = out[head + "bias"]
    return out


def ovseg_checkpoint(path: Path, depth: int) -> dict[str, Tensor]:
    """OV-Seg's training dict around a tiny mask-prompted OpenAI CLIP; its 'model' entries."""
    torch.manual_seed(1)
    clip = OpenAICLIP(TINY["vision_cfg"]["width"])
    openai_fp16(clip)
    model = {f"clip_adapter.clip_model.{k}": v for k, v in clip.state_dict().items()}
    grid = (TINY["vision_cfg"]["image_size"] // TINY["vision_cfg"]["patch_size"]) ** 2
    prompts = torch.randn(depth, grid, TINY["vision_cfg"]["width"])
    model["clip_adapter.clip_model.visual.mask_embedding"] = prompts
    model["clip_adapter.non_object_embedding"] = torch.randn(1, TINY["embed_dim"])
    model["backbone.patch_embed.proj.weight"] = torch.randn(8, 3, 4, 4)
    model["sem_seg_head.predictor.class_embed.weight"] = torch.randn(4, 8)
    torch.save({"model": model, "trainer": TrainerState(), "iteration": 119999}, path)
    return model


def converted_paper_files(work: Path) -> dict[str, str]:
    """Every paper file the README names, built tiny and converted; config key -> path.

    The tiny CLIP architecture is registered from its config JSON (`models.clip_config`);
    the ImageNet ResNet-50 (`resnet50-19c8e357.pth`, loaded as it is) is a stand-in file.
    """
    from qaclims.converters.blip import convert_blip
    from qaclims.converters.cam import convert_cam
    from qaclims.converters.openai_clip import convert_openai_clip
    from qaclims.converters.ovseg import convert_ovseg

    originals, models = work / "originals", work / "data" / "models"
    originals.mkdir(parents=True)
    models.mkdir(parents=True)
    words = ["what", "is", "behind", "the", "a", "dog"]
    tokenizer = plain_tokenizer(originals / "bert-base-uncased", words)
    vqa = originals / "model_base_vqa_capfilt_large.pth"
    torch.save({"model": blip_state(len(blip.SPECIAL_WORDS) + len(words) + 2)}, vqa)
    convert_blip(vqa, models / "blip-vqa-capfilt-large", tokenizer=str(tokenizer))
    config = models / "clip-tiny.json"
    config.write_text(json.dumps(TINY))
    openai_archive(originals / "ViT-L-14.pt")
    convert_openai_clip(
        originals / "ViT-L-14.pt", models / "ViT-L-14.safetensors",
        architecture=config.stem, config_json=config,
    )  # fmt: skip
    ovseg = originals / "ovseg_swinbase_vitL14_ft_mpt.pth"
    ovseg_checkpoint(ovseg, depth=3)
    convert_ovseg(ovseg, models / "ovseg_vitL14_mpt.safetensors", trust_pickle=True)
    torch.manual_seed(2)
    torch.save(IRNetCAM().state_dict(), originals / "res50_cam.pth")
    convert_cam(originals / "res50_cam.pth", models / "res50_cam.pt")
    (models / "resnet50-19c8e357.pth").write_bytes(b"stand-in")
    return {
        "models.vqa": str(models / "blip-vqa-capfilt-large"),
        "models.clip.architecture": config.stem,
        "models.clip.pretrained": str(models / "ViT-L-14.safetensors"),
        "models.clip_config": str(config),
        "models.ovseg": str(models / "ovseg_vitL14_mpt.safetensors"),
        "cam.released": str(models / "res50_cam.pt"),
        "cam.weights": str(models / "resnet50-19c8e357.pth"),
        "irn.weights": str(models / "resnet50-19c8e357.pth"),
    }
