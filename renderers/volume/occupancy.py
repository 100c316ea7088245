"""Occupancy grids: which cells of a field's box can hold visible matter, so that ray samples skip empty space.

A grid is a ``bool [G, G, G]`` tensor over the box ``[lo, hi]`` (cell ``(i, j, k)`` covers ``lo + (i, j, k) *
cell``). :func:`occupied_samples` cuts each ray's chord through the box into ``candidates`` equal intervals
(finer than a uniform sampler can afford) and keeps those whose evaluation point lies in an occupied cell,
packed as :func:`recon.renderers.volume.composite` expects. Skipped intervals are treated as empty (opacity 0),
which is what the grid asserts.

:func:`sdf_occupancy` marks the cells an SDF's level set can reach: ``|sdf(center)| <= 1.5 * half diagonal +
4 / inv_s`` (an SDF is within its cell's half diagonal of a surface through the cell; NeuS's density is not
negligible within a few ``1 / inv_s`` of the zero set), dilated by one cell so thin parts that move between
updates keep their samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from recon.renderers.volume.field import ray_box

__all__ = ["cell_centers", "occupied_samples", "sdf_occupancy"]


def cell_centers(lo: Tensor, hi: Tensor, resolution: int) -> Tensor:
    """``[G^3, 3]`` world centers of the cells, in row-major (x, y, z) order."""
    ax = [lo[a] + (torch.arange(resolution, device=lo.device, dtype=lo.dtype) + 0.5) * (hi[a] - lo[a]) / resolution
          for a in range(3)]
    return torch.stack(torch.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def sdf_occupancy(sdf: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, resolution: int, inv_s: float,
                  chunk: int = 1 << 16) -> Tensor:
    """``bool [G, G, G]``: cells within reach of the SDF's zero set (module docstring)."""
    centers = cell_centers(lo, hi, resolution)
    values = torch.cat([sdf(centers[s:s + chunk]) for s in range(0, len(centers), chunk)])
    half_diag = 0.5 * float(((hi - lo) / resolution).norm())
    occ = values.abs() <= 1.5 * half_diag + 4.0 / max(float(inv_s), 1e-6)
    occ = occ.reshape(1, 1, resolution, resolution, resolution).float()
    return torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0


def occupied_samples(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor, grid: Tensor, candidates: int,
                     generator: torch.Generator | None = None):
    """Packed samples of ``R`` rays in the occupied cells of ``grid``.

    Returns ``ray [S]`` (the ray of each sample), interval ends ``t0, t1 [S]``, evaluation points ``t [S]``
    (midpoints, or uniform inside each interval with a ``generator``) and ``offsets [R + 1]``; samples of a ray
    are contiguous and sorted by depth."""
    R = len(origins)
    t_near, t_far = ray_box(origins, dirs, lo, hi)
    span = (t_far - t_near).clamp_min(0)[:, None]
    k = torch.arange(candidates, device=origins.device, dtype=origins.dtype)
    t0 = t_near[:, None] + span * k / candidates
    t1 = t_near[:, None] + span * (k + 1) / candidates
    if generator is not None:
        u = torch.rand(R, candidates, generator=generator, dtype=origins.dtype,
                       device=generator.device).to(origins.device)
    else:
        u = torch.full((R, candidates), 0.5, device=origins.device, dtype=origins.dtype)
    t = t0 + (t1 - t0) * u
    G = grid.shape[0]
    x = origins[:, None] + dirs[:, None] * t[..., None]
    cell = ((x - lo) / (hi - lo) * G).floor().long().clamp(0, G - 1)
    keep = grid[cell[..., 0], cell[..., 1], cell[..., 2]] & (span > 0)
    ray, col = keep.nonzero(as_tuple=True)
    counts = keep.sum(1)
    offsets = torch.zeros(R + 1, dtype=torch.long, device=origins.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return ray, t0[ray, col], t1[ray, col], t[ray, col], offsets
