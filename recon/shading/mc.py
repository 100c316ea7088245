"""Monte Carlo lighting from an environment map, with multiple importance sampling, shadow rays and optionally
one bounce of indirect light.

For each pixel, ``spp`` directions are drawn from the light (luminance x sin(theta) over the equirectangular
map) and ``spp`` from the BRDF (GGX visible normals / cosine lobe), combined with the balance heuristic
(Veach 1997)::

    L_o = 1/spp * sum_strategies sum_i  f(v, l_i) cos(n, l_i) L_env(l_i) V(l_i) w_s(l_i) / p_s(l_i)

``V`` is a shadow ray from the surface point (offset along the geometric normal) through the scene's tracer.
The ``spp`` sample points of a pixel are a scrambled Sobol set (shared by all pixels) under a per-pixel random
shift (Cranley-Patterson rotation): stratified, so the noise falls faster than with independent samples, and
still unbiased.

With ``settings.indirect``, a BRDF-sampled direction that is occluded is traced to the surface it hits
(``tracer.surface_at``); the direct light reflected there towards the first point (one light sample and one BRDF
sample, MIS, shadowed) is the incident radiance, weighted by ``f cos / p_brdf`` -- the path tracer's
``max_depth = 3`` (camera, two surface points, the light). The secondary radiance is computed under
``torch.no_grad``: the indirect term's gradient flows only through the first point's BRDF and cosine.

Sampled directions, pdfs, MIS weights and visibility carry no gradient; ``f``, the cosine and ``L_env`` do, so
the estimator's gradient w.r.t. base color, roughness, metallic, normals and the light texels is an unbiased
estimate of the gradient of the (direct) integral for fixed samples. A fixed ``ShadingSettings.seed`` gives the
same samples, hence the same image, every call (CPU generators, independent of the device).

Backends: ``torch`` evaluates everything with the ops of :mod:`recon.shading.brdf` (the reference);
``cpu`` runs BRDF sampling, the BRDF pdf and the shading sum (BRDF x cosine x incident radiance, summed over a
pixel's samples, with a hand-written backward) in the fused C++ kernels of :mod:`recon.shading._kernels`. Light
sampling, the environment lookup, MIS weights and rays are shared. Both backends draw the same random numbers; the
images agree to float32 rounding (a grazing ray may rarely flip). ``auto`` (default) picks ``cpu`` for float32 CPU
tensors when the extension builds, else ``torch``; the ``RECON_SHADING_BACKEND`` environment variable sets the
default.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch import Tensor

from recon.shading import _kernels
from recon.shading.shade import GBuffer

__all__ = ["shade_mc", "Tracer"]

_CHUNK = 1 << 20
"""Samples (pixels x directions) evaluated at once: bounds the temporaries to a few hundred MB."""


class Tracer(Protocol):
    """What the Monte Carlo shader asks of the scene's geometry (the mesh renderer passes a
    :class:`~recon.renderers.mesh.material.MeshTracer`)."""

    def any_hit(self, origins: Tensor, dirs: Tensor, tmin: float, tmax: float) -> Tensor:
        """``[N]`` bool occlusion of the rays ``origins [N, 3] + t dirs [N, 3]``."""

    def surface_at(self, origins: Tensor, dirs: Tensor, tmin: float) -> tuple[Tensor, GBuffer]:
        """``(index [M], GBuffer [M])``: the rays that hit something and the surface each one hits
        (``view`` = the reversed ray direction). Needed only for indirect light."""


def shade_mc(gb: GBuffer, light, settings, caster: Tracer | None = None, *, backend: str | None = None) -> Tensor:
    """Linear outgoing radiance ``[P, 3]`` of the G-buffer samples under ``light`` (see the module docstring).

    ``caster`` must provide ``any_hit`` when ``settings.shadows``, and ``surface_at`` too when
    ``settings.indirect``. ``backend``: ``auto``, ``cpu`` or ``torch`` (None: ``$RECON_SHADING_BACKEND``, else
    ``auto``). Raises ``ValueError`` when the caster lacks what the settings need, when ``settings.spp < 1``, for
    indirect light without shadows (light cannot both pass through the geometry and bounce off it), or for a
    backend that does not fit the tensors.
    """
    if settings.spp < 1:
        raise ValueError(f"ShadingSettings.spp must be >= 1, got {settings.spp}")
    if settings.shadows and caster is None:
        raise ValueError("Monte Carlo shading with shadows needs a ray caster for the scene's geometry")
    indirect = bool(getattr(settings, "indirect", False))
    if indirect and not settings.shadows:
        raise ValueError("ShadingSettings.indirect=True needs shadows=True (indirect light comes from occluders)")
    if indirect and not hasattr(caster, "surface_at"):
        raise ValueError(f"ShadingSettings.indirect=True needs a tracer with surface_at(origins, dirs, tmin); "
                         f"got {type(caster).__name__}")
    if backend is None:
        backend = os.environ.get("RECON_SHADING_BACKEND", "auto")
    backend = _kernels.resolve_backend(backend, gb.position, gb.normal, gb.view, gb.base_color, gb.roughness,
                                       gb.metallic, getattr(light, "log_radiance", None))
    P = len(gb)
    if P == 0:
        return gb.base_color.new_zeros(0, 3)
    span = (gb.position.detach().amax(0) - gb.position.detach().amin(0)).norm().clamp_min(1e-6)
    eps = float(span) * 2e-4  # shadow-ray offset: above float32 rounding of hit points, below feature size
    gen = torch.Generator().manual_seed(int(settings.seed))
    sobol = torch.quasirandom.SobolEngine(5, scramble=True, seed=int(settings.seed)).draw(int(settings.spp))
    tracer = caster if settings.shadows else None
    return _estimate(gb, light, sobol, gen, tracer, eps, indirect, backend)


def _estimate(gb: GBuffer, light, points: Tensor, gen: torch.Generator, tracer, eps: float,
              indirect: bool, backend: str) -> Tensor:
    """MIS estimate ``[P, 3]`` with the sample points ``points [spp, 5]`` (shifted per pixel)."""
    P, spp = len(gb), points.shape[0]
    dev = gb.position.device
    shift = torch.rand(P, 1, 5, generator=gen)
    per_chunk = max(1, min(spp, _CHUNK // max(P, 1)))
    chunk = _chunk_fused if backend == "cpu" else _chunk_torch
    total = gb.base_color.new_zeros(P, 3)
    for s0 in range(0, spp, per_chunk):
        k = min(per_chunk, spp - s0)
        u = torch.frac(points[s0:s0 + k][None] + shift).reshape(P * k, 5).to(dev)
        total = total + chunk(gb, light, u, k, (gen, tracer, eps, indirect, backend))
    return total / spp


def _rep(x: Tensor, k: int) -> Tensor:
    return x.repeat_interleave(k, dim=0) if k > 1 else x


def _chunk_torch(gb: GBuffer, light, u: Tensor, k: int, trace: tuple) -> Tensor:
    """Sum ``[P, 3]`` over ``k`` samples per strategy of every pixel; rows of ``u [P k, 5]`` are pixel-major."""
    from recon.shading.brdf import pdf_brdf, principled_brdf, sample_brdf

    P = len(gb)
    n, v = _rep(gb.normal, k), _rep(gb.view, k)
    base, rough, metal = _rep(gb.base_color, k), _rep(gb.roughness, k), _rep(gb.metallic, k)
    with torch.no_grad():
        l_light, pdf_l_light = light.sample(u[:, :2])  # EnvLight applies its rotation itself
        pdf_b_light = pdf_brdf(n, v, l_light, base, rough, metal)
        l_brdf, pdf_b_brdf = sample_brdf(n, v, base, rough, metal, u[:, 2:])
        pdf_l_brdf = light.pdf(l_brdf)
        weight, bounce = _weights(gb, light, k, (l_light, pdf_l_light, pdf_b_light), (l_brdf, pdf_l_brdf, pdf_b_brdf),
                                  trace)
    dirs = torch.cat([l_light, l_brdf])
    n2, v2 = torch.cat([n, n]), torch.cat([v, v])
    f = principled_brdf(n2, v2, dirs, torch.cat([base, base]), torch.cat([rough, rough]), torch.cat([metal, metal]))
    cos = (n2 * dirs).sum(-1, keepdim=True).clamp_min(0.0)
    incident = light.lookup(dirs) * weight[:, None]
    if bounce is not None:
        incident = incident + bounce.to(incident)
    contrib = f * cos * incident
    # [2 P k, 3] -> per pixel sum over both strategies and the k samples
    return contrib.reshape(2, P, k, 3).sum(dim=(0, 2))


def _chunk_fused(gb: GBuffer, light, u: Tensor, k: int, trace: tuple) -> Tensor:
    """:func:`_chunk_torch` with the BRDF sampling, pdf and the shading sum in the fused C++ kernels: the same
    samples, the material read per pixel instead of repeated per sample."""
    P = len(gb)
    with torch.no_grad():
        mat = [x.detach() for x in (gb.normal, gb.view, gb.base_color, gb.roughness, gb.metallic)]
        l_light, pdf_l_light = light.sample(u[:, :2])
        pdf_b_light = _kernels.pdf_brdf(mat[0], mat[1], l_light.reshape(P, k, 3), *mat[2:], backend="cpu")
        l_brdf, pdf_b_brdf = _kernels.sample_brdf(*mat, u[:, 2:].reshape(P, k, 3), backend="cpu")
        l_brdf, pdf_b_brdf = l_brdf.reshape(P * k, 3), pdf_b_brdf.reshape(P * k)
        pdf_l_brdf = light.pdf(l_brdf)
        weight, bounce = _weights(gb, light, k, (l_light, pdf_l_light, pdf_b_light.reshape(P * k)),
                                  (l_brdf, pdf_l_brdf, pdf_b_brdf), trace)
        # strategy-major [2, P, k] rows -> [P, 2 k]: a pixel's samples contiguous for the kernel
        dirs = torch.stack([l_light.reshape(P, k, 3), l_brdf.reshape(P, k, 3)], 1).reshape(P, 2 * k, 3)
        weight = weight.reshape(2, P, k).transpose(0, 1).reshape(P, 2 * k)
        if bounce is not None:
            bounce = bounce.reshape(2, P, k, 3).transpose(0, 1).reshape(P, 2 * k, 3).to(weight)
    return _kernels.brdf_shade(gb.normal, gb.view, dirs, gb.base_color, gb.roughness, gb.metallic,
                               light.lookup(dirs), weight, bounce, backend="cpu")


def _weights(gb: GBuffer, light, k: int, light_s: tuple, brdf_s: tuple, trace: tuple) -> tuple[Tensor, Tensor | None]:
    """Balance-heuristic weight / pdf x visibility ``[2 P k]`` of the light samples then the BRDF samples, and the
    indirect radiance ``[2 P k, 3]`` (None without indirect light). ``light_s``, ``brdf_s``: ``(l [P k, 3],
    pdf_light [P k], pdf_brdf [P k])`` of the two strategies."""
    gen, tracer, eps, indirect, backend = trace
    (l_light, pdf_l_light, pdf_b_light), (l_brdf, pdf_l_brdf, pdf_b_brdf) = light_s, brdf_s
    w_light = pdf_l_light / (pdf_l_light + pdf_b_light).clamp_min(1e-20)
    w_brdf = pdf_b_brdf / (pdf_l_brdf + pdf_b_brdf).clamp_min(1e-20)
    weight = torch.cat([w_light / pdf_l_light.clamp_min(1e-20), w_brdf / pdf_b_brdf.clamp_min(1e-20)])
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
    if tracer is None:
        return weight, None
    N = l_light.shape[0]
    pos, ng = _rep(gb.position.detach(), k), _rep(gb.geo_normal.detach(), k)
    dirs = torch.cat([l_light, l_brdf])
    pos2, ng2 = torch.cat([pos, pos]), torch.cat([ng, ng])
    side = torch.sign((ng2 * dirs).sum(-1, keepdim=True))
    origins = (pos2 + ng2 * side * eps).contiguous()
    bounce = None
    if indirect:
        occ_l = tracer.any_hit(origins[:N], l_light.contiguous(), 0.0, float("inf"))
        bounce_b, occ_b = _bounce(origins[N:], l_brdf.contiguous(), pdf_b_brdf, light, trace)
        occluded = torch.cat([occ_l, occ_b])
        bounce = torch.cat([torch.zeros_like(bounce_b), bounce_b])
    else:
        occluded = tracer.any_hit(origins, dirs.contiguous(), 0.0, float("inf"))
    return weight * (~occluded).to(weight), bounce


@torch.no_grad()
def _bounce(origins: Tensor, dirs: Tensor, pdf: Tensor, light, trace: tuple) -> tuple[Tensor, Tensor]:
    """Indirect incident radiance ``[N, 3]`` along BRDF-sampled rays, already divided by their pdf ``[N]``
    (0 for rays that escape), and the ``[N]`` bool occlusion of the rays."""
    gen, tracer, eps, _, backend = trace
    N = origins.shape[0]
    out = origins.new_zeros(N, 3)
    occluded = torch.zeros(N, dtype=torch.bool, device=origins.device)
    index, hit_gb = tracer.surface_at(origins, dirs, 0.0)
    if index.numel() == 0:
        return out, occluded
    occluded[index] = True
    points = torch.rand(1, 5, generator=gen)  # one light + one BRDF sample per secondary point, shifted per point
    radiance = _estimate(hit_gb, light, points, gen, tracer, eps, False, backend)
    inv_pdf = 1.0 / pdf[index].clamp_min(1e-20)
    inv_pdf = torch.where(torch.isfinite(inv_pdf) & (pdf[index] > 0), inv_pdf, torch.zeros_like(inv_pdf))
    out[index] = radiance.to(out) * inv_pdf[:, None]
    return out, occluded
