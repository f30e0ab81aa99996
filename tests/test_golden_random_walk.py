"""Golden tests of the random walk and the pseudo mask against loops written from IRNet.

References (ALGORITHM §7; REFERENCE_AUDIT #23): IRNet `misc/indexing.py` `PathIndex` (the half
disc of search directions, the path = grid points of the box whose distance to the line is
below 1), `edge_to_affinity` (1 − max boundary on the path), `to_transition_matrix`
(affinity^β with self-affinity 1, column-normalised, squared `exp_times` times) and
`propagate_to_edge` (x · (1 − edge) · T); `step/make_sem_seg_labels.py` (×4 bilinear
align_corners=False, crop, divide by the global max, background plane, argmax, keys).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaclims import pseudo_masks
from qaclims.path_index import PathIndex
from qaclims.random_walk import affinity_entries, propagate


def search_directions(radius: int) -> list[tuple[int, int]]:
    """IRNet's search directions: (0, 1..r−1), then rows 1..r−1 of the disc x² + y² < r²."""
    dirs = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                dirs.append((y, x))
    return dirs


def search_path(dy: int, dx: int) -> list[tuple[int, int]]:
    """Offsets of the box spanned by (0, 0) and (dy, dx) within distance 1 of their line."""
    length_sq = dy * dy + dx * dx
    points = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / length_sq < 1:
                points.append((y, x))
    return points


def reference_affinity(edge: np.ndarray, radius: int, beta: float) -> np.ndarray:
    """N×N affinity: 1 on the diagonal, (1 − max edge on the path)^β for pairs in the radius."""
    height, width = edge.shape
    aff = np.eye(height * width)
    for y in range(height):
        for x in range(width):
            for dy, dx in search_directions(radius):
                y2, x2 = y + dy, x + dx
                if not (0 <= y2 < height and 0 <= x2 < width):
                    continue
                worst = max(edge[y + py, x + px] for py, px in search_path(dy, dx))
                value = (1.0 - worst) ** beta
                aff[y * width + x, y2 * width + x2] += value
                aff[y2 * width + x2, y * width + x] += value
    return aff


def reference_walk(
    cams: np.ndarray, edge: np.ndarray, radius: int, beta: float, exp_times: int
) -> np.ndarray:
    """IRNet `propagate_to_edge`: (cams · (1 − edge)) · T^(2^exp_times), T column-normalised."""
    aff = reference_affinity(edge, radius, beta)
    trans = aff / aff.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        trans = trans @ trans
    x = (cams * (1.0 - edge)).reshape(len(cams), -1)
    return (x @ trans).reshape(cams.shape)


def _edge(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    edge = rng.random((height, width)) * 0.4
    edge[:, width // 2] = rng.uniform(0.6, 0.9, height)  # a leaky vertical boundary
    return edge.astype(np.float32)


def test_path_reference_is_irnets_line_of_pixels() -> None:
    """Path of (2, 3): box points with |2x − 3y| < √13 (checked by hand); 34 directions at r 5."""
    want = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3)]
    assert sorted(search_path(2, 3)) == want
    assert sorted(search_path(0, 3)) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert len(search_directions(5)) == 4 + 9 + 9 + 7 + 5  # rows y = 0..4 of the half disc


def test_affinity_entries_equal_the_loop_affinity() -> None:
    """affinity_entries = (1 − max boundary on the path)^β over every pair within the radius."""
    edge = _edge(5, 7, seed=0)
    rows, cols, values = affinity_entries(torch.from_numpy(edge), PathIndex.build(3), beta=10.0)
    got = np.zeros((35, 35))
    np.add.at(got, (rows.numpy(), cols.numpy()), values.double().numpy())
    np.testing.assert_allclose(got, reference_affinity(edge.astype(np.float64), 3, 10.0), rtol=1e-5)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_two_pixel_walk_by_hand(method: str) -> None:
    """1×2 grid, edge (0, ½), β 10: a = 2⁻¹⁰, T = [[1, a], [a, 1]]/(1+a), x·T² by hand."""
    edge = torch.tensor([[0.0, 0.5]])
    cams = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two classes, one pixel each
    walked = propagate(cams, edge, radius=2, beta=10.0, exp_times=1, method=method)
    # class 0: x = (1, 0); x·T² = ((1 + a²), 2a) / (1 + a)² with a = 1/1024
    assert walked[0, 0, 0].item() == pytest.approx(1048577 / 1050625, rel=1e-6)
    assert walked[0, 0, 1].item() == pytest.approx(2048 / 1050625, rel=1e-5)
    # class 1: x = (0, 1 − ½) = (0, ½)
    assert walked[1, 0, 0].item() == pytest.approx(0.5 * 2048 / 1050625, rel=1e-5)
    assert walked[1, 0, 1].item() == pytest.approx(0.5 * 1048577 / 1050625, rel=1e-6)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_walk_equals_irnets_propagate_to_edge(method: str) -> None:
    """propagate = (cams·(1−edge)) · T^(2^t), T = column-normalised (1 − max edge)^β."""
    edge = _edge(5, 6, seed=1)
    cams = np.random.default_rng(2).random((2, 5, 6)).astype(np.float32)
    got = propagate(
        torch.from_numpy(cams), torch.from_numpy(edge), radius=3, beta=10.0, exp_times=3,
        method=method,
    )  # fmt: skip
    want = reference_walk(cams.astype(np.float64), edge.astype(np.float64), 3, 10.0, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def bilinear(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch's bilinear resize with align_corners=False, written out (half-pixel centres)."""
    channels, in_h, in_w = maps.shape
    out = np.zeros((channels, out_h, out_w))
    for y in range(out_h):
        sy = max((y + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = int(sy)
        y1, wy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = int(sx)
            x1, wx = min(x0 + 1, in_w - 1), sx - x0
            top = (1 - wx) * maps[:, y0, x0] + wx * maps[:, y0, x1]
            bottom = (1 - wx) * maps[:, y1, x0] + wx * maps[:, y1, x1]
            out[:, y, x] = (1 - wy) * top + wy * bottom
    return out


class _FixedBoundary(torch.nn.Module):
    """Stand-in IRN whose class-boundary map is given."""

    def __init__(self, edge: torch.Tensor) -> None:
        super().__init__()
        self.edge = edge

    def boundary(self, image: torch.Tensor) -> torch.Tensor:
        return self.edge


def test_pseudo_mask_equals_make_sem_seg_labels() -> None:
    """Walk, ×4 bilinear, crop, ÷ global max, plane 0.2, argmax → keys (make_sem_seg_labels)."""
    height, width = 15, 22  # strided 4 × 6, cropped after the ×4 upsampling
    edge = np.random.default_rng(3).uniform(0.0, 0.3, (4, 6))
    edge[:, 3] = 1.0  # a closed wall between the two classes
    strided = np.zeros((2, 4, 6), np.float32)
    strided[0, :, :4] = 1.0  # class 1: strong, left of the wall and on it (× (1 − 1) = 0)
    strided[1, :, 4:] = 0.15  # class 4: weak, right of it: below 0.2 of the global max
    keys = np.array([1, 4])
    model = _FixedBoundary(torch.from_numpy(edge).float())
    rgb = np.zeros((height, width, 3), np.uint8)
    got = pseudo_masks.pseudo_mask(
        model, rgb, strided, keys, torch.device("cpu"), radius=3, beta=10.0, exp_times=3,
        bg_threshold=0.2,
    )  # fmt: skip
    walked = reference_walk(strided.astype(np.float64), edge, 3, 10.0, 3)
    up = bilinear(walked, 16, 24)[:, :height, :width]
    up = up / up.max()  # one max over all classes and pixels
    scores = np.concatenate([np.full((1, height, width), 0.2), up])
    want = np.concatenate([[0], keys + 1])[scores.argmax(axis=0)]
    np.testing.assert_array_equal(got, want)
    assert (got[:, :9] == 2).all()  # class 1 fills the left side, the wall stops it
    assert (got[:, 15:] == 0).all()  # class 4 stays below the plane: globally, 0.15 < 0.2
