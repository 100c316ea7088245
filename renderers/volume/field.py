"""Volume rendering of radiance fields (today :class:`recon.scenes.triplane.TriPlaneField`): rays are clipped to
the field's box, cut into the field's ``samples`` equal intervals (a jittered point inside each while training, the
midpoint otherwise) and composited front to back by :func:`recon.renderers.volume.composite` (the exact
integral of a density constant on each interval; early stop below transmittance 1e-4). No occupancy grid yet:
every ray that meets the box is sampled across all of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.renderers.interface import RenderOutput, RenderSettings, register_renderer
from recon.renderers.volume.composite import composite
from recon.scenes.triplane import TriPlaneField

__all__ = ["box_samples", "ray_box", "render_field", "render_image", "render_rays"]

CHUNK = 8192
"""Rays per field evaluation in :func:`render_field` (bounds the memory of a full image)."""


def ray_box(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor, near: float = 0.0) -> tuple[Tensor, Tensor]:
    """Entry and exit distances ``[R]`` of rays into the box ``[lo, hi]`` (slab test), the entry clamped to
    ``near``; rays that miss get ``t_far <= t_near``."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12).copysign(dirs), dirs)
    a, b = (lo - origins) * inv, (hi - origins) * inv
    t_near = torch.minimum(a, b).amax(-1).clamp_min(near)
    t_far = torch.maximum(a, b).amin(-1)
    return t_near, t_far


def render_rays(field: TriPlaneField, origins: Tensor, dirs: Tensor, samples: int | None = None, *,
                generator: torch.Generator | None = None, backend: str = "auto", near: float = 0.0) -> dict:
    """Render ``R`` rays (unit ``dirs``): ``rgb [R, 3]`` (no background), ``opacity [R, 1]``, ``depth [R, 1]``
    (expected distance along the ray, 0 where nothing is hit), ``weights [S]`` and ``t [S]`` of the samples.
    ``samples``: intervals per ray (None: the field's own ``samples``, what it was trained with).
    ``generator``: jitter the evaluation point inside each interval (training); None: midpoints."""
    samples = field.samples if samples is None else int(samples)
    R = len(origins)
    idx, t0, t1, t, offsets = box_samples(origins, dirs, field.lo, field.hi, samples, generator, near)
    if len(idx) == 0:
        zero = origins.new_zeros(R, 1)
        return {"rgb": origins.new_zeros(R, 3), "opacity": zero, "depth": zero, "weights": origins.new_zeros(0),
                "t": origins.new_zeros(0)}
    x = origins[idx, None] + dirs[idx, None] * t[..., None]
    sigma, rgb = field(x.reshape(-1, 3), dirs[idx, None].expand(-1, samples, -1).reshape(-1, 3))
    out = composite(sigma, rgb, t0.reshape(-1).contiguous(), t1.reshape(-1).contiguous(), offsets,
                    mode="density", backend=backend)
    depth = out.depth / out.opacity.clamp_min(1e-6) * (out.opacity > 0)
    return {"rgb": out.rgb, "opacity": out.opacity, "depth": depth, "weights": out.weights, "t": t.reshape(-1)}


def box_samples(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor, samples: int,
                generator: torch.Generator | None = None, near: float = 0.0):
    """Packed samples of the rays that meet the box ``[lo, hi]``: its chord cut into ``samples`` equal intervals.

    Returns ``idx [n]`` (the rays that meet the box), interval ends ``t0, t1 [n, samples]``, evaluation points
    ``t [n, samples]`` (midpoints, or uniform inside each interval when a ``generator`` is given) and the packed
    ``offsets [R + 1]`` (``samples`` per ray that meets the box, 0 for the others)."""
    R = len(origins)
    t_near, t_far = ray_box(origins, dirs, lo, hi, near)
    hit = t_far > t_near
    idx = hit.nonzero()[:, 0]
    n = len(idx)
    offsets = torch.zeros(R + 1, dtype=torch.long, device=origins.device)
    offsets[1:] = torch.cumsum(hit.long() * samples, 0)
    span = (t_far - t_near)[idx, None]
    k = torch.arange(samples, device=origins.device, dtype=origins.dtype)
    t0 = t_near[idx, None] + span * k / samples
    t1 = t_near[idx, None] + span * (k + 1) / samples
    if generator is not None:  # drawn where the generator lives (the trainers' is on the CPU)
        u = torch.rand(n, samples, generator=generator, dtype=origins.dtype,
                       device=generator.device).to(origins.device)
    else:
        u = torch.full((n, samples), 0.5, device=origins.device, dtype=origins.dtype)
    return idx, t0, t1, t0 + (t1 - t0) * u, offsets


def render_image(render_chunk, cameras: Cameras, settings: RenderSettings, device) -> RenderOutput:
    """Every pixel of every camera through ``render_chunk(origins [R, 3], dirs [R, 3], backend) -> dict`` (rgb,
    opacity, depth along the ray, optional normal) in chunks of :data:`CHUNK` rays; depth as camera-space z."""
    cams = cameras.to(device=device, dtype=torch.float32)
    bg = settings.background
    bg = torch.zeros(3, device=device) if bg is None else torch.as_tensor(bg, dtype=torch.float32, device=device)
    origins, dirs = cams.rays()
    H, W = cams.height, cams.width
    rgbs, alphas, depths, normals = [], [], [], []
    backend = "auto" if settings.backend in ("auto", "gsplat", "nvdiffrast") else settings.backend
    for c in range(len(cams)):
        fwd = cams.world_to_cam[c, 2, :3]
        parts = [render_chunk(origins[c, s:s + CHUNK], dirs[c, s:s + CHUNK], backend)
                 for s in range(0, H * W, CHUNK)]
        rgb = torch.cat([p["rgb"] for p in parts])
        alpha = torch.cat([p["opacity"] for p in parts])
        z = torch.cat([p["depth"] for p in parts]) * (dirs[c] @ fwd)[:, None]
        rgbs.append((rgb + (1 - alpha) * bg).reshape(H, W, 3))
        alphas.append(alpha.reshape(H, W, 1))
        depths.append(z.reshape(H, W, 1))
        if "normal" in parts[0]:
            normals.append(torch.cat([p["normal"] for p in parts]).reshape(H, W, 3))
    return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depths),
                        normal=torch.stack(normals) if normals else None)


@register_renderer(TriPlaneField)
def render_field(field: TriPlaneField, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """Every pixel of every camera, in chunks of :data:`CHUNK` rays; depth as camera-space z."""
    if settings.fields.method != "volume":
        raise ValueError(f"a tri-plane field renders by volume rendering only; fields.method "
                         f"{settings.fields.method!r} (--field-method) needs a neural SDF")
    return render_image(lambda o, d, backend: render_rays(field, o, d, backend=backend), cameras, settings,
                        field.lo.device)
