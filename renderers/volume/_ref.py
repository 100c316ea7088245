"""Torch twin of the volume compositing kernels (``cuda/volume``): the same rules, on any device and dtype, with
plain autograd for the gradients. Samples are scattered into a padded ``[R, K]`` layout so the transmittance is
one ``cumprod`` per ray (whose backward handles fully opaque samples)."""

from __future__ import annotations

import torch
from torch import Tensor


def composite_ref(values: Tensor, colors: Tensor, t_starts: Tensor, t_ends: Tensor, offsets: Tensor,
                  mode: str, t_eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> rgb [R, D], opacity [R], depth [R], weights [S], count [R] (see :func:`composite`)."""
    R, S, D = len(offsets) - 1, len(values), colors.shape[1]
    counts = offsets[1:] - offsets[:-1]
    ray = torch.repeat_interleave(torch.arange(R, device=values.device), counts)
    slot = torch.arange(S, device=values.device) - offsets[:-1][ray]
    K = int(counts.max()) if R and S else 0
    alpha = 1 - torch.exp(-values * (t_ends - t_starts)) if mode == "density" else values
    dense = alpha.new_zeros(R, K + 1).index_put((ray, slot + 1), alpha)  # column 0: nothing before the first
    T = torch.cumprod(1 - dense, dim=1)[:, :-1][ray, slot]  # transmittance before each sample
    keep = T.detach() >= t_eps
    weights = torch.where(keep, T * alpha, torch.zeros_like(alpha))
    rgb = colors.new_zeros(R, D).index_add(0, ray, weights[:, None] * colors)
    opacity = weights.new_zeros(R).index_add(0, ray, weights)
    depth = weights.new_zeros(R).index_add(0, ray, weights * 0.5 * (t_starts + t_ends))
    count = torch.zeros(R, dtype=torch.int32, device=values.device).index_add(0, ray, keep.int())
    return rgb, opacity, depth, weights, count
