"""Golden tests of IRN's loss and mean displacement against IRNet, written out pair by pair.

Reference (ALGORITHM §7): IRNet `net/resnet50_irn.py` `AffinityDisplacementLoss` (affinity
1 − max σ(edge) on the path; pos −log(aff + 1e-5), neg −log(1 + 1e-5 − aff); pair displacement
disp(src) − disp(dst), fg target the direction (dy, dx), bg target 0) and `step/train_irn.py`
(label-weighted means with eps 1e-5, displacement sums over 2 × #pairs, total (pos/2 + … )),
`voc12/dataloader.py` `GetAffinityLabelFromIndices` (both < 255 valid; equal bg / equal fg /
different), `misc/indexing.py` `get_indices_of_pairs` (sources only in rows 0..h−r and columns
r−1..w−r, so every direction stays inside; `sources="all"` is qaclims's every-pair option).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qaclims import train_irn
from qaclims.path_index import PathIndex
from tests.test_golden_random_walk import search_directions, search_path

EPS = 1e-5


def reference_irn_loss(
    edge_logits: np.ndarray, disp: np.ndarray, labels: np.ndarray, radius: int, sources: str
) -> tuple[float, dict[str, float]]:
    """IRNet's loss of a batch (B×1×h×w logits, B×2×h×w displacements, B×h×w labels)."""
    edge = 1.0 / (1.0 + np.exp(-edge_logits[:, 0].astype(np.float64)))
    sums = dict.fromkeys(["bg", "fg", "neg", "dp_fg", "dp_bg"], 0.0)
    counts = dict.fromkeys(["bg", "fg", "neg"], 0)
    batch, height, width = labels.shape
    floor = radius - 1
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if sources == "reference" and not (
                    y < height - floor and floor <= x < width - floor
                ):
                    continue
                for dy, dx in search_directions(radius):
                    y2, x2 = y + dy, x + dx
                    if not (0 <= y2 < height and 0 <= x2 < width):
                        continue
                    a, c = int(labels[b, y, x]), int(labels[b, y2, x2])
                    if a == 255 or c == 255:
                        continue
                    aff = 1.0 - max(edge[b, y + py, x + px] for py, px in search_path(dy, dx))
                    pair = disp[b, :, y, x].astype(np.float64) - disp[b, :, y2, x2]
                    if a == c == 0:
                        counts["bg"] += 1
                        sums["bg"] += -math.log(aff + EPS)
                        sums["dp_bg"] += abs(pair[0]) + abs(pair[1])
                    elif a == c:
                        counts["fg"] += 1
                        sums["fg"] += -math.log(aff + EPS)
                        sums["dp_fg"] += abs(pair[0] - dy) + abs(pair[1] - dx)
                    else:
                        counts["neg"] += 1
                        sums["neg"] += -math.log(1.0 + EPS - aff)
    pos = sums["bg"] / (counts["bg"] + EPS) / 2 + sums["fg"] / (counts["fg"] + EPS) / 2
    neg = sums["neg"] / (counts["neg"] + EPS)
    dp_fg = sums["dp_fg"] / (2 * counts["fg"] + EPS)
    dp_bg = sums["dp_bg"] / (2 * counts["bg"] + EPS)
    terms = {"pos": pos, "neg": neg, "dp_fg": dp_fg, "dp_bg": dp_bg}
    return (pos + neg) / 2 + (dp_fg + dp_bg) / 2, terms


def test_irn_loss_of_one_source_by_hand() -> None:
    """2×3 grid, radius 2: IRNet's one source (0, 1) and its 4 pairs, each term by hand."""
    labels = torch.tensor([[[0, 1, 1], [2, 255, 1]]], dtype=torch.uint8)
    logits = torch.zeros(1, 1, 2, 3)
    logits[0, 0, 1, 0] = math.log(3.0)  # σ = ¾ at (1, 0), ½ elsewhere
    disp = torch.zeros(1, 2, 2, 3)  # (y, x) channels
    disp[0, 1, 0, 2] = -1.0  # (0, 2): (0, −1), so disp(src) − disp(dst) = (0, 1), the target
    disp[0, :, 1, 2] = -1.0  # (1, 2): (−1, −1) → (1, 1), the target
    loss, terms = train_irn.irn_loss(logits, disp, labels, PathIndex.build(2))
    # pairs of (0, 1): → (0, 2) fg, aff 1 − ½; → (1, 1) ignored; → (1, 2) fg, aff ½;
    # → (1, 0) negative, its path (0,1), (0,0), (1,1), (1,0) holds the ¾: aff ¼
    fg = 2 * -math.log(0.5 + EPS) / (2 + EPS)
    neg = -math.log(0.75 + EPS) / (1 + EPS)  # −log(1 + eps − ¼)
    assert terms["pos"] == pytest.approx(fg / 2, rel=1e-6)  # no background pair: 0 / eps
    assert terms["neg"] == pytest.approx(neg, rel=1e-6)
    assert terms["dp_fg"] == pytest.approx(0.0, abs=1e-7)
    assert terms["dp_bg"] == 0.0
    assert loss.item() == pytest.approx((fg / 2 + neg) / 2, rel=1e-6)
    _, flipped = train_irn.irn_loss(logits, -disp, labels, PathIndex.build(2))
    assert flipped["dp_fg"] == pytest.approx((2 + 4) / (2 * 2 + EPS), rel=1e-6)


@pytest.mark.parametrize("sources", ["reference", "all"])
def test_irn_loss_equals_irnets_affinity_displacement_loss(sources: str) -> None:
    """irn_loss = IRNet's pos/neg affinity and fg/bg displacement terms, pair by pair."""
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 1, 1, 2, 255], size=(2, 6, 7)).astype(np.uint8)
    labels[0, :3, :4] = 1  # some larger same-class blocks for positive pairs
    labels[1, 2:, 3:] = 0
    logits = rng.normal(0.0, 2.0, (2, 1, 6, 7)).astype(np.float32)
    disp = rng.normal(0.0, 1.5, (2, 2, 6, 7)).astype(np.float32)
    args = (torch.from_numpy(logits), torch.from_numpy(disp), torch.from_numpy(labels))
    index = PathIndex.build(3)
    loss, terms = train_irn.irn_loss(*args, index, sources=sources)
    want, want_terms = reference_irn_loss(logits, disp, labels, 3, sources)
    assert terms == pytest.approx(want_terms, rel=1e-5)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    if sources == "reference":  # IRNet's pair set is the default
        assert train_irn.irn_loss(*args, index)[1] == terms


class _ConstantField(torch.nn.Module):
    """Stand-in IRN: displacement = the image's first two channels at stride 4."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :1, ::4, ::4], x[:, :2, ::4, ::4]


def test_mean_displacement_is_the_mean_over_images_and_pixels() -> None:
    """mean_shift = mean over images of each image's mean displacement (IRNet train_irn)."""
    first = torch.zeros(3, 8, 8)
    first[0], first[1] = 1.0, -2.0  # mean (1, −2)
    second = torch.zeros(3, 8, 8)
    second[0, :, :4] = 3.0  # mean (1.5, 0.5)
    second[1, :4] = 1.0
    dataset = [{"image": first}, {"image": second}]
    model = _ConstantField()
    shift = train_irn.mean_displacement(model, dataset, torch.device("cpu"))
    assert shift.tolist() == pytest.approx([1.25, -0.75])
    assert not model.training


def test_mean_displacement_leaves_out_the_last_partial_batch() -> None:
    """IRNet: mean over full batches of 32 of the batch mean; 33 images → the first 32 only."""
    images = [torch.full((3, 4, 4), float(i < 32)) for i in range(33)]  # image 33: zeros
    shift = train_irn.mean_displacement(
        _ConstantField(), [{"image": x} for x in images], torch.device("cpu")
    )
    assert shift.tolist() == pytest.approx([1.0, 1.0])  # IRNet: the 33rd image is dropped
    few = train_irn.mean_displacement(
        _ConstantField(), [{"image": x} for x in images[31:]], torch.device("cpu")
    )
    assert few.tolist() == pytest.approx([0.5, 0.5])  # fewer than a batch: all of them
