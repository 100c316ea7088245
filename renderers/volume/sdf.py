"""Volume rendering of neural SDFs with the NeuS alpha (:class:`recon.scenes.sdf.NeuralSDF`).

Rays are cut into the field's equal intervals across its box (:func:`~recon.renderers.volume.field.box_samples`),
or, once the field carries an occupancy grid, into finer intervals of which only those in occupied cells are
kept (:func:`~recon.renderers.volume.occupancy.occupied_samples`).
At each interval's evaluation point the SDF ``f`` and its gradient are taken; the SDF at the interval's ends is
estimated along the ray as ``f -/+ cos * dt / 2`` with ``cos`` the cosine between the ray and the gradient, and the
interval's opacity is NeuS's discrete alpha (the ends extrapolated from the evaluation point, which training
jitters inside the interval)

    alpha = clip((Phi_s(f_start) - Phi_s(f_end)) / Phi_s(f_start), 0, 1),   Phi_s(f) = sigmoid(inv_s * f)

(unbiased at the zero crossing, occlusion-aware). Early in training the slope is annealed from ``-(1 - cos) / 2``
to ``-max(-cos, 0)`` (NeuS's ``cos_anneal_ratio``) so that the back-facing half of the field still receives
gradients.
The alphas and colors are composited by :func:`recon.renderers.volume.composite` (``mode="alpha"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.renderers.interface import RenderOutput, RenderSettings, register_renderer
from recon.renderers.volume.background import (background_samples, merge_around, render_background_rays,
                                               shade_background)
from recon.renderers.volume.composite import composite
from recon.renderers.volume.field import box_samples, ray_box, render_image
from recon.renderers.volume.occupancy import occupied_samples
from recon.renderers.volume.sphere_trace import sphere_trace
from recon.scenes.sdf import NeuralSDF

__all__ = ["neus_alpha", "render_sdf", "render_sdf_rays", "sphere_trace_sdf_rays"]


def neus_alpha(sdf: Tensor, cos: Tensor, before: Tensor, after: Tensor, inv_s: Tensor,
               anneal: float = 1.0) -> Tensor:
    """NeuS's discrete opacity of intervals ``[S]``: the SDF ``sdf`` is taken at a point ``before`` past the
    interval's start and ``after`` short of its end (both ``[S]``; half the length each at the midpoint), where
    the ray makes cosine ``cos`` with the SDF's gradient. ``anneal`` in [0, 1] blends NeuS's ``-(1 - cos) / 2``
    (0) into ``-max(-cos, 0)`` (1), the slope along the ray of a front-facing surface."""
    iter_cos = -(torch.relu(-cos * 0.5 + 0.5) * (1.0 - anneal) + torch.relu(-cos) * anneal)
    start = sdf - iter_cos * before
    end = sdf + iter_cos * after
    cdf_start, cdf_end = torch.sigmoid(start * inv_s), torch.sigmoid(end * inv_s)
    return ((cdf_start - cdf_end + 1e-5) / (cdf_start + 1e-5)).clamp(0.0, 1.0)


def render_sdf_rays(field: NeuralSDF, origins: Tensor, dirs: Tensor, *, generator: torch.Generator | None = None,
                    anneal: float = 1.0, train: bool = False, backend: str = "auto") -> dict:
    """Render ``R`` rays (unit ``dirs``): ``rgb [R, 3]`` (no background color), ``opacity [R, 1]``, ``depth [R, 1]``
    (expected distance, 0 on a miss), ``normal [R, 3]`` (the composited unit gradients), and the foreground
    samples' ``points [S, 3]``, ``gradient [S, 3]`` and ``weights [S]`` (for the eikonal and curvature losses). ``train``: keep the graph through
    the gradient (second derivatives for the eikonal loss). A field with a ``background``
    (:mod:`recon.renderers.volume.background`) composites its samples outside the box with the box's, in depth
    order; ``opacity`` and ``depth`` then count both, ``fg_opacity [R, 1]`` is the box samples' weight."""
    R = len(origins)
    if field.occupancy.numel():
        ray, t0, t1, t, offsets = occupied_samples(origins, dirs, field.lo, field.hi, field.occupancy,
                                                   field.grid_samples, generator)
    else:
        idx, t0, t1, t, offsets = box_samples(origins, dirs, field.lo, field.hi, field.samples, generator)
        ray = idx[:, None].expand(-1, t.shape[1]).reshape(-1)
        t0, t1, t = t0.reshape(-1), t1.reshape(-1), t.reshape(-1)
    bg = field.background
    if len(t) == 0 and bg is None:
        zero = origins.new_zeros(R, 1)
        return {"rgb": origins.new_zeros(R, 3), "opacity": zero, "depth": zero, "normal": origins.new_zeros(R, 3),
                "gradient": origins.new_zeros(0, 3), "weights": origins.new_zeros(0), "fg_opacity": zero,
                "points": origins.new_zeros(0, 3)}
    S = len(t)
    if S:
        d = dirs[ray]
        x = origins[ray] + d * t[:, None]
        sdf, grad, geo = field.sdf_gradient(x, create_graph=train)
        if not train:
            sdf, grad, geo = sdf.detach(), grad.detach(), geo.detach()
        normal = torch.nn.functional.normalize(grad, dim=-1)
        alpha = neus_alpha(sdf, (d * grad).sum(-1), t - t0, t1 - t, field.inv_s(), anneal)
        values = torch.cat([field.radiance(geo, normal, d), normal], -1)
    else:  # no ray of the batch meets the box: the background alone
        grad, alpha, values = origins.new_zeros(0, 3), origins.new_zeros(0), origins.new_zeros(0, 6)
    if bg is not None:  # the background outside the box, before and after the box's samples along each ray
        bt0, bt1, bt, front = background_samples(bg, origins, dirs, field.lo, field.hi, generator)
        b_alpha, b_rgb = shade_background(bg, origins, dirs, bt0, bt1, bt)
        order, offsets, pos_box = merge_around(offsets, front, bg.samples)
        alpha = torch.cat([alpha, b_alpha])[order]
        values = torch.cat([values, torch.cat([b_rgb, b_rgb.new_zeros(len(b_rgb), 3)], -1)])[order]
        t0, t1 = torch.cat([t0, bt0.reshape(-1)])[order], torch.cat([t1, bt1.reshape(-1)])[order]
    out = composite(alpha.contiguous(), values.contiguous(), t0.contiguous(), t1.contiguous(), offsets,
                    mode="alpha", backend=backend)
    weights, fg_opacity = out.weights, out.opacity
    if bg is not None:  # the box samples' weights, in their order, and their sum per ray
        weights = weights[pos_box]
        fg_opacity = origins.new_zeros(R).index_add(0, ray, weights)[:, None]
    depth = out.depth / out.opacity.clamp_min(1e-6) * (out.opacity > 0)
    return {"rgb": out.rgb[:, :3], "opacity": out.opacity, "depth": depth,
            "normal": torch.nn.functional.normalize(out.rgb[:, 3:], dim=-1), "gradient": grad,
            "weights": weights, "fg_opacity": fg_opacity, "points": x if S else origins.new_zeros(0, 3)}


@torch.no_grad()
def sphere_trace_sdf_rays(field: NeuralSDF, origins: Tensor, dirs: Tensor) -> dict:
    """Render ``R`` rays by sphere tracing the zero set inside the field's box: ``rgb [R, 3]`` (the color at the
    hit, 0 on a miss), ``opacity [R, 1]`` (1 on a hit), ``depth [R, 1]`` (distance to the hit, 0 on a miss),
    ``normal [R, 3]`` (the SDF's unit gradient at the hit), ``fg_opacity [R, 1]`` (1 on a hit). With a
    ``background``, its samples in front of a hit are composited over the surface and a miss shows all of them;
    ``rgb`` and ``opacity`` then count both."""
    R = len(origins)
    t_near, t_far = ray_box(origins, dirs, field.lo, field.hi)
    scale = float(field.half_extent)
    t, hit = sphere_trace(field.sdf, origins, dirs, t_near, t_far, eps=1e-5 * scale, min_step=1e-4 * scale)
    rgb, normal = origins.new_zeros(R, 3), origins.new_zeros(R, 3)
    idx = hit.nonzero()[:, 0]
    if len(idx):
        _, grad, geo = field.sdf_gradient(origins[idx] + dirs[idx] * t[idx, None])
        normal[idx] = torch.nn.functional.normalize(grad, dim=-1)
        rgb[idx] = field.radiance(geo, normal[idx], dirs[idx])
    opacity = hit.to(origins.dtype)[:, None]
    if field.background is not None:  # the background outside the box: in front of a hit, and behind a miss
        b = render_background_rays(field.background, origins, dirs, field.lo, field.hi, front_only=hit)
        rest = (1 - b["opacity"]) * opacity  # what the background in front leaves of a hit surface
        rgb, opacity = b["rgb"] + rest * rgb, b["opacity"] + rest
    return {"rgb": rgb, "opacity": opacity, "depth": torch.where(hit, t, 0)[:, None], "normal": normal,
            "fg_opacity": hit.to(origins.dtype)[:, None]}


@register_renderer(NeuralSDF)
def render_sdf(field: NeuralSDF, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """Every pixel of every camera by NeuS volume rendering, or by sphere tracing with
    ``settings.fields.method == "sphere"``; depth as camera-space z, world normals."""
    if settings.fields.method == "sphere":
        return render_image(lambda o, d, backend: sphere_trace_sdf_rays(field, o, d), cameras, settings,
                            field.lo.device)
    return render_image(lambda o, d, backend: render_sdf_rays(field, o, d, backend=backend), cameras, settings,
                        field.lo.device)
