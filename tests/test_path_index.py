"""Path index: pairs within the radius, their paths, and the pair gathers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaclims.path_index import PathIndex, direction_path


@pytest.mark.parametrize(("radius", "height", "width"), [(2, 5, 6), (5, 9, 11), (10, 13, 12)])
def test_pairs_match_brute_force_enumeration(radius, height, width):
    pix = [(y, x) for y in range(height) for x in range(width)]
    expected = {
        frozenset((p[0] * width + p[1], q[0] * width + q[1]))
        for p in pix
        for q in pix
        if p != q and (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 < radius**2
    }
    src, dst = PathIndex.build(radius).pair_indices(height, width)
    got = [frozenset(pair) for pair in zip(src.tolist(), dst.tolist(), strict=True)]
    assert len(got) == len(set(got))  # each unordered pair exactly once
    assert set(got) == expected


def test_paths_start_at_destination_and_contain_source():
    assert direction_path(0, 3).tolist() == [[0, 3], [0, 2], [0, 1], [0, 0]]
    assert direction_path(1, 1).tolist()[0] == [1, 1]
    for dy, dx in PathIndex.build(6).directions.tolist():
        path = direction_path(dy, dx).tolist()
        assert path[0] == [dy, dx] and [0, 0] in path
        assert len(path) == len({tuple(p) for p in path})


def test_max_on_path_matches_loops():
    height, width, radius = 6, 7, 4
    edge = torch.rand(height, width, generator=torch.Generator().manual_seed(0))
    index = PathIndex.build(radius)
    got = index.max_on_path(edge)
    valid = index.pair_valid(height, width)
    for d, (dy, dx) in enumerate(index.directions.tolist()):
        path = direction_path(dy, dx)
        for y in range(height):
            for x in range(width):
                if not valid[d, y, x]:
                    assert got[d, y, x] == 1.0  # leaves the grid: boundary everywhere
                    continue
                want = max(float(edge[y + py, x + px]) for py, px in path)
                assert got[d, y, x] == pytest.approx(want)


def test_to_pairs_reads_source_and_destination():
    height, width = 5, 8
    x = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width)
    index = PathIndex.build(3)
    src, dst = index.to_pairs(x, fill=-1.0)
    valid = index.pair_valid(height, width)
    for d, (dy, dx) in enumerate(index.directions.tolist()):
        want = np.full((height, width), -1.0)
        ys, xs = np.mgrid[0:height, 0:width]
        inside = valid[d].numpy()
        want[inside] = ((ys + dy) * width + (xs + dx))[inside]
        np.testing.assert_array_equal(dst[0, d].numpy(), want)
        np.testing.assert_array_equal(src[0, d].numpy(), x[0].numpy())


def test_reference_sources_are_irnet_path_index_sources():
    """IRNet: rows 0 … h − radius_floor − 1, columns radius_floor … w − radius_floor − 1."""
    index = PathIndex.build(3)  # radius_floor = ceil(3) - 1 = 2
    keep = index.reference_sources(5, 7)
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[0:3, 2:5] = True
    assert torch.equal(keep, expected)
    valid = index.pair_valid(5, 7)
    assert valid[:, keep].all()  # every direction of a reference source stays inside


def test_reference_pairs_are_fewer_than_all_valid_pairs_at_a_512_crop():
    """At 128×128, radius 10: IRNet's set has D · 119 · 110 pairs; the wider set 17 % more."""
    index = PathIndex.build(10)
    reference = index.num_directions * 119 * 110
    assert int(index.reference_sources(128, 128).sum()) * index.num_directions == reference
    wider = int(index.pair_valid(128, 128).sum())
    assert 1.15 < wider / reference < 1.19
