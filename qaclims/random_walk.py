"""Random walk of CAMs on the affinities of a class-boundary map (IRNet; ALGORITHM §7).

Affinity of two pixels within `radius`: (1 − max boundary score on their path)^β; every pixel
has self-affinity 1. The transition matrix T is the affinity matrix with each column divided
by its sum, and the walk is x ← x · T^(2^exp_times), on the maps x = CAMs · (1 − boundary).

Two ways to compute it, equal up to rounding:
- dense: T as an N×N matrix (N = H·W) squared `exp_times` times, as IRNet does. O(N³) work
  and O(N²) memory: only for small maps.
- sparse: T as a torch.sparse CSR matrix (≈ 2D+1 entries a column, D search directions),
  applied 2^exp_times times to the maps. O(N · D · 2^exp_times) work, O(N · D) memory.
`method="auto"` picks dense up to `DENSE_MAX_PIXELS` pixels, sparse above.
"""

from __future__ import annotations

import warnings

import torch

from qaclims.path_index import PathIndex

# Dense squaring beats the sparse walk only on small maps (benchmarks/bench_irn.py).
DENSE_MAX_PIXELS = 1024


def affinity_entries(
    edge: torch.Tensor, path_index: PathIndex, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of the symmetric affinity matrix of `edge` (H×W), self-loops included.

    Pairs whose affinity is exactly zero are dropped.
    """
    height, width = edge.shape
    n = height * width
    aff = (1.0 - path_index.max_on_path(edge)).clamp_min(0.0).pow(beta)  # (D, H, W)
    src, dst = path_index.pair_indices(height, width)
    src, dst = src.to(edge.device), dst.to(edge.device)
    values = aff[path_index.pair_valid(height, width).to(edge.device)]
    keep = values > 0
    src, dst, values = src[keep], dst[keep], values[keep]
    diag = torch.arange(n, device=edge.device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    return rows, cols, torch.cat([values, values, torch.ones(n, device=edge.device)])


def dense_transition(edge: torch.Tensor, path_index: PathIndex, beta: float) -> torch.Tensor:
    """N×N column-normalised transition matrix (N = H·W) of `edge` (H×W)."""
    n = edge.numel()
    rows, cols, values = affinity_entries(edge, path_index, beta)
    aff = torch.zeros(n, n, dtype=edge.dtype, device=edge.device)
    aff[rows, cols] = values
    return aff / aff.sum(dim=0, keepdim=True)


def sparse_transition_t(edge: torch.Tensor, path_index: PathIndex, beta: float) -> torch.Tensor:
    """Transpose of the transition matrix as sparse CSR: rows of the affinity, normalised."""
    n = edge.numel()
    rows, cols, values = affinity_entries(edge, path_index, beta)
    row_sum = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    coo = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values / row_sum[rows], (n, n), check_invariants=False
    ).coalesce()
    with warnings.catch_warnings():  # CSR is "beta" in torch, and 3× faster than COO here
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


@torch.no_grad()
def propagate(
    cams: torch.Tensor,
    edge: torch.Tensor,
    *,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    method: str = "auto",
) -> torch.Tensor:
    """Walk `cams` (C×H×W) · (1 − edge) on the affinities of `edge` (H×W in [0, 1]): C×H×W."""
    if cams.shape[-2:] != edge.shape:
        raise ValueError(f"CAMs {tuple(cams.shape)} and boundary map {tuple(edge.shape)} differ")
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be auto, dense or sparse, got {method!r}")
    channels, height, width = cams.shape
    if channels == 0:  # an image without classes: nothing to walk
        return cams.float()
    if method == "auto":
        method = "dense" if edge.numel() <= DENSE_MAX_PIXELS else "sparse"
    path_index = PathIndex.build(radius)
    x = (cams * (1.0 - edge)).reshape(channels, -1).float()
    edge = edge.float()
    if method == "dense":
        trans = dense_transition(edge, path_index, beta)
        for _ in range(exp_times):
            trans = trans @ trans
        out = x @ trans
    else:
        trans_t = sparse_transition_t(edge, path_index, beta)
        y = x.t().contiguous()
        for _ in range(2**exp_times):
            y = trans_t @ y
        out = y.t()
    return out.reshape(channels, height, width)
