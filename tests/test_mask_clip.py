"""Mask-adapted CLIP image tower on the tiny open_clip config (ALGORITHM §4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qaclims.errors import InputError
from qaclims.models import clip_text
from qaclims.models.mask_clip import OVSEG_PREFIX, load_image_tower


@pytest.fixture(scope="module")
def tiny_clip_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clip")
    weights, config = folder / "mask-clip-tiny.safetensors", folder / "mask-clip-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0)
    config.write_text(json.dumps(clip_text.TINY_CONFIG))
    return weights, config


def _tower(files, depth: int = 2, ovseg: Path | None = None):
    weights, config = files
    return load_image_tower(
        config.stem,
        str(weights),
        torch.device("cpu"),
        config_json=config,
        ovseg=ovseg,
        mask_prompt_depth=depth,
    )


def test_all_ones_mask_gives_the_plain_tower(tiny_clip_files):
    tower = _tower(tiny_clip_files)
    torch.manual_seed(0)
    tower.mask_embedding.data.normal_()
    x = torch.randn(3, 3, 64, 64)
    plain = tower.visual(x)
    assert torch.equal(tower(x, torch.ones(3, 1, 64, 64)), plain)
    assert torch.equal(tower(x), plain)
    assert not torch.allclose(tower(x, torch.zeros(3, 1, 64, 64)), plain)


def test_pixels_of_hidden_patches_do_not_matter(tiny_clip_files):
    tower = _tower(tiny_clip_files)
    torch.manual_seed(1)
    tower.mask_embedding.data.normal_()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1
    mask[..., 40, 5] = 1  # one pixel makes its 16×16 patch visible
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., 48:, :] = torch.randn(1, 3, 16, 64)  # patches no mask pixel touches
    assert torch.allclose(tower(x, mask), tower(y, mask), atol=1e-6)
    z = x.clone()
    z[..., 32:48, :16] += 1.0  # the patch made visible by one pixel
    assert not torch.allclose(tower(x, mask), tower(z, mask), atol=1e-4)
    assert tower.patch_mask(mask).flatten().tolist() == [1] * 8 + [1, 0, 0, 0] + [0] * 4


def test_frozen_but_differentiable_to_the_input(tiny_clip_files):
    tower = _tower(tiny_clip_files)
    tower.train()
    assert not tower.training
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    tower(x, torch.ones(2, 1, 64, 64)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in tower.parameters())


def test_ovseg_entries_and_mask_prompts_are_loaded(tiny_clip_files, tmp_path):
    reference = _tower(tiny_clip_files)
    state = {f"{OVSEG_PREFIX}visual.{k}": v + 1 for k, v in reference.visual.state_dict().items()}
    state[f"{OVSEG_PREFIX}visual.mask_embedding"] = torch.full((2, 16, 64), 0.5)
    state["sem_seg_head.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "ovseg.pth")
    tower = _tower(tiny_clip_files, depth=2, ovseg=tmp_path / "ovseg.pth")
    assert torch.equal(tower.visual.proj, reference.visual.proj + 1)
    assert torch.equal(tower.mask_embedding, torch.full((2, 16, 64), 0.5))
    torch.save({"model": {"other.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not an OV-Seg checkpoint"):
        _tower(tiny_clip_files, ovseg=tmp_path / "bad.pth")


def _ovseg(reference, tmp_path, edit) -> object:
    state = {f"{OVSEG_PREFIX}visual.{k}": v for k, v in reference.visual.state_dict().items()}
    edit(state)
    torch.save({"model": state}, tmp_path / "ovseg.pth")
    return tmp_path / "ovseg.pth"


def test_missing_and_unexpected_keys_are_named(tiny_clip_files, tmp_path):
    reference = _tower(tiny_clip_files)

    def drop_one_add_one(state):
        del state[f"{OVSEG_PREFIX}visual.proj"]
        state[f"{OVSEG_PREFIX}visual.extra_head.weight"] = torch.zeros(1)

    path = _ovseg(reference, tmp_path, drop_one_add_one)
    with pytest.raises(InputError, match=r"missing \['proj'\], unexpected \['extra_head.weight'\]"):
        _tower(tiny_clip_files, ovseg=path)


def test_a_tower_of_another_size_is_an_input_error(tiny_clip_files, tmp_path):
    reference = _tower(tiny_clip_files)

    def widen(state):
        key = f"{OVSEG_PREFIX}visual.proj"
        state[key] = torch.zeros(state[key].shape[0] * 2, state[key].shape[1])

    with pytest.raises(InputError, match=r"ovseg\.pth: its image tower does not fit"):
        _tower(tiny_clip_files, ovseg=_ovseg(reference, tmp_path, widen))


def test_a_pickled_training_dict_is_an_input_error(tiny_clip_files, tmp_path):
    torch.save({"model": {}, "iteration": Path("iter")}, tmp_path / "pickled.pth")  # detectron2
    with pytest.raises(InputError, match=r"pickled\.pth: not a weights-only torch checkpoint"):
        _tower(tiny_clip_files, ovseg=tmp_path / "pickled.pth")
