"""Torch reference twin of the Gaussian ray caster (:mod:`recon.renderers.gaussians.raycast`).

Brute force: every ray against every Gaussian (rays in chunks), hits sorted by ``(t*, index)``, composited with
the same rules as the C++ kernels (``cuda/gaussians_rt/grt.h``). Plain autograd gives the gradients. ``O(R N)``
time and memory per chunk: meant for tests and small scenes, on any device and in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import quat_wxyz_to_rotmat
from recon.renderers.gaussians._ref import ALPHA_MAX, ALPHA_MIN, T_MIN

_CHUNK = 1 << 20  # rays x Gaussians per chunk


def canonical(means: Tensor, quats: Tensor, scales: Tensor) -> Tensor:
    """``M [N, 3, 3] = S^-1 R^T``: world offsets to the Gaussians' canonical (unit-sphere) frames."""
    qn = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    R = quat_wxyz_to_rotmat(qn)
    return R.transpose(-1, -2) / scales[:, :, None]


def responses(M: Tensor, means: Tensor, opacities: Tensor, origins: Tensor, dirs: Tensor):
    """Max response along each ray: ``t* [R, N]``, ``alpha_raw [R, N]`` (unclamped ``o exp(-m2/2)``)."""
    po = origins[:, None, :] - means[None]  # [R, N, 3]
    p = torch.einsum("nij,rnj->rni", M, po)
    q = torch.einsum("nij,rj->rni", M, dirs)
    a = (q * q).sum(-1)
    t = -(p * q).sum(-1) / a.clamp_min(1e-30)
    x = p + t[..., None] * q
    m2 = (x * x).sum(-1)
    return t, opacities[None] * torch.exp(-0.5 * m2)


def transmittance_ref(means, quats, scales, opacities, origins, dirs, tmin: float, tmax: float) -> Tensor:
    """Product of ``1 - min(alpha, 0.99)`` over the hits in ``[tmin, tmax]``, 0 once below ``T_MIN``; ``[R]``."""
    keep = _usable(scales, opacities, means)
    M = canonical(means[keep], quats[keep], scales[keep])
    out = []
    step = max(1, _CHUNK // max(int(keep.sum()), 1))
    for r0 in range(0, origins.shape[0], step):
        t, a = responses(M, means[keep], opacities[keep], origins[r0:r0 + step], dirs[r0:r0 + step])
        hit = (t >= tmin) & (t <= tmax) & (a >= ALPHA_MIN)
        T = torch.where(hit, 1.0 - a.clamp(max=ALPHA_MAX), torch.ones_like(a)).prod(-1)
        out.append(torch.where(T < T_MIN, torch.zeros_like(T), T))
    return torch.cat(out) if out else origins.new_ones(0)


def _usable(scales: Tensor, opacities: Tensor, means: Tensor) -> Tensor:
    return ((opacities >= ALPHA_MIN) & (scales > 0).all(-1) & torch.isfinite(scales).all(-1)
            & torch.isfinite(means).all(-1))


def raycast_ref(means, quats, scales, opacities, colors, origins, dirs, tmin: float, tmax: float,
                order: str = "center"):
    """Ordered compositing along each ray, by ``order`` ("center": the centers' projections on the ray,
    ``(mu - o).d / |d|^2``; "hit": ``t*``). Returns ``features [R, D]``, ``alpha [R]``, ``depth [R]`` (sum of
    ``w key``), ``n_hits [R]``. Differentiable w.r.t. means, quats, scales, opacities and colors."""
    keep = torch.nonzero(_usable(scales, opacities, means)).squeeze(-1)
    M = canonical(means[keep], quats[keep], scales[keep])
    mu, op, col = means[keep], opacities[keep], colors[keep]
    R = origins.shape[0]
    if len(keep) == 0 or R == 0:
        anchor = sum(x.sum() for x in (means, quats, scales, opacities, colors)) * 0.0
        return (colors.new_zeros(R, colors.shape[1]) + anchor, colors.new_zeros(R) + anchor,
                colors.new_zeros(R) + anchor, torch.zeros(R, dtype=torch.long, device=colors.device))
    feats, alphas, depths, counts = [], [], [], []
    step = max(1, _CHUNK // max(len(keep), 1))
    for r0 in range(0, origins.shape[0], step):
        o, d = origins[r0:r0 + step], dirs[r0:r0 + step]
        t, a = responses(M, mu, op, o, d)
        hit = (t >= tmin) & (t <= tmax) & (a >= ALPHA_MIN)
        if order == "center":
            t = ((mu[None] - o[:, None]) * d[:, None]).sum(-1) / (d * d).sum(-1, keepdim=True)
        # Sort by (key, index): misses go last (t = inf); a stable sort keeps index order on ties.
        key = torch.where(hit, t.detach(), torch.full_like(t, float("inf")))
        order = torch.sort(key, dim=-1, stable=True).indices
        t, a, hit = (torch.gather(x, 1, order) for x in (t, a, hit))
        alpha = torch.where(hit, a.clamp(max=ALPHA_MAX), torch.zeros_like(a))
        with torch.no_grad():  # the rasterizer's early stop: hit k is composited iff T after it >= T_MIN
            included = torch.cumprod(1.0 - alpha, dim=-1) >= T_MIN
        alpha = torch.where(included, alpha, torch.zeros_like(alpha))
        T_incl = torch.cumprod(1.0 - alpha, dim=-1)
        T_excl = torch.cat([torch.ones_like(T_incl[:, :1]), T_incl[:, :-1]], dim=-1)
        w = alpha * T_excl
        feats.append(torch.einsum("rn,rnd->rd", w, col[order]))
        depths.append((w * torch.where(hit, t, torch.zeros_like(t))).sum(-1))
        alphas.append(1.0 - T_incl[:, -1])
        counts.append((hit & included).sum(-1))
    return torch.cat(feats), torch.cat(alphas), torch.cat(depths), torch.cat(counts)
