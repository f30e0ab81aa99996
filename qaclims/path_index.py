"""Pixel pairs within a radius on a grid, and the straight path between them (IRNet's PathIndex).

A search direction (dy, dx) pairs pixel p with p + (dy, dx). The directions are IRNet's half
disc: (0, 1..r-1) and (1..r-1, -(r-1)..r-1) with dy² + dx² < r², so every unordered pair within
the radius appears exactly once. The path of a direction is the set of grid points in the
box spanned by (0, 0) and (dy, dx) whose squared distance to the line through them is below
1, the destination first (IRNet's ordering). The affinity of a pair is then 1 − the maximum
class-boundary score on its path (ALGORITHM §7).

Pairs are laid out as a (D, H, W) grid over every source pixel; `pair_valid` marks the ones
whose destination is inside the image. IRNet's PathIndex keeps only the sources where the
whole radius fits (`reference_sources`: rows 0 … H − r, columns r − 1 … W − r, with
r − 1 = IRNet's `radius_floor`); training uses that set by default (`irn.pair_sources`).
Everything is vectorised: one gather per path length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def search_directions(radius: int) -> np.ndarray:
    """(D, 2) int64 displacements (dy, dx) of the half disc of `radius` (IRNet order)."""
    if radius < 2:
        raise ValueError(f"radius must be at least 2, got {radius}")
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [
        (y, x)
        for y in range(1, radius)
        for x in range(-radius + 1, radius)
        if x * x + y * y < radius * radius
    ]
    return np.asarray(dirs, np.int64)


def direction_path(dy: int, dx: int) -> np.ndarray:
    """(L, 2) grid offsets on the straight path from (0, 0) to (dy, dx), destination first."""
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    keep = (dy * xx - dx * yy) ** 2 < dy * dy + dx * dx
    coords = np.stack([yy[keep], xx[keep]], 1)
    order = np.argsort(-(np.abs(coords[:, 0]) + np.abs(coords[:, 1])), kind="stable")
    return coords[order]


@dataclass(frozen=True)
class PathIndex:
    """Search directions of one radius, with their paths grouped by path length."""

    radius: int
    directions: np.ndarray  # (D, 2) (dy, dx)
    groups: tuple[tuple[np.ndarray, np.ndarray], ...]  # (direction ids (n,), offsets (n, L, 2))

    @classmethod
    def build(cls, radius: int) -> PathIndex:
        dirs = search_directions(radius)
        paths = [direction_path(int(dy), int(dx)) for dy, dx in dirs]
        lengths = np.array([len(p) for p in paths])
        groups = []
        for length in np.unique(lengths):
            ids = np.flatnonzero(lengths == length)
            groups.append((ids, np.stack([paths[i] for i in ids])))
        return cls(radius, dirs, tuple(groups))

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    def _flat_offsets(self, offsets: np.ndarray, padded_width: int) -> torch.Tensor:
        return torch.from_numpy(offsets[..., 0] * padded_width + offsets[..., 1])

    def pair_valid(self, height: int, width: int) -> torch.Tensor:
        """(D, H, W) bool: the destination of direction d from (y, x) lies inside the grid."""
        dy = torch.from_numpy(self.directions[:, 0])[:, None, None]
        dx = torch.from_numpy(self.directions[:, 1])[:, None, None]
        ys = torch.arange(height)[None, :, None] + dy
        xs = torch.arange(width)[None, None, :] + dx
        return (ys < height) & (xs >= 0) & (xs < width)

    def reference_sources(self, height: int, width: int) -> torch.Tensor:
        """(H, W) bool: IRNet's source pixels, those whose every direction stays inside."""
        floor = self.radius - 1  # IRNet: int(np.ceil(radius) - 1)
        keep = torch.zeros(height, width, dtype=torch.bool)
        keep[: max(height - floor, 0), floor : max(width - floor, floor)] = True
        return keep

    def to_pairs(self, x: torch.Tensor, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, destination) values of every pair: two (..., D, H, W) tensors.

        `x` is (..., H, W); destinations outside the grid read `fill`.
        """
        r = self.radius
        height, width = x.shape[-2:]
        padded = F.pad(x, (r, r, 0, r), value=fill)
        wp = width + 2 * r
        flat = padded.flatten(-2)
        src = (torch.arange(height)[:, None] * wp + torch.arange(width)[None, :] + r).to(x.device)
        shift = torch.from_numpy(self.directions[:, 0] * wp + self.directions[:, 1]).to(x.device)
        dst = flat[..., (src[None] + shift[:, None, None]).reshape(-1)]
        dst = dst.reshape(*x.shape[:-2], self.num_directions, height, width)
        return x.unsqueeze(-3).expand_as(dst), dst

    def max_on_path(self, edge: torch.Tensor) -> torch.Tensor:
        """(..., D, H, W) maximum of `edge` (..., H, W) on each pair's path (1 off the grid)."""
        r = self.radius
        height, width = edge.shape[-2:]
        wp = width + 2 * r
        flat = F.pad(edge, (r, r, 0, r), value=1.0).flatten(-2)
        src = torch.arange(height)[:, None] * wp + torch.arange(width)[None, :] + r
        src = src.reshape(-1).to(edge.device)
        parts, order = [], []
        for ids, offsets in self.groups:
            idx = self._flat_offsets(offsets, wp).to(edge.device)  # (n, L)
            gathered = flat[..., (idx[..., None] + src).reshape(-1)]
            gathered = gathered.reshape(*edge.shape[:-2], *idx.shape, height * width)
            parts.append(gathered.amax(dim=-2))
            order.append(ids)
        inverse = torch.from_numpy(np.argsort(np.concatenate(order))).to(edge.device)
        out = torch.cat(parts, dim=-2).index_select(-2, inverse)
        return out.reshape(*edge.shape[:-2], self.num_directions, height, width)

    def pair_indices(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (source, destination) indices of the valid pairs, in (D, H, W) order."""
        valid = self.pair_valid(height, width)
        d, y, x = valid.nonzero(as_tuple=True)
        dirs = torch.from_numpy(self.directions)
        src = y * width + x
        dst = (y + dirs[d, 0]) * width + (x + dirs[d, 1])
        return src, dst
