"""`qaclims convert`: the paper's checkpoint files, rebuilt tiny with their real key layouts.

The source files are made by modules written after the original projects' code (OpenAI
CLIP `clip/model.py`, OV-Seg's mask-prompted CLIP inside detectron2's training dict,
IRNet/CLIMS `net/resnet50_cam.py`), not by inverting the converters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

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
from tests.original_files import IRNetCAM, TrainerState, openai_archive, ovseg_checkpoint

TINY = clip_text.TINY_CONFIG
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("config") / "convert-tiny.json"
    config.write_text(json.dumps(TINY))
    return config


@pytest.fixture(scope="module")
def openai_pt(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    return path, openai_archive(path)


def _convert_clip(src: Path, dst: Path, config: Path) -> None:
    convert_openai_clip(src, dst, architecture=config.stem, config_json=config)


def testopenai_archive_becomes_open_clip_weights(openai_pt, tiny_config, tmp_path):
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
    openai_archive(tmp_path / "narrow.pt", vision_width=32)
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
    path = tmp_path_factory.mktemp("ovseg") / "ovseg_swinbase_vitL14_ft_mpt.pth"
    return path, ovseg_checkpoint(path, DEPTH)


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
