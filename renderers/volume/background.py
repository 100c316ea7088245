"""Rays through a :class:`~recon.scenes.background.Background` (what lies outside a field's box), and the
merge of its samples with the box's for one front-to-back composite.

Every ray samples the background from its origin (``t = 0``) to ``far * radius``, less its chord through the
foreground box (the box's field owns that): the background is everything outside the box, the same set of points
for every ray, so no ray sees background content that its neighbours cannot. The range is cut into the
background's ``samples`` intervals, equal in ``s = g(t)`` with ``g(t) = t / radius`` below the radius and
``2 - radius / t`` beyond (Zip-NeRF's spacing: linear near, uniform in inverse distance far), the box's chord
collapsed out of ``s`` (the interval edge nearest to it is moved onto it, so no interval spans the box); training
jitters each evaluation point inside its interval. An interval's opacity is ``1 - exp(-sigma L)`` with ``L``
its length in contracted space, so that unbounded far intervals stay finite. The intervals before the box come
before the box's samples in the merged order, the rest after them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.renderers.volume.field import ray_box
from recon.scenes.background import Background

__all__ = ["background_samples", "merge_around", "render_background_rays", "shade_background"]


def _g(t: Tensor, r: float) -> Tensor:
    return torch.where(t < r, t / r, 2 - r / t.clamp_min(1e-12))


def _g_inv(s: Tensor, r: float) -> Tensor:
    return torch.where(s < 1, s * r, r / (2 - s).clamp_min(1e-12))


def background_samples(bg: Background, origins: Tensor, dirs: Tensor, lo: Tensor | None = None,
                       hi: Tensor | None = None, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Interval ends ``t0, t1`` and evaluation points ``t`` (``[R, samples]`` each, increasing along every ray)
    of the background along ``R`` rays (module docstring), and ``front [R]``, how many intervals of each ray lie
    before the box ``[lo, hi]`` (None: no box). ``generator``: jittered points (training), else midpoints."""
    n, r = bg.samples, bg.radius
    R, dev, dt = len(origins), origins.device, origins.dtype
    end = torch.full((R,), 2 - 1 / bg.far, device=dev, dtype=dt)  # g(far * r)
    gap_a, gap_b = end.clone(), end.clone()
    if lo is not None:
        t_near, t_far = ray_box(origins, dirs, lo, hi)  # t_near clamped at 0: a ray may start inside the box
        hit = t_far > t_near
        gap_a = torch.where(hit, _g(t_near, r).clamp_max(end), end)
        gap_b = torch.where(hit, _g(t_far, r).clamp_max(end), end)
    front_len, total = gap_a, gap_a + (end - gap_b)
    k = torch.arange(n + 1, device=dev, dtype=dt) / n
    c = total[:, None] * k  # [R, n + 1] edges in the collapsed coordinate
    front = (front_len / total.clamp_min(1e-12) * n).round().long().clamp(0, n)
    c = c.scatter(1, front[:, None], front_len[:, None])  # the edge nearest the box onto it
    if generator is not None:
        u = torch.rand(R, n, generator=generator, dtype=dt, device=generator.device).to(dev)
    else:
        u = torch.full((R, n), 0.5, dtype=dt, device=dev)
    mid = c[:, :-1] + (c[:, 1:] - c[:, :-1]) * u
    fl, gb = front_len[:, None], gap_b[:, None]
    s_start = torch.where(c[:, :-1] < fl, c[:, :-1], gb + c[:, :-1] - fl)
    s_end = torch.where(c[:, 1:] <= fl, c[:, 1:], gb + c[:, 1:] - fl)
    s_mid = torch.where(mid < fl, mid, gb + mid - fl)
    return _g_inv(s_start, r), _g_inv(s_end, r), _g_inv(s_mid, r), front


def shade_background(bg: Background, origins: Tensor, dirs: Tensor, t0: Tensor, t1: Tensor, t: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Opacity ``[R * n]`` and RGB ``[R * n, 3]`` of the background intervals ``t0, t1, t [R, n]`` (flattened
    ray-major: ray ``i``'s samples are ``i * n .. (i + 1) * n - 1``)."""
    n = t.shape[1]
    o, d = origins[:, None, :], dirs[:, None, :]
    x = (o + d * t[..., None]).reshape(-1, 3)
    ends = bg.contract(torch.cat([o + d * t0[..., None], o + d * t1[..., None]], 1).reshape(-1, 3))
    ends = ends.reshape(len(t), 2, n, 3)
    length = (ends[:, 1] - ends[:, 0]).norm(dim=-1).reshape(-1)
    sigma, rgb = bg(x, d.expand(-1, n, -1).reshape(-1, 3))
    return 1 - torch.exp(-sigma * length), rgb


def merge_around(offsets: Tensor, front: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merge packed box samples (``offsets [R + 1]``, sorted along each ray) with ``n`` background samples per
    ray, of which the first ``front[r]`` lie before the box and the rest after it: returns ``order [S + R n]``
    (indices into the concatenation ``box samples, background samples (ray-major)``, so that ``cat[order]`` is
    in depth order along every ray), the merged ``offsets [R + 1]`` and ``pos_box [S]``, where each box sample
    went. No sort: every position is known."""
    R = len(front)
    dev = offsets.device
    counts = offsets[1:] - offsets[:-1]
    merged = offsets + n * torch.arange(R + 1, device=dev)
    S = int(offsets[-1])
    ray = torch.repeat_interleave(torch.arange(R, device=dev), counts)
    pos_box = merged[ray] + front[ray] + (torch.arange(S, device=dev) - offsets[ray])
    k = torch.arange(n, device=dev)
    pos_bg = merged[:-1, None] + k + (k >= front[:, None]) * counts[:, None]
    pos = torch.cat([pos_box, pos_bg.reshape(-1)])
    order = torch.empty_like(pos)
    order[pos] = torch.arange(len(pos), device=dev)
    return order, merged, pos_box


def render_background_rays(bg: Background, origins: Tensor, dirs: Tensor, lo: Tensor | None = None,
                           hi: Tensor | None = None, *, front_only: Tensor | None = None,
                           generator: torch.Generator | None = None, backend: str = "auto") -> dict:
    """The background alone along ``R`` rays (outside the box ``[lo, hi]`` when given): ``rgb [R, 3]``,
    ``opacity [R, 1]``. ``front_only [R]`` bool: those rays stop at the box (an opaque surface inside it; the
    sphere tracer composites its hits under what is left)."""
    from recon.renderers.volume.composite import composite

    t0, t1, t, front = background_samples(bg, origins, dirs, lo, hi, generator)
    alpha, rgb = shade_background(bg, origins, dirs, t0, t1, t)
    if front_only is not None:
        k = torch.arange(bg.samples, device=origins.device)
        alpha = (alpha.reshape(len(origins), -1) * (~front_only[:, None] | (k < front[:, None]))).reshape(-1)
    offsets = torch.arange(len(origins) + 1, device=origins.device) * bg.samples
    out = composite(alpha.contiguous(), rgb.contiguous(), t0.reshape(-1).contiguous(), t1.reshape(-1).contiguous(),
                    offsets, mode="alpha", backend=backend)
    return {"rgb": out.rgb, "opacity": out.opacity}
