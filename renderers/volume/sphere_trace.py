"""Sphere tracing of signed distance functions, with a final secant / bisection refinement.

From the ray's entry into the box, each step advances by ``step_scale`` times the SDF (a learned SDF is only
approximately a distance; ``step_scale < 1`` guards against overshooting thin parts), but at least ``min_step``.
A ray stops when the SDF falls below ``eps`` or changes sign (an overshoot); the root is then bracketed between
the last positive and the first non-positive point and refined by regula falsi with the Illinois rule (no end
stalls), so hits land on the zero set to the SDF's numerical precision; a ray whose first point is inside is a
hit there.
Rays that leave the box, or run out of steps, miss. Pure torch (the SDF is any callable), any device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sphere_trace"]


@torch.no_grad()
def sphere_trace(sdf: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor, t_near: Tensor, t_far: Tensor, *,
                 max_steps: int = 128, eps: float = 1e-5, step_scale: float = 0.9, min_step: float = 1e-4,
                 refine: int = 16) -> tuple[Tensor, Tensor]:
    """Nearest zero of ``sdf`` along each ray inside ``[t_near, t_far]``.

    Args:
        sdf: maps points ``[N, 3]`` to signed distances ``[N]`` (negative inside).
        origins, dirs: ``[R, 3]`` rays (unit ``dirs``). t_near, t_far: ``[R]`` the interval to search.
        max_steps: marching steps. eps: stop below this SDF. step_scale, min_step: step control (module doc).
        refine: regula falsi (Illinois) iterations on a bracketed root.

    Returns:
        ``t [R]`` (distance to the hit; ``t_far`` on a miss) and ``hit [R]`` bool.
    """
    R = len(origins)
    t = t_near.clone()
    hit = torch.zeros(R, dtype=torch.bool, device=origins.device)
    active = t_far > t_near
    t_pos = t.clone()  # last point with sdf > 0
    f_pos = torch.full_like(t, float("inf"))
    bracket = torch.zeros_like(hit)
    t_neg, f_neg = t.clone(), torch.zeros_like(t)
    for _ in range(max_steps):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        f = sdf(origins[idx] + dirs[idx] * t[idx, None]).to(t.dtype)
        close = f.abs() < eps
        crossed = (f < 0) & ~close
        done_hit = close
        hit[idx[done_hit]] = True
        b = idx[crossed]
        bracket[b], t_neg[b], f_neg[b] = True, t[b], f[crossed]
        going = ~(close | crossed)
        g = idx[going]
        t_pos[g], f_pos[g] = t[g], f[going]
        t[g] = t[g] + torch.clamp(f[going] * step_scale, min=min_step)
        active[idx[~going]] = False
        left = t[g] > t_far[g]
        active[g[left]] = False
    # Refine bracketed roots by regula falsi with the Illinois rule (the end that stays twice in a row has its
    # value halved, so neither end stalls); a ray negative at its first point is a hit there.
    b = (bracket & torch.isfinite(f_pos)).nonzero()[:, 0]
    if len(b):
        lo, hi, f_lo, f_hi = t_pos[b], t_neg[b], f_pos[b], f_neg[b]
        side = torch.zeros(len(b), dtype=torch.int8, device=t.device)  # +1: lo moved last, -1: hi moved last
        for _ in range(refine):
            mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
            mid = torch.where((mid > lo) & (mid < hi), mid, 0.5 * (lo + hi))
            fm = sdf(origins[b] + dirs[b] * mid[:, None]).to(t.dtype)
            pos = fm > 0
            f_hi = torch.where(pos & (side == 1), 0.5 * f_hi, f_hi)
            f_lo = torch.where(~pos & (side == -1), 0.5 * f_lo, f_lo)
            lo, f_lo = torch.where(pos, mid, lo), torch.where(pos, fm, f_lo)
            hi, f_hi = torch.where(pos, hi, mid), torch.where(pos, f_hi, fm)
            side = torch.where(pos, 1, -1).to(torch.int8)
        t[b] = torch.where(f_lo.abs() < f_hi.abs(), lo, hi)
    hit |= bracket
    t = torch.where(hit, t, t_far)
    return t, hit
