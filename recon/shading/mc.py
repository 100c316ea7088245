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
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

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


def shade_mc(gb: GBuffer, light, settings, caster: Tracer | None = None) -> Tensor:
    """Linear outgoing radiance ``[P, 3]`` of the G-buffer samples under ``light`` (see the module docstring).

    ``caster`` must provide ``any_hit`` when ``settings.shadows``, and ``surface_at`` too when
    ``settings.indirect``. Raises ``ValueError`` when it does not, when ``settings.spp < 1``, or for indirect
    light without shadows (light cannot both pass through the geometry and bounce off it).
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
    P = len(gb)
    if P == 0:
        return gb.base_color.new_zeros(0, 3)
    span = (gb.position.detach().amax(0) - gb.position.detach().amin(0)).norm().clamp_min(1e-6)
    eps = float(span) * 2e-4  # shadow-ray offset: above float32 rounding of hit points, below feature size
    gen = torch.Generator().manual_seed(int(settings.seed))
    sobol = torch.quasirandom.SobolEngine(5, scramble=True, seed=int(settings.seed)).draw(int(settings.spp))
    tracer = caster if settings.shadows else None
    return _estimate(gb, light, sobol, gen, tracer, eps, indirect)


def _estimate(gb: GBuffer, light, points: Tensor, gen: torch.Generator, tracer, eps: float,
              indirect: bool) -> Tensor:
    """MIS estimate ``[P, 3]`` with the sample points ``points [spp, 5]`` (shifted per pixel)."""
    from recon.shading.brdf import pdf_brdf, principled_brdf, sample_brdf

    P, spp = len(gb), points.shape[0]
    dev = gb.position.device
    shift = torch.rand(P, 1, 5, generator=gen)
    per_chunk = max(1, min(spp, _CHUNK // max(P, 1)))
    total = gb.base_color.new_zeros(P, 3)
    for s0 in range(0, spp, per_chunk):
        k = min(per_chunk, spp - s0)
        u = torch.frac(points[s0:s0 + k][None] + shift).reshape(P * k, 5).to(dev)

        def rep(x: Tensor) -> Tensor:
            return x.repeat_interleave(k, dim=0) if k > 1 else x

        n, v, ng = rep(gb.normal), rep(gb.view), rep(gb.geo_normal)
        base, rough, metal, pos = rep(gb.base_color), rep(gb.roughness), rep(gb.metallic), rep(gb.position)
        with torch.no_grad():
            l_light, pdf_l_light = light.sample(u[:, :2])  # EnvLight applies its rotation itself
            pdf_b_light = pdf_brdf(n, v, l_light, base, rough, metal)
            l_brdf, pdf_b_brdf = sample_brdf(n, v, base, rough, metal, u[:, 2:])
            pdf_l_brdf = light.pdf(l_brdf)
        dirs = torch.cat([l_light, l_brdf])
        with torch.no_grad():
            w_light = pdf_l_light / (pdf_l_light + pdf_b_light).clamp_min(1e-20)
            w_brdf = pdf_b_brdf / (pdf_l_brdf + pdf_b_brdf).clamp_min(1e-20)
            weight = torch.cat([w_light / pdf_l_light.clamp_min(1e-20), w_brdf / pdf_b_brdf.clamp_min(1e-20)])
            weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
            bounce = None
            if tracer is not None:
                pos2, ng2 = torch.cat([pos, pos]), torch.cat([ng, ng])
                side = torch.sign((ng2 * dirs).sum(-1, keepdim=True))
                origins = (pos2 + ng2 * side * eps).contiguous()
                if indirect:
                    occ_l = tracer.any_hit(origins[:P * k], l_light.contiguous(), 0.0, float("inf"))
                    bounce_b, occ_b = _bounce(origins[P * k:], l_brdf.contiguous(), pdf_b_brdf, light, gen,
                                              tracer, eps)
                    occluded = torch.cat([occ_l, occ_b])
                    bounce = torch.cat([torch.zeros_like(bounce_b), bounce_b])
                else:
                    occluded = tracer.any_hit(origins, dirs.contiguous(), 0.0, float("inf"))
                weight = weight * (~occluded).to(weight)
        n2, v2 = torch.cat([n, n]), torch.cat([v, v])
        f = principled_brdf(n2, v2, dirs, torch.cat([base, base]), torch.cat([rough, rough]),
                            torch.cat([metal, metal]))
        cos = (n2 * dirs).sum(-1, keepdim=True).clamp_min(0.0)
        incident = light.lookup(dirs) * weight[:, None]
        if bounce is not None:
            incident = incident + bounce.to(incident)
        contrib = f * cos * incident
        # [2 P k, 3] -> per pixel sum over both strategies and the k samples
        total = total + contrib.reshape(2, P, k, 3).sum(dim=(0, 2))
    return total / spp


@torch.no_grad()
def _bounce(origins: Tensor, dirs: Tensor, pdf: Tensor, light, gen: torch.Generator, tracer,
            eps: float) -> tuple[Tensor, Tensor]:
    """Indirect incident radiance ``[N, 3]`` along BRDF-sampled rays, already divided by their pdf ``[N]``
    (0 for rays that escape), and the ``[N]`` bool occlusion of the rays."""
    N = origins.shape[0]
    out = origins.new_zeros(N, 3)
    occluded = torch.zeros(N, dtype=torch.bool, device=origins.device)
    index, hit_gb = tracer.surface_at(origins, dirs, 0.0)
    if index.numel() == 0:
        return out, occluded
    occluded[index] = True
    points = torch.rand(1, 5, generator=gen)  # one light + one BRDF sample per secondary point, shifted per point
    radiance = _estimate(hit_gb, light, points, gen, tracer, eps, indirect=False)
    inv_pdf = 1.0 / pdf[index].clamp_min(1e-20)
    inv_pdf = torch.where(torch.isfinite(inv_pdf) & (pdf[index] > 0), inv_pdf, torch.zeros_like(inv_pdf))
    out[index] = radiance.to(out) * inv_pdf[:, None]
    return out, occluded
