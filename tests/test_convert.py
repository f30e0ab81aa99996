"""`qaclims convert`: the paper's checkpoint files, rebuilt tiny with their real key layouts.

The source files are made by modules written after the original projects' code (OpenAI
CLIP `clip/model.py`, OV-Seg's mask-prompted CLIP inside detectron2's training dict,
IRNet/CLIMS `net/resnet50_cam.py`), not by inverting the converters.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models import resnet50

from qaclims import cli
from qaclims.converters.cam import convert_cam
from qaclims.converters.openai_clip import convert_openai_clip
from qaclims.converters.ovseg import convert_ovseg
from qaclims.errors import InputError
from qaclims.models import clip_text
from qaclims.models.backbone import build_resnet
from qaclims.models.cam_net import load_cam_net
from qaclims.models.mask_clip import load_image_tower
from qaclims.models.pretrained import pretrained_resnet

TINY = clip_text.TINY_CONFIG
CPU = torch.device("cpu")


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


def _openai_fp16(model: nn.Module) -> None:
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


def _openai_archive(path: Path, vision_width: int = TINY["vision_cfg"]["width"]) -> dict:
    torch.manual_seed(0)
    model = OpenAICLIP(vision_width).eval()
    _openai_fp16(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(model).save(str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("config") / "convert-tiny.json"
    config.write_text(json.dumps(TINY))
    return config


@pytest.fixture(scope="module")
def openai_pt(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    return path, _openai_archive(path)


def _convert_clip(src: Path, dst: Path, config: Path) -> None:
    convert_openai_clip(src, dst, architecture=config.stem, config_json=config)


def test_openai_archive_becomes_open_clip_weights(openai_pt, tiny_config, tmp_path):
    src, source = openai_pt
    assert source["visual.conv1.weight"].dtype == torch.float16
    _convert_clip(src, tmp_path / "clip.safetensors", tiny_config)
    model, tokenizer = clip_text.load_clip(
        tiny_config.stem, str(tmp_path / "clip.safetensors"), CPU, tiny_config
    )
    loaded = model.state_dict()
    kept = {k: v for k, v in source.items() if k not in ("input_resolution", "context_length")}
    del kept["vocab_size"]
    written = load_file(tmp_path / "clip.safetensors")
    assert written.keys() == kept.keys() and {v.dtype for v in written.values()} == {torch.float32}
    for key, value in kept.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value.float()), key
    features = clip_text.encode_texts(model, tokenizer, ["a photo of a cat.", "a dog"])
    assert features.shape == (2, TINY["embed_dim"]) and abs(features[0] @ features[0] - 1) < 1e-5


def test_a_plain_state_dict_file_converts_too(openai_pt, tiny_config, tmp_path):
    _, source = openai_pt
    torch.save(source, tmp_path / "state.pt")
    _convert_clip(tmp_path / "state.pt", tmp_path / "clip.safetensors", tiny_config)
    assert torch.equal(
        load_file(tmp_path / "clip.safetensors")["visual.proj"], source["visual.proj"].float()
    )


def test_missing_and_unexpected_clip_keys_are_named(openai_pt, tiny_config, tmp_path):
    _, source = openai_pt
    state = {k: v for k, v in source.items() if k != "logit_scale"}
    torch.save({**state, "visual.attnpool.weight": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(
        InputError, match=r"missing \[logit_scale\] \(1 in all\); unexpected \[visual.attnpool"
    ):
        _convert_clip(tmp_path / "state.pt", tmp_path / "clip.safetensors", tiny_config)


def test_a_vit_of_another_width_is_named(tiny_config, tmp_path):
    _openai_archive(tmp_path / "narrow.pt", vision_width=32)
    with pytest.raises(
        InputError, match=r"shape \[visual\.class_embedding \(32,\) \(expected \(64,\)\)"
    ):
        _convert_clip(tmp_path / "narrow.pt", tmp_path / "clip.safetensors", tiny_config)
    assert list(tmp_path.iterdir()) == [tmp_path / "narrow.pt"]


def test_load_clip_names_the_convert_command_for_the_archive(openai_pt, tiny_config):
    src, _ = openai_pt
    with pytest.raises(
        InputError, match=f"TorchScript.*python -m qaclims convert openai-clip {src}"
    ):
        clip_text.load_clip(tiny_config.stem, str(src), CPU, tiny_config)


# OV-Seg: detectron2's {'model': ..., 'trainer': ..., 'iteration': ...} around the mask-
# prompted OpenAI CLIP (`clip_adapter.clip_model.*`) and the rest of the segmenter.
class TrainerState:
    """Stands in for detectron2's trainer state, which weights-only loading refuses."""

    def __init__(self) -> None:
        self.iter = 119999


DEPTH = 2  # the tiny tower has 2 blocks (OV-Seg: 3 of ViT-L's 24)


@pytest.fixture(scope="module")
def tiny_clip_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clip")
    weights, config = folder / "ovseg-tiny.safetensors", folder / "ovseg-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0)
    config.write_text(json.dumps(TINY))
    return weights, config


@pytest.fixture(scope="module")
def ovseg_pth(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(1)
    clip = OpenAICLIP(TINY["vision_cfg"]["width"])
    _openai_fp16(clip)
    model = {f"clip_adapter.clip_model.{k}": v for k, v in clip.state_dict().items()}
    grid = (TINY["vision_cfg"]["image_size"] // TINY["vision_cfg"]["patch_size"]) ** 2
    prompts = torch.randn(DEPTH, grid, TINY["vision_cfg"]["width"])
    model["clip_adapter.clip_model.visual.mask_embedding"] = prompts
    model["clip_adapter.non_object_embedding"] = torch.randn(1, TINY["embed_dim"])
    model["backbone.patch_embed.proj.weight"] = torch.randn(8, 3, 4, 4)
    model["sem_seg_head.predictor.class_embed.weight"] = torch.randn(4, 8)
    path = tmp_path_factory.mktemp("ovseg") / "ovseg_swinbase_vitL14_ft_mpt.pth"
    torch.save({"model": model, "trainer": TrainerState(), "iteration": 119999}, path)
    return path, model


def _tower(files, depth: int, ovseg: Path):
    weights, config = files
    return load_image_tower(
        config.stem, str(weights), CPU, config_json=config, ovseg=ovseg, mask_prompt_depth=depth
    )


def test_ovseg_training_dict_needs_trust_pickle(ovseg_pth, tmp_path):
    src, _ = ovseg_pth
    with pytest.raises(InputError, match="rerun with --trust-pickle"):
        convert_ovseg(src, tmp_path / "ovseg.safetensors")
    assert not list(tmp_path.iterdir())


def test_ovseg_tower_and_prompts_come_from_the_converted_file(ovseg_pth, tiny_clip_files, tmp_path):
    src, source = ovseg_pth
    dst = tmp_path / "ovseg.safetensors"
    convert_ovseg(src, dst, trust_pickle=True)
    prefix = "clip_adapter.clip_model.visual."
    assert set(load_file(dst)) == {
        f"visual.{k[len(prefix) :]}" for k in source if k.startswith(prefix)
    }
    tower = _tower(tiny_clip_files, DEPTH, dst)
    for key, value in tower.visual.state_dict().items():
        assert torch.equal(value, source[prefix + key].float()), key
    assert torch.equal(tower.mask_embedding, source[prefix + "mask_embedding"])
    plain = _tower(tiny_clip_files, 0, dst)  # plain mode: OV-Seg's tower, prompts unused
    assert torch.equal(plain.visual.proj, tower.visual.proj) and plain.mask_embedding.numel() == 0


def test_a_prompt_depth_other_than_configured_is_refused(ovseg_pth, tiny_clip_files, tmp_path):
    src, _ = ovseg_pth
    convert_ovseg(src, tmp_path / "ovseg.safetensors", trust_pickle=True)
    with pytest.raises(InputError, match=r"depth 2, the configured mask_prompt_depth .* is 1"):
        _tower(tiny_clip_files, 1, tmp_path / "ovseg.safetensors")


def test_the_original_pth_points_to_the_converter(ovseg_pth, tiny_clip_files):
    src, _ = ovseg_pth
    with pytest.raises(InputError, match=f"python -m qaclims convert ovseg {src} .*--trust-pickle"):
        _tower(tiny_clip_files, DEPTH, src)


def test_bad_ovseg_files_are_refused(ovseg_pth, tmp_path):
    _, source = ovseg_pth
    visual = "clip_adapter.clip_model.visual."
    cases = {
        r"no 'clip_adapter\.clip_model\.visual\.\*' entries": {"backbone.x": torch.zeros(1)},
        f"entry '{visual}proj' is a list, not a tensor": {**source, f"{visual}proj": [1.0]},
        r"mask_embedding is \(2, 15, 64\), not depth × 16 × 64": {
            **source,
            f"{visual}mask_embedding": torch.zeros(2, 15, 64),
        },
    }
    for message, model in cases.items():
        torch.save({"model": model}, tmp_path / "x.pth")
        with pytest.raises(InputError, match=message):
            convert_ovseg(tmp_path / "x.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


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


@pytest.fixture(scope="module")
def irnet_state() -> dict[str, Tensor]:
    torch.manual_seed(2)
    net = IRNetCAM()
    for name, buffer in net.named_buffers():
        if "running" in name:
            buffer.uniform_(0.5, 1.5)  # not the init values, so a swap would show
    return net.state_dict()


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_released_cam_file_becomes_a_cam_net(irnet_state, tmp_path):
    assert {k.split(".")[0] for k in irnet_state} == {
        "resnet50", "stage1", "stage2", "stage3", "stage4", "classifier", "backbone", "newly_added"
    }  # fmt: skip
    convert_cam(_save(irnet_state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")
    model = load_cam_net(tmp_path / "cam.pt", 20, depth=50, fixed_bn=True)
    state = model.state_dict()
    assert torch.equal(state["classifier.weight"], irnet_state["classifier.weight"])
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    assert len(backbone) == len([k for k in irnet_state if k.startswith("resnet50.")])
    for key, value in backbone.items():
        assert torch.equal(value, irnet_state[f"resnet50.{key[len('backbone.') :]}"]), key


def test_an_old_file_with_fc_and_no_batch_counts_converts(irnet_state, tmp_path):
    state = {k: v for k, v in irnet_state.items() if not k.endswith("num_batches_tracked")}
    state["resnet50.fc.weight"] = torch.zeros(1000, 2048)
    state["resnet50.fc.bias"] = torch.zeros(1000)
    convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")
    loaded = torch.load(tmp_path / "cam.pt", weights_only=True)
    assert loaded["backbone.bn1.num_batches_tracked"] == 0 and "backbone.fc.weight" not in loaded


def test_batch_counts_are_filled_only_when_nothing_else_is_missing(irnet_state, tmp_path):
    conv = ("resnet50.layer2.0.conv1.weight", "stage2.0.0.conv1.weight")
    state = {k: v for k, v in irnet_state.items() if not k.endswith("num_batches_tracked")}
    del state[conv[0]]
    with pytest.raises(
        InputError, match=f"'{conv[1]}' is a view of '{conv[0]}', which the file lacks"
    ):
        convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")
    del state[conv[1]], state["backbone.1.0.0.conv1.weight"]
    with pytest.raises(
        InputError,
        match=r"missing \['backbone\.layer2\.0\.conv1\.weight'\] \(1 in all\) besides 53",
    ):
        convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")


def test_a_stage_copy_that_differs_is_refused(irnet_state, tmp_path):
    state = dict(irnet_state)
    state["stage3.0.1.conv2.weight"] = state["stage3.0.1.conv2.weight"] + 1
    with pytest.raises(
        InputError,
        match=r"'stage3\.0\.1\.conv2\.weight' differs from 'resnet50\.layer3\.1\.conv2\.weight'",
    ):
        convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")
    assert not (tmp_path / "cam.pt").exists()


def test_a_key_outside_irnets_net_is_refused(irnet_state, tmp_path):
    state = {**irnet_state, "aux_head.weight": torch.zeros(1)}
    with pytest.raises(
        InputError, match=r"keys outside IRNet's resnet50_cam Net: \['aux_head.weight'\]"
    ):
        convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")


def test_files_outside_irnets_layout_are_refused(irnet_state, tmp_path):
    flat = torch.zeros(20, 2048)
    state = {**irnet_state, "classifier.weight": flat, "newly_added.0.weight": flat}
    with pytest.raises(InputError, match=r"'classifier.weight' is \(20, 2048\), not C×2048×1×1"):
        convert_cam(_save(state, tmp_path / "res50_cam.pth"), tmp_path / "cam.pt")
    camnet = {f"backbone.{k[len('resnet50.') :]}": v for k, v in irnet_state.items()}
    with pytest.raises(InputError, match=r"no 'resnet50\.\*' entries"):
        convert_cam(_save(camnet, tmp_path / "ours.pt"), tmp_path / "cam.pt")
    with pytest.raises(InputError, match=r"cam\.bin: a CAM network file ends in \.pt or \.pth"):
        convert_cam(tmp_path / "res50_cam.pth", tmp_path / "cam.bin")


def test_loaders_name_the_convert_command_for_the_released_file(irnet_state, tmp_path):
    src = _save(irnet_state, tmp_path / "res50_cam.pth")
    command = f"released IRNet/CLIMS CAM file.*python -m qaclims convert cam {src}"
    with pytest.raises(InputError, match=command):
        load_cam_net(src, 20, depth=50, fixed_bn=True)
    with pytest.raises(InputError, match=command):
        pretrained_resnet(50, str(src), fixed_bn=True)
    with pytest.raises(InputError, match=command):
        build_resnet(50, str(src), fixed_bn=True)
    pickled = _save({"state": irnet_state, "args": TrainerState()}, tmp_path / "pickled.pth")
    with pytest.raises(InputError, match=r"not a weights-only .*python -m qaclims convert cam"):
        load_cam_net(pickled, 20, depth=50, fixed_bn=True)


def test_cli_converts_and_exits_2_on_bad_input(irnet_state, tmp_path, capsys):
    src = _save(irnet_state, tmp_path / "res50_cam.pth")
    argv = ["convert", "cam", str(src), str(tmp_path / "cam.pt")]
    ok = subprocess.run([sys.executable, "-m", "qaclims", *argv], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert load_cam_net(tmp_path / "cam.pt", 20, depth=50, fixed_bn=True).num_classes == 20
    state = dict(irnet_state)
    state["backbone.1.0.0.bn1.weight"] = state["backbone.1.0.0.bn1.weight"] * 2
    bad, out = _save(state, tmp_path / "edited.pth"), tmp_path / "out" / "cam.pt"
    with pytest.raises(SystemExit) as exit_info:  # in-process: a second start costs ~9 s
        cli.main(["convert", "cam", str(bad), str(out)])
    assert exit_info.value.code == 2
    assert "differs from 'resnet50.layer2.0.bn1.weight'" in capsys.readouterr().err
    assert not out.parent.exists() or not list(out.parent.iterdir())
