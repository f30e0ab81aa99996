"""Golden test of the mask-adapted CLIP forward against OV-Seg's, written out token by token.

Reference (ALGORITHM §4; REFERENCE_AUDIT #16-#17): OV-Seg `third_party/CLIP/clip/model.py`
`VisionTransformer.forward(x, m)`: patch tokens = conv1(x); m = ceil(avgpool_p(mask)) (a patch
is visible if any pixel is); hidden patch j becomes E[0][j] *before* the CLS token, positional
embedding and ln_pre; after block d (1-indexed, d < depth) hidden patch tokens become E[d][j];
output ln_post(CLS) · proj.
"""

from __future__ import annotations

import json

import pytest
import torch

from qaclims.models import clip_text
from qaclims.models.mask_clip import MaskCLIPImage, load_image_tower


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> MaskCLIPImage:
    """The tiny open_clip tower (64 px, 16 px patches: 4×4 grid, 2 blocks), prompt depth 2."""
    folder = tmp_path_factory.mktemp("clip")
    weights, config = folder / "golden-clip-tiny.safetensors", folder / "golden-clip-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0)
    config.write_text(json.dumps(clip_text.TINY_CONFIG))
    tower = load_image_tower(
        config.stem, str(weights), torch.device("cpu"), config_json=config, mask_prompt_depth=2
    )
    torch.manual_seed(0)
    tower.mask_embedding.data.normal_()  # E[0] ≠ E[1]
    return tower


def reference_forward(tower: MaskCLIPImage, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OV-Seg's forward with loops over images and patches."""
    v, prompts, p = tower.visual, tower.mask_embedding, tower.patch
    depth = prompts.shape[0]
    batch, grid = x.shape[0], x.shape[-1] // p
    tokens = v.conv1(x).reshape(batch, -1, grid * grid).permute(0, 2, 1).clone()
    visible = [
        [bool(mask[b, 0, i * p : (i + 1) * p, j * p : (j + 1) * p].any()) for i in range(grid)
         for j in range(grid)]
        for b in range(batch)
    ]  # fmt: skip
    for b in range(batch):
        for j in range(grid * grid):
            if not visible[b][j]:
                tokens[b, j] = prompts[0, j]
    cls = v.class_embedding + torch.zeros(batch, 1, tokens.shape[-1])
    h = v.ln_pre(torch.cat([cls, tokens], dim=1) + v.positional_embedding)
    for i, block in enumerate(v.transformer.resblocks):
        d = i + 1
        h = block(h) if v.transformer.batch_first else block(h.transpose(0, 1)).transpose(0, 1)
        if d < depth:
            h = h.clone()
            for b in range(batch):
                for j in range(grid * grid):
                    if not visible[b][j]:
                        h[b, 1 + j] = prompts[d, j]
    return v.ln_post(h[:, 0]) @ v.proj


def test_mask_prompts_blend_like_ovseg(tower: MaskCLIPImage) -> None:
    """E[0] replaces hidden patches before CLS/pos-emb/ln_pre, E[1] after block 1 (OV-Seg)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, :20, :] = 1  # image 0: patch rows 0 and 1 visible (row 1 through pixels 16-19)
    mask[1, :, 50, 50] = 1  # image 1: only patch (3, 3) visible, by a single pixel
    assert tower.patch_mask(mask)[:, :, 0].tolist() == [[1.0] * 8 + [0.0] * 8, [0.0] * 15 + [1.0]]
    with torch.no_grad():
        got, want = tower(x, mask), reference_forward(tower, x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, tower(x), atol=1e-3)  # the prompts do change the output
