"""Golden tests of multi-scale CAM inference against IRNet's `step/make_cam.py`, written out.

Reference (ALGORITHM §5; REFERENCE_AUDIT #20): per scale o = ReLU(cam(x)) + flip(ReLU(cam(flip
x))); strided maps = Σ_scales bilinear(o, ⌈H/4⌉ × ⌈W/4⌉); high-res maps = Σ_scales bilinear(o,
⌈H/16⌉·16 × ⌈W/16⌉·16) cropped to H × W (`imutils.get_strided_up_size`); both bilinear with
align_corners=False; present classes kept; each map divided by its max + 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaclims import cams
from tests.test_golden_random_walk import bilinear


class _Subsample(torch.nn.Module):
    """Stand-in CAM network: the first C channels of the input at every 16th pixel, ReLU'd."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x[:, : self.classes, ::16, ::16])


def reference_make_cam(
    model: _Subsample, scaled: list[np.ndarray], size: tuple[int, int], keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IRNet make_cam for one image given as one 3×h×w array per scale."""
    height, width = size
    small = (-(-height // 4), -(-width // 4))
    up = (-(-height // 16) * 16, -(-width // 16) * 16)
    strided = np.zeros((model.classes, *small))
    high_res = np.zeros((model.classes, height, width))
    for image in scaled:
        x = torch.from_numpy(image)[None]
        o = model.cams(x)[0].numpy() + model.cams(x.flip(-1))[0].flip(-1).numpy()
        strided += bilinear(o, *small)
        high_res += bilinear(o, *up)[:, :height, :width]
    strided, high_res = strided[keys], high_res[keys]
    strided /= strided.max(axis=(1, 2), keepdims=True) + 1e-5
    high_res /= high_res.max(axis=(1, 2), keepdims=True) + 1e-5
    return strided, high_res


def cpu() -> torch.device:
    return torch.device("cpu")


def test_high_res_map_by_hand() -> None:
    """A 1×2 stride-16 map (0, 1) of a 16×20 image: bilinear to 16×32, then cropped to 16×20."""
    x = torch.zeros(1, 3, 16, 20)
    x[0, 0, :, 16] = 1.0  # the map's second column; the flipped image samples columns 19 and 3
    (rec,) = cams.multiscale_cams(_Subsample(3), [x], (16, 20), [np.array([0])], cpu())
    # column c of the 32-wide map reads the source at (c + ½)/16 − ½: 0 up to c = 7, then
    # rising by 1/16 a column; the crop ends at c = 19 (0.71875), the max.
    peak = 0.71875 + 1e-5
    assert rec.high_res[0, 5, 7] == 0.0
    assert rec.high_res[0, 5, 8] == pytest.approx(0.03125 / peak, rel=1e-5)
    assert rec.high_res[0, 0, 19] == pytest.approx(0.71875 / peak, rel=1e-6)
    # strided 4×5: source (c + ½)·2/5 − ½ → 0, 0.1, 0.5, 0.9, 1 (clamped)
    want = np.array([0.0, 0.1, 0.5, 0.9, 1.0]) / (1 + 1e-5)
    np.testing.assert_allclose(rec.strided[0], np.broadcast_to(want, (4, 5)), rtol=1e-5)


def test_multiscale_cams_equal_irnets_make_cam() -> None:
    """Σ over scales of flip-added CAMs, bilinear to ⌈H/4⌉ and to ⌈H/16⌉·16 then cropped."""
    rng = np.random.default_rng(0)
    size, shapes = (20, 27), [(20, 27), (10, 14), (30, 40)]  # scales 1, ½, 1.5
    images = [[rng.standard_normal((3, h, w)).astype(np.float32) for h, w in shapes]]
    images.append([rng.standard_normal((3, h, w)).astype(np.float32) for h, w in shapes])
    keys = [np.array([0, 2]), np.array([1])]
    scaled = [torch.stack([torch.from_numpy(im[s]) for im in images]) for s in range(3)]
    model = _Subsample(3)
    records = cams.multiscale_cams(model, scaled, size, keys, cpu())
    for image, k, rec in zip(images, keys, records, strict=True):
        strided, high_res = reference_make_cam(model, image, size, k)
        assert rec.strided.shape == (len(k), 5, 7) and rec.high_res.shape == (len(k), 20, 27)
        np.testing.assert_allclose(rec.strided, strided, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec.high_res, high_res, rtol=1e-5, atol=1e-6)
