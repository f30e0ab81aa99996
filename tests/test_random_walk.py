"""Random walk: column-normalised transitions, dense and sparse paths agree, shapes kept."""

from __future__ import annotations

import torch

from qaclims.path_index import PathIndex
from qaclims.random_walk import dense_transition, propagate, sparse_transition_t


def _edge(height: int, width: int, seed: int = 0) -> torch.Tensor:
    edge = torch.rand(height, width, generator=torch.Generator().manual_seed(seed)) * 0.3
    edge[:, width // 2] = 0.95  # a vertical boundary
    return edge


def test_transition_columns_sum_to_one():
    edge, index = _edge(9, 11), PathIndex.build(4)
    trans = dense_transition(edge, index, beta=10.0)
    torch.testing.assert_close(trans.sum(dim=0), torch.ones(99))
    assert (trans >= 0).all()
    trans_t = sparse_transition_t(edge, index, beta=10.0).to_dense()
    torch.testing.assert_close(trans_t, trans.t())


def test_dense_and_sparse_walks_agree_and_keep_shapes():
    edge = _edge(12, 10, seed=1)
    cams = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(2))
    dense = propagate(cams, edge, radius=5, beta=10.0, exp_times=5, method="dense")
    sparse = propagate(cams, edge, radius=5, beta=10.0, exp_times=5, method="sparse")
    assert dense.shape == sparse.shape == cams.shape
    torch.testing.assert_close(dense, sparse, rtol=1e-4, atol=1e-5)


def test_walk_does_not_cross_a_closed_boundary():
    edge = torch.zeros(10, 12)
    edge[:, 6] = 1.0  # a wall: no affinity across it
    cams = torch.zeros(1, 10, 12)
    cams[0, :, :3] = 1.0
    walked = propagate(cams, edge, radius=5, beta=10.0, exp_times=4)
    assert walked[0, :, 7:].abs().max() == 0
    assert walked[0, :, :6].min() > 0  # spread across the left side
    assert walked.max() <= 1.0 + 1e-6  # each output is a weighted average of the inputs


def test_constant_maps_stay_constant():
    edge = _edge(9, 13, seed=3)
    cams = torch.full((2, 9, 13), 0.7)
    walked = propagate(cams / (1.0 - edge), edge, radius=4, beta=10.0, exp_times=6)
    torch.testing.assert_close(walked, torch.full_like(walked, 0.7))


def test_no_class_walks_to_no_maps():
    """An image without classes has a 0×H×W CAM stack: the walk returns it, not a crash."""
    for method in ("dense", "sparse"):
        out = propagate(torch.zeros(0, 6, 7), _edge(6, 7), radius=2, exp_times=2, method=method)
        assert out.shape == (0, 6, 7)
